"""A trained run, loaded whole: :func:`load_run` -> :class:`Run` (config, tokenizer, recipe, objective, model).

Also the run's data, rebuilt exactly as the trainer lays it out: :func:`run_batches` (the stream of training
batches, ``stream(step)`` being the batch of data position ``step``), :func:`heldout_batches` (the held-out
batches its ``eval_every`` lines were computed on) and :func:`heldout_blocks` (held-out text as plain token
blocks, what the evaluations in this package read). The held-out documents are the corpus's documents that
:func:`lmobjectives.data.heldout_split` holds out for the run's ``heldout`` fraction: a hash of
each document's words decides, so nothing is written to disk and the split is the same for every objective,
seed and tokenizer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..batch import Batch, Objective
from ..constants import DEFAULT_SEED
from ..data.heldout import heldout_split
from ..data.packing import pack_documents, tokenize_documents
from ..data.sources import data_texts, is_document, load_data
from ..data.tokenizers import ByteTokenizer
from ..recipes import Recipe
from ..training.checkpoint import checkpoint_steps, load_checkpoint
from ..training.config import TrainConfig, resolve_device
from ..training.run_folder import CHECKPOINT_DIR, build_model, load_run_tokenizer, read_run_config
from ..training.streams import build_stream, derive_seed
from ..training.trainer import heldout_eval_batches

__all__ = [
    "NotApplicable",
    "Reads",
    "Run",
    "heldout_batches",
    "heldout_blocks",
    "heldout_word_ids",
    "load_run",
    "run_batches",
    "sample_batch",
    "token_byte_lengths",
]

Reads = Literal["causal", "bidirectional", "encoder_decoder"]
"""How a run's model reads text, from the batches it was trained on: ``"causal"`` (each position sees the
ones before it: clm, prefix LM, fim, mtp, ...), ``"bidirectional"`` (every position sees every other:
mlm, nsp, sop, spanbert) or ``"encoder_decoder"`` (an encoder over the input, a causal decoder with
cross-attention: span corruption and UL2 with ``layout="encoder_decoder"``)."""


class NotApplicable(ValueError):
    """An evaluation that does not apply to this run (e.g. a sentence-pair head that the model lacks)."""


@dataclass
class Run:
    """A trained run: everything needed to evaluate it. Build it with :func:`load_run`."""

    out_dir: Path  # the run's folder
    config: TrainConfig  # its training config (config.json's "train"), held-out fraction included
    tokenizer: Any  # the run's tokenizer (out_dir/tokenizer)
    recipe: Recipe  # the objective's registry entry
    objective: Objective  # the objective with the run's options
    model: torch.nn.Module  # the trained model, in eval mode, on `device`
    step: int  # the optimizer step of the checkpoint loaded
    reads: Reads  # how the model reads text (see Reads)
    documents: list[Any]  # the training side of the corpus
    heldout: list[Any]  # the held-out side: documents training never saw
    device: torch.device  # where the model lives

    @property
    def vocab(self):
        """The tokenizer's :class:`~lmobjectives.Vocab`."""
        return self.tokenizer.vocab

    @property
    def name(self) -> str:
        """A short label: the folder's name."""
        return self.out_dir.name

    def forward_hidden(self, batch: Batch) -> torch.Tensor:
        """The model's hidden states on ``batch`` (moved to the model's device), without gradient: ``(B, T, d)``,
        the decoder's ``(B, Td, d)`` for an encoder-decoder batch."""
        with torch.no_grad():
            return self.model(batch.to(self.device)).hidden

    def require_heldout(self) -> None:
        """Raise a one-line ``ValueError`` when the run holds no document out (``heldout=0``, or a run made
        before the split existed)."""
        if not self.heldout:
            raise ValueError(
                f"{self.out_dir} has no held-out documents (heldout={self.config.heldout}); evaluation reads only "
                "documents the training never saw: train with --heldout 0.05 (the default)"
            )


def load_run(out_dir: str | Path, device: str = "cpu") -> Run:
    """Load the run in ``out_dir`` (written by ``lmobj train``): its config, tokenizer, objective, newest intact
    checkpoint (model in eval mode; when the newest is damaged, a ``UserWarning`` says which step is evaluated
    and why) and its corpus, split as the training split it.

    Errors are one line: a folder that is not a run (``ValueError``), a run without a checkpoint
    (``FileNotFoundError``), a corpus that cannot be read again (the run's ``data`` path is read as given,
    relative to the current folder).

    >>> load_run("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent is not an lmobj run (no config.json)
    """
    out = Path(out_dir)
    saved = read_run_config(out)
    config = saved.train_config(resume=False, progress=False, out=str(out))
    checkpoints = out / CHECKPOINT_DIR
    if not checkpoint_steps(checkpoints):
        raise FileNotFoundError(f"{out} has no checkpoint yet (no {checkpoints}/state-*.json): nothing to evaluate")
    tokenizer = load_run_tokenizer(out)  # a missing or damaged tokenizer/ is said as such
    recipe = config.recipe
    objective = recipe.build(tokenizer.vocab, config.options, seq_len=config.seq_len)
    where = resolve_device(device)
    model = build_model(saved).to(where)
    # the newest checkpoint when it is intact; else one warning line saying which older step is evaluated and why
    state = load_checkpoint(
        checkpoints, model, report=lambda line: warnings.warn(f"evaluating {out}: {line}", stacklevel=3)
    )
    model.eval()
    corpus = load_data(config.data, recipe.data, skip_bad_files=config.skip_bad_files)
    documents, heldout = heldout_split(corpus, config.heldout)
    reads = _reads(_first_batch(recipe, objective, heldout or documents, tokenizer, config))
    return Run(
        out_dir=out,
        config=config,
        tokenizer=tokenizer,
        recipe=recipe,
        objective=objective,
        model=model,
        step=int(state["step"]),
        reads=reads,
        documents=documents,
        heldout=heldout,
        device=where,
    )


def _first_batch(
    recipe: Recipe, objective: Objective, documents: list[Any], tokenizer: Any, config: TrainConfig
) -> Batch:
    """A batch of two rows from the first 16 ``documents``, laid out and corrupted as the training's."""
    stream = build_stream(
        recipe, objective, documents[:16], tokenizer, seq_len=config.seq_len, batch_size=2, seed=config.seed
    )
    return stream(0)


def sample_batch(run: Run) -> Batch:
    """A small batch (two rows) of the run's kind, laid out and corrupted as its training batches: what its
    model was trained to read (its attention pattern, its targets), from the held-out side if it has one."""
    return _first_batch(run.recipe, run.objective, run.heldout or run.documents, run.tokenizer, run.config)


def _reads(batch: Batch) -> Reads:
    """How the model reads text: the attention pattern of a batch laid out as the training laid them out."""
    if batch.decoder_input_ids is not None:
        return "encoder_decoder"
    return "causal" if batch.causal else "bidirectional"


def run_batches(run: Run):
    """The run's training data: ``stream(step)`` is exactly the batch that update ``step + 1`` trained on (same
    documents, layout, seed, corruption); ``stream.one_pass()`` walks every training example once."""
    c = run.config
    return build_stream(
        run.recipe,
        run.objective,
        run.documents,
        run.tokenizer,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        seed=c.seed,
        dupe_factor=c.dupe_factor,
    )


def heldout_batches(run: Run) -> list[Batch]:
    """The held-out batches of the run's ``eval_*`` metrics lines (``eval_batches`` of them at most), laid out
    and corrupted as the training data: :func:`lmobjectives.training.trainer.heldout_eval_batches`."""
    run.require_heldout()
    stream = run_batches(run)  # its objective carries the training corpus's counts, if it uses any
    return heldout_eval_batches(run.recipe, stream.objective, run.heldout, run.tokenizer, run.config)


def heldout_blocks(run: Run, length: int | None = None, max_blocks: int | None = None) -> torch.Tensor:
    """Held-out text as token blocks ``(N, length)`` (default ``seq_len``): the held-out documents in corpus
    order, each closed by EOS, packed end to end (:func:`~lmobjectives.data.packing.pack_documents`); only
    full blocks, the first ``max_blocks`` of them. No corruption, no special token but EOS.

    The blocks are the same for every run of the same corpus and tokenizer, whatever its objective."""
    return _heldout_packed(run, length, max_blocks, with_words=False).input_ids


def heldout_word_ids(run: Run, length: int | None = None, max_blocks: int | None = None) -> torch.Tensor:
    """The word index of each token of :func:`heldout_blocks` ``(N, length)`` (the same arguments), unique across
    the blocks; ``-1`` where a token belongs to no word (spaces between words, EOS). Words are the tokenizer's
    (:meth:`encode_words`), as whole-word masking sees them."""
    return _heldout_packed(run, length, max_blocks, with_words=True).word_ids


def _heldout_packed(run: Run, length: int | None, max_blocks: int | None, *, with_words: bool):
    run.require_heldout()
    length = run.config.seq_len if length is None else length
    token_docs, word_docs = tokenize_documents(_texts_as_documents(run.heldout), run.tokenizer, with_words=with_words)
    vocab = run.vocab
    pad = vocab.pad_id if vocab.pad_id is not None else vocab.eos_id
    packed = pack_documents(token_docs, length, vocab.eos_id, pad_id=pad, drop_last=True, word_ids=word_docs)
    keep = slice(None, max_blocks)
    packed = replace(
        packed, input_ids=packed.input_ids[keep], word_ids=None if packed.word_ids is None else packed.word_ids[keep]
    )
    if packed.input_ids.shape[0] == 0:
        raise ValueError(
            f"the held-out documents of {run.out_dir} hold fewer than {length} tokens: no block to evaluate"
        )
    return packed


def _texts_as_documents(items: list[Any]) -> list[list[str]]:
    """Documents as lists of sentences; a chat record becomes one document of its message contents."""
    return [item if is_document(item) else data_texts([item]) for item in items]


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """UTF-8 bytes of each token id ``(V,)`` long, 0 for special tokens: the denominator of bits per byte.

    Exact for the byte tokenizer (1 per byte id); for a trained tokenizer, the length of the token decoded
    alone (a WordPiece continuation or a space a decoder adds between tokens may be counted differently
    than in running text).

    >>> token_byte_lengths(ByteTokenizer())[[97, 255, ByteTokenizer.EOS]].tolist()
    [1, 1, 0]
    """
    vocab = tokenizer.vocab
    if isinstance(tokenizer, ByteTokenizer):
        lengths = (torch.arange(vocab.size) < 256).long()
    else:
        lengths = torch.tensor(
            [len(tokenizer.decode([i]).encode("utf-8")) for i in range(vocab.size)], dtype=torch.long
        )
    return lengths.masked_fill(vocab.special_mask(), 0)


def eval_generator(*parts: object) -> torch.Generator:
    """A generator for an evaluation's draws (which positions to mask, sampling), seeded from the purpose
    alone, not from the run's seed: every run of a comparison is scored on the same draws."""
    return torch.Generator().manual_seed(derive_seed(DEFAULT_SEED, "evaluation", *parts))
