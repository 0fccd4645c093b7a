"""Sentence-pair objectives: next-sentence prediction (BERT) and sentence-order prediction (ALBERT).

Both cut ``[CLS] A [SEP] B [SEP]`` pairs out of documents the way BERT's
``create_instances_from_document`` does, give each pair a sentence label, and
then corrupt the pair with masked-LM (:class:`~lmobjectives.objectives.mlm.MaskedLM`):
BERT and ALBERT train ``loss = MLM + NSP`` (resp. ``+ SOP``) on the same batch.

Input: ``input_ids`` ``(S, L)``, **one tokenized sentence per row**, right
padded, rows grouped by document in document order, and ``document_ids``
``(S,)`` saying which document each row belongs to (non-decreasing).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .._checks import (
    check_choice,
    check_generator,
    check_int,
    check_like,
    check_positive_int,
    check_probability,
    check_token_ids,
)
from .._option import option
from ..batch import Batch, padding_mask
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .mlm import MaskedLM

__all__ = ["NextSentencePrediction", "SentenceOrderPrediction", "SentencePairs"]

_SELECTIONS = ("exact", "bernoulli")
_UNITS = ("token", "word", "span", "ngram")


@dataclass(frozen=True)
class SentencePairs:
    """Where each pair's two segments come from, before layout and masking.

    Sentence indices are rows of the caller's ``input_ids``; ranges are
    half-open ``[start, stop)``. ``first`` is laid out as segment A (token
    type 0), ``second`` as segment B (token type 1), so for a swapped SOP pair
    ``first`` comes *after* ``second`` in the document.
    """

    document: torch.Tensor  # (N,) long, index 0..D-1 (input order) of the document the pair was cut from
    target_length: torch.Tensor  # (N,) long, the target_seq_length drawn for that document
    first: torch.Tensor  # (N, 2) long, sentence rows [start, stop) of segment A
    second: torch.Tensor  # (N, 2) long, sentence rows [start, stop) of segment B
    first_trim: torch.Tensor  # (N, 2) long, tokens truncated from segment A's (front, back)
    second_trim: torch.Tensor  # (N, 2) long, tokens truncated from segment B's (front, back)
    sentence_labels: torch.Tensor  # (N,) long, NSP: 1 = B from another document; SOP: 1 = swapped


def _uniform_int(low: int | torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in ``[low, high]`` (both inclusive, elementwise; ``high >= low``), shaped like ``high``."""
    u = torch.rand(high.shape, generator=generator, device=high.device)  # same shape as high
    return torch.minimum(low + (u * (high - low + 1)).long(), high)  # minimum guards u * span rounding up


class _SentencePairObjective:
    """Machinery shared by NSP and SOP: checks, pair planning in rounds, truncation, layout, masking.

    Subclasses are frozen dataclasses with the fields ``vocab``,
    ``max_seq_length``, ``short_seq_prob``, ``mlm_probability``,
    ``mlm_selection``, ``max_predictions``, ``unit`` and implement :meth:`_round`.
    """

    _needs_two_documents = False

    # ------------------------------------------------------------------ options
    def _check_options(self) -> None:
        who = type(self).__name__
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"{who}: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("cls_id", "sep_id", "pad_id", who=who)
        # [CLS] A [SEP] B [SEP] with A and B non-empty: 3 special tokens, then BERT's randint(2, max_seq_length - 3)
        check_int(self.max_seq_length, "max_seq_length", low=5)
        check_probability(self.short_seq_prob, "short_seq_prob")
        check_probability(self.mlm_probability, "mlm_probability")
        check_choice(self.mlm_selection, "mlm_selection", _SELECTIONS)
        check_positive_int(self.max_predictions, "max_predictions", allow_none=True)
        check_choice(self.unit, "unit", _UNITS)  # the masked-LM unit on the pairs
        budgeted = self.unit in ("span", "ngram")  # these have a token budget under "bernoulli" too
        if (
            self.mlm_selection == "bernoulli"
            and self.max_predictions is not None
            and self.mlm_probability > 0
            and not budgeted
        ):
            # say it in this objective's terms (MaskedLM would name its own options)
            raise ValueError(
                f"{who}: max_predictions={self.max_predictions!r} caps the fixed count of mlm_selection='exact'; "
                "with mlm_selection='bernoulli' pass max_predictions=None"
            )
        mlm = None
        if self.mlm_probability > 0:
            self.vocab.require("mask_id", who=f"{who} with mlm_probability > 0")
            mlm = MaskedLM(
                vocab=self.vocab,
                probability=self.mlm_probability,
                selection=self.mlm_selection,
                max_predictions=self.max_predictions,
                unit=self.unit,
            )
        object.__setattr__(self, "_mlm", mlm)

    # ------------------------------------------------------------------ public API
    def pairs(
        self,
        input_ids: torch.Tensor,
        *,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SentencePairs:
        """Plan the pairs (which sentences, how much truncation, which label), without building them."""
        _, lengths, doc_start, doc_end = self._parse(input_ids, document_ids, attention_mask, generator)
        return self._plan(lengths, doc_start, doc_end, generator)

    def build_pairs(
        self,
        input_ids: torch.Tensor,
        *,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """The laid-out pairs before masked-LM: ``labels`` are all ``IGNORE_INDEX``."""
        return self._pairs_and_words(input_ids, document_ids, attention_mask, None, generator)[0]

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Pairs from ``input_ids`` ``(S, L)``, masked; ``word_ids`` ``(S, L)`` (each sentence's word index,
        -1 off words, as ``Tokenizer.encode_words`` gives them) are required by ``unit`` word, span, ngram."""
        needs_words = self._mlm is not None and self.unit != "token"
        if needs_words and word_ids is None:
            raise ValueError(
                f"{type(self).__name__}: unit={self.unit!r} needs word_ids (S, L): the word index of each token of "
                "each sentence row (-1 = no word), as Tokenizer.encode_words gives them"
            )
        if not needs_words and word_ids is not None:
            raise ValueError(
                f"{type(self).__name__}: word_ids was given but unit={self.unit!r}"
                + (" and mlm_probability=0" if self._mlm is None else "")
                + "; whole-word units ('word', 'span', 'ngram') use it"
            )
        pairs, words = self._pairs_and_words(input_ids, document_ids, attention_mask, word_ids, generator)
        if self._mlm is None:
            return pairs  # mlm_probability == 0: sentence task only, no MLM labels
        extras = {} if words is None else {"word_ids": words}
        masked = self._mlm(pairs.input_ids, attention_mask=pairs.attention_mask, generator=generator, **extras)
        return replace(pairs, input_ids=masked.input_ids, labels=masked.labels)

    def _pairs_and_words(self, input_ids, document_ids, attention_mask, word_ids, generator):
        """The laid-out pairs and, with ``word_ids``, the pairs' word ids ``(N, max_seq_length)`` (else None).

        Sentence word ids are made unique across sentences first (each row's ids shifted by the words of
        the rows before), so that a word never runs on into the next sentence of a segment.
        """
        flat, lengths, doc_start, doc_end = self._parse(input_ids, document_ids, attention_mask, generator)
        flat_words = None
        if word_ids is not None:
            ids = input_ids.long()
            words = check_like(word_ids, ids, "word_ids")  # (S, L)
            if words.numel() and int(words.min()) < -1:
                raise ValueError(f"word_ids must be >= -1 (-1 = not part of a word), got {int(words.min())}")
            real = (
                padding_mask(ids, self.vocab.pad_id)
                if attention_mask is None
                else check_like(attention_mask, ids, "attention_mask", dtype="bool")
            )
            per_row = words.masked_fill(~real, -1).amax(-1).clamp(min=-1) + 1  # (S,) words of each sentence
            offset = per_row.cumsum(0) - per_row  # (S,)
            flat_words = torch.where(words >= 0, words + offset[:, None], -1)[real]  # (total,)
        plan = self._plan(lengths, doc_start, doc_end, generator)
        return self._layout(flat, lengths, plan, flat_words)

    # ------------------------------------------------------------------ steps
    def _parse(
        self,
        input_ids: object,
        document_ids: object,
        attention_mask: object,
        generator: object,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check the inputs; return the real tokens ``(T,)``, sentence lengths ``(S,)``, document bounds ``(D,)``."""
        who = type(self).__name__
        input_ids = check_token_ids(input_ids, self.vocab)  # (S, L)
        device = input_ids.device
        check_generator(generator, device)
        S = input_ids.shape[0]
        if document_ids is None:
            raise ValueError(
                f"{who} needs document_ids: a (S,) = ({S},) integer tensor, the document of each sentence row"
            )
        if not isinstance(document_ids, torch.Tensor):
            raise TypeError(f"document_ids must be a torch.Tensor of shape ({S},), got {type(document_ids).__name__}")
        if document_ids.dtype.is_floating_point or document_ids.dtype.is_complex or document_ids.dtype == torch.bool:
            raise TypeError(f"document_ids must be an integer tensor, got dtype {document_ids.dtype}")
        if tuple(document_ids.shape) != (S,):
            raise ValueError(
                f"document_ids must have shape ({S},) (one id per row of input_ids), got {tuple(document_ids.shape)}"
            )
        document_ids = document_ids.to(device=device, dtype=torch.long)  # (S,)
        drops = (document_ids[1:] < document_ids[:-1]).nonzero()
        if drops.numel():
            i = int(drops[0, 0])
            raise ValueError(
                f"document_ids must be non-decreasing (rows grouped by document, in order); "
                f"document_ids[{i + 1}]={int(document_ids[i + 1])} < document_ids[{i}]={int(document_ids[i])}"
            )
        if attention_mask is None:
            real = padding_mask(input_ids, self.vocab.pad_id)  # (S, L)
        else:
            real = check_like(attention_mask, input_ids, "attention_mask", dtype="bool")  # (S, L)
        lengths = real.sum(-1)  # (S,)
        empty = (lengths == 0).nonzero()
        if empty.numel():
            raise ValueError(
                f"input_ids row {int(empty[0, 0])} has no real token; every row must be a non-empty sentence"
            )
        special = real & ((input_ids == self.vocab.cls_id) | (input_ids == self.vocab.sep_id))  # (S, L)
        if special.any():
            r, t = (int(v) for v in special.nonzero()[0])
            raise ValueError(
                f"input_ids[{r}, {t}] = {int(input_ids[r, t])} is [CLS] or [SEP]; rows must be plain sentences, "
                f"{who} adds the special tokens itself"
            )
        _, counts = torch.unique_consecutive(document_ids, return_counts=True)  # (D,)
        if self._needs_two_documents and counts.numel() < 2:
            raise ValueError(
                f"{who} needs at least 2 documents (B is drawn from another document), "
                f"but document_ids holds a single document id {int(document_ids[0])}"
            )
        doc_end = counts.cumsum(0)  # (D,) exclusive end row of each document
        return input_ids[real], lengths, doc_end - counts, doc_end

    def _plan(
        self, lengths: torch.Tensor, doc_start: torch.Tensor, doc_end: torch.Tensor, generator: torch.Generator | None
    ) -> SentencePairs:
        """Cut every document into pairs, one chunk per document per round, then truncate."""
        device = lengths.device
        D = doc_start.numel()
        M = self.max_seq_length - 3  # BERT's max_num_tokens: room left after [CLS], [SEP], [SEP]
        C = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])  # (S+1,) tokens before each sentence
        # one target length per document (BERT draws it once per document per pass)
        short = torch.rand(D, generator=generator, device=device) < self.short_seq_prob  # (D,)
        short_len = _uniform_int(2, torch.full((D,), M, device=device), generator)  # (D,)
        target = torch.where(short, short_len, M)  # (D,)

        rounds: list[tuple[torch.Tensor, ...]] = []
        p = doc_start.clone()  # (D,) first sentence not yet used, per document
        # Rounds: each document takes its next chunk in parallel; the loop runs
        # (max chunks of one document) times, each round vectorised over documents.
        while True:
            active = p < doc_end  # (D,)
            if not bool(active.any()):
                break
            p_safe = torch.minimum(p, doc_end - 1)  # inactive documents compute on a valid row; discarded below
            # chunk: sentences p .. stop-1, the fewest whose length reaches the target, or to the document end
            chunk_stop = torch.minimum(torch.searchsorted(C, C[p_safe] + target), doc_end)  # (D,)
            n = chunk_stop - p_safe  # (D,) sentences in the chunk, >= 1
            a_stop = p_safe + _uniform_int(1, (n - 1).clamp(min=1), generator)  # (D,) A = chunk[:a_end]
            first, second, label, keep, p_next = self._round(
                p_safe, a_stop, chunk_stop, n, target, C, doc_start, doc_end, generator
            )
            rounds.append((first, second, label, keep & active))
            p = torch.where(active, p_next, p)

        # (rounds, D, ...) -> document-major order: all pairs of document 0, then of document 1, ...
        def gather(i: int) -> torch.Tensor:
            return torch.stack([r[i] for r in rounds], 1).flatten(0, 1)  # (D * R, ...)

        keep = gather(3)  # (D*R,)
        first, second, label = gather(0)[keep], gather(1)[keep], gather(2)[keep]  # (N, 2), (N, 2), (N,)
        document = torch.arange(D, device=device).repeat_interleave(len(rounds))[keep]  # (N,)
        if first.shape[0] == 0:
            raise ValueError(
                f"{type(self).__name__} built no pair: every chunk of every document (document_ids) holds a single "
                f"sentence (one-sentence documents, or sentences as long as the target length); give longer documents"
            )
        len_first = C[first[:, 1]] - C[first[:, 0]]  # (N,) tokens before truncation
        len_second = C[second[:, 1]] - C[second[:, 0]]  # (N,)
        first_trim, second_trim = self._truncate(len_first, len_second, generator)
        return SentencePairs(
            document=document,
            target_length=target[document],
            first=first,
            second=second,
            first_trim=first_trim,
            second_trim=second_trim,
            sentence_labels=label,
        )

    def _truncate(
        self, len_a: torch.Tensor, len_b: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT's ``truncate_seq_pair`` in closed form; returns (front, back) cuts ``(N, 2)`` for A and B.

        BERT removes one token at a time from the longer segment (B on a tie),
        from the front or the back with probability 1/2 each, until
        ``len_a + len_b <= M`` (``M = max_seq_length - 3``). The longer one is
        cut down to the shorter, then they alternate, so A ends at
        ``ceil(M / 2)`` unless one side was short enough to be left alone; the
        number of front cuts of a side is ``Binomial(cuts, 1/2)``, drawn here as
        a sum of coin flips (the same distribution as BERT's per-token choice).
        """
        M = self.max_seq_length - 3
        over = len_a + len_b > M  # (N,)
        new_a = torch.minimum(len_a, torch.maximum(torch.full_like(len_a, (M + 1) // 2), M - len_b))  # (N,)
        new_a = torch.where(over, new_a, len_a)
        new_b = torch.where(over, M - new_a, len_b)  # (N,)
        cuts = torch.stack([len_a - new_a, len_b - new_b])  # (2, N)
        R = int(cuts.max()) if cuts.numel() else 0
        coins = torch.rand((2, cuts.shape[1], R), generator=generator, device=cuts.device) < 0.5  # (2, N, R)
        front = (coins & (torch.arange(R, device=cuts.device) < cuts[..., None])).sum(-1)  # (2, N)
        trims = torch.stack([front, cuts - front], -1)  # (2, N, 2): (front, back)
        return trims[0], trims[1]

    def _layout(
        self, flat: torch.Tensor, lengths: torch.Tensor, plan: SentencePairs, flat_words: torch.Tensor | None = None
    ) -> tuple[Batch, torch.Tensor | None]:
        """Gather ``[CLS] A [SEP] B [SEP] pad...`` rows ``(N, max_seq_length)`` by index arithmetic
        (and their word ids from ``flat_words``: -1 on [CLS], [SEP] and padding)."""
        v = self.vocab
        C = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])  # (S+1,)
        a_start = C[plan.first[:, 0]] + plan.first_trim[:, 0]  # (N,) first token of A in flat
        a_len = C[plan.first[:, 1]] - C[plan.first[:, 0]] - plan.first_trim.sum(-1)  # (N,)
        b_start = C[plan.second[:, 0]] + plan.second_trim[:, 0]  # (N,)
        b_len = C[plan.second[:, 1]] - C[plan.second[:, 0]] - plan.second_trim.sum(-1)  # (N,)
        a_len, b_len, a_start, b_start = a_len[:, None], b_len[:, None], a_start[:, None], b_start[:, None]  # (N, 1)
        pos = torch.arange(self.max_seq_length, device=flat.device)[None, :]  # (1, T)
        in_a = (pos >= 1) & (pos <= a_len)  # (N, T)
        in_b = (pos >= a_len + 2) & (pos < a_len + 2 + b_len)  # (N, T)
        sep1 = pos == a_len + 1  # (N, T)
        sep2 = pos == a_len + b_len + 2  # (N, T)
        src = torch.where(in_a, a_start + pos - 1, torch.where(in_b, b_start + pos - a_len - 2, 0))  # (N, T)
        ids = torch.where(in_a | in_b, flat[src], v.pad_id)  # (N, T)
        ids = torch.where(sep1 | sep2, v.sep_id, ids)
        ids[:, 0] = v.cls_id
        N = ids.shape[0]
        words = None if flat_words is None else torch.where(in_a | in_b, flat_words[src], -1)  # (N, T)
        return Batch(
            input_ids=ids,
            labels=torch.full_like(ids, IGNORE_INDEX),
            attention_mask=pos <= a_len + b_len + 2,
            causal=False,
            token_type_ids=(in_b | sep2).long(),
            sentence_labels=plan.sentence_labels,
            has_targets=torch.ones(N, dtype=torch.bool, device=ids.device),
        ), words

    def _round(
        self,
        p: torch.Tensor,
        a_stop: torch.Tensor,
        chunk_stop: torch.Tensor,
        n: torch.Tensor,
        target: torch.Tensor,
        C: torch.Tensor,
        doc_start: torch.Tensor,
        doc_end: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One chunk per document -> (first (D, 2), second (D, 2), label (D,), keep (D,), next pointer (D,))."""
        raise NotImplementedError


@dataclass(frozen=True)
class NextSentencePrediction(_SentencePairObjective):
    """BERT's next-sentence prediction pairs, masked for joint MLM + NSP training.

    Cuts ``[CLS] A [SEP] B [SEP]`` pairs out of documents as BERT's ``create_instances_from_document`` does, labels
    each pair 0 (B follows A) or 1 (B from another document; HF's ``next_sentence_label`` convention) and masks it
    with :class:`MaskedLM`, for ``loss = MLM + NSP`` on one batch.

    Contract: ``nsp(input_ids, *, document_ids, attention_mask=None, word_ids=None, generator=None)``, ``input_ids``
    ``(S, L)`` one sentence per row (padding: ``attention_mask``, else the trailing ``pad_id`` run), ``document_ids``
    ``(S,)`` non-decreasing, at least 2 documents. Per document, with ``M = max_seq_length - 3``:

    * one target length, ``M`` or, with probability ``short_seq_prob``, uniform in ``[2, M]``. Sentences are gathered
      into a chunk until its length reaches the target (or the document ends); A is the chunk's first ``a_end``
      sentences, ``a_end`` uniform in ``[1, n - 1]`` (1 for a one-sentence chunk).
    * With probability ``random_next_prob``, and always for a one-sentence chunk, B starts at a uniform sentence of
      another document and runs until its length reaches ``target - len(A)`` (label 1); the rest of the chunk is put
      back, so the next chunk starts right after A. Otherwise B is the rest of the chunk (label 0). Where chunks often
      hold one sentence, the share of label 1 therefore exceeds ``random_next_prob``.
    * The pair is truncated to ``M`` tokens as BERT's ``truncate_seq_pair`` (one token at a time from the longer side,
      B on a tie, front or back with probability 1/2), laid out and masked in units of ``unit`` (never [CLS], [SEP] or
      padding; not at all with ``mlm_probability=0``). The whole-word units need ``word_ids`` ``(S, L)``: a word never
      runs on into the next sentence, and a word cut by truncation is a word.

    Output: a :class:`Batch` of ``N`` rows of ``max_seq_length`` (at least one per document), in document order, then
    chunk order; ``token_type_ids`` 0 on ``[CLS] A [SEP]`` and padding, 1 on ``B [SEP]``; ``sentence_labels`` ``(N,)``;
    ``has_targets`` all True. :meth:`build_pairs` gives the pairs before masking and :meth:`pairs` the plan
    (:class:`SentencePairs`), with the same draws.

    Worked example (``max_seq_length=8``, ``short_seq_prob=0``, ``random_next_prob=0``; every chunk is exactly two
    sentences, so nothing is random):

    >>> v = Vocab(size=40, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    >>> x = torch.tensor([[10, 11, 12], [13, 14, 0], [15, 16, 17], [18, 0, 0], [20, 21, 0], [22, 23, 0]])
    >>> nsp = NextSentencePrediction(v, max_seq_length=8, short_seq_prob=0, random_next_prob=0)
    >>> b = nsp.build_pairs(x, document_ids=torch.tensor([0, 0, 0, 0, 1, 1]))
    >>> b.input_ids
    tensor([[ 1, 10, 11, 12,  2, 13, 14,  2],
            [ 1, 15, 16, 17,  2, 18,  2,  0],
            [ 1, 20, 21,  2, 22, 23,  2,  0]])
    >>> b.token_type_ids.tolist(), b.sentence_labels.tolist()
    ([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 0]], [0, 0, 0])

    Seeded (``max_seq_length=7``, so ``M = 4``; ``mlm_probability=0``; documents ``s0 s1 s2 = [10 11] [12] [13 14]``,
    ``s3 s4 = [20 21 22] [23]``, ``s5 s6 = [30] [31 32]``). Doc 0: A = s0, B = s1 s2 cut 1 at the front. Doc 1: A = s3
    cut 1 at the back, B = s2 (doc 0); s4 is put back, alone: B = s5 s6 (doc 2). Doc 2 (short target 3): A = s5,
    B = s2 (doc 0); s6 is put back, alone: B = s3 (doc 1), cut:

    >>> x = torch.tensor([[10, 11, 0], [12, 0, 0], [13, 14, 0], [20, 21, 22], [23, 0, 0], [30, 0, 0], [31, 32, 0]])
    >>> nsp = NextSentencePrediction(v, max_seq_length=7, mlm_probability=0)
    >>> b = nsp(x, document_ids=torch.tensor([0, 0, 0, 1, 1, 2, 2]), generator=torch.Generator().manual_seed(0))
    >>> b.input_ids
    tensor([[ 1, 10, 11,  2, 13, 14,  2],
            [ 1, 20, 21,  2, 13, 14,  2],
            [ 1, 23,  2, 30, 31, 32,  2],
            [ 1, 30,  2, 13, 14,  2,  0],
            [ 1, 31, 32,  2, 20, 21,  2]])
    >>> b.sentence_labels.tolist()
    [0, 1, 1, 1, 1]

    Reference: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
    Understanding", and its ``create_pretraining_data.py``. Where this differs: ``docs/deviations.md``, rows "nsp ...".
    """

    vocab: Vocab  # needs cls_id, sep_id, pad_id (and mask_id when mlm_probability > 0)
    max_seq_length: int = option(128, "length of every output row, [CLS] A [SEP] B [SEP] included (>= 5)")
    short_seq_prob: float = option(
        0.1, "probability that a document's target length is uniform in [2, max_seq_length - 3]"
    )
    random_next_prob: float = option(0.5, "probability that B comes from another document (label 1)")
    mlm_probability: float = option(
        0.15, "MaskedLM masking rate on the pairs; 0 turns MLM off (labels all IGNORE_INDEX)"
    )
    mlm_selection: str = option("exact", 'MaskedLM selection: "exact" (BERT\'s fixed count per row) or "bernoulli"')
    max_predictions: int | None = option(
        20, 'MaskedLM cap per row (BERT\'s max_predictions_per_seq); None for "bernoulli"'
    )
    unit: str = option(
        "token", 'MaskedLM unit on the pairs: "token", "word" (BERT wwm), "span" (SpanBERT), "ngram" (ALBERT)'
    )
    _mlm: MaskedLM | None = field(default=None, init=False, repr=False, compare=False)  # built from the mlm_* options

    name = "nsp"
    label_meaning = "1 = B comes from another document"  # sentence_labels, in words
    _needs_two_documents = True

    def __post_init__(self) -> None:
        self._check_options()
        check_probability(self.random_next_prob, "random_next_prob")

    def _round(self, p, a_stop, chunk_stop, n, target, C, doc_start, doc_end, generator):  # type: ignore[override]
        D = p.numel()
        device = p.device
        random_b = (n == 1) | (torch.rand(D, generator=generator, device=device) < self.random_next_prob)  # (D,)
        # another document, uniform among the D - 1 others
        other = _uniform_int(0, torch.full((D,), D - 2, device=device), generator)  # (D,)
        other = other + (other >= torch.arange(D, device=device)).long()
        b_begin = doc_start[other] + _uniform_int(0, doc_end[other] - doc_start[other] - 1, generator)  # (D,)
        target_b = (target - (C[a_stop] - C[p])).clamp(min=1)  # (D,) at least one sentence of B
        b_stop = torch.minimum(torch.searchsorted(C, C[b_begin] + target_b), doc_end[other])  # (D,)
        first = torch.stack([p, a_stop], -1)  # (D, 2)
        second = torch.where(
            random_b[:, None], torch.stack([b_begin, b_stop], -1), torch.stack([a_stop, chunk_stop], -1)
        )  # (D, 2)
        p_next = torch.where(random_b, a_stop, chunk_stop)  # unused sentences are put back
        return first, second, random_b.long(), torch.ones_like(random_b), p_next


@dataclass(frozen=True)
class SentenceOrderPrediction(_SentencePairObjective):
    """ALBERT's sentence-order prediction pairs, masked for joint MLM + SOP training.

    Chunks, A and B are cut exactly as in :class:`NextSentencePrediction` (target length, chunking, ``a_end``,
    truncation, layout, masking and output), but B is always the actual continuation of A: with probability
    ``swap_prob`` the two are swapped, laid out ``[CLS] B [SEP] A [SEP]`` (label 1), else kept in order (label 0). The
    swap happens before truncation, as in ALBERT's code (it decides which side wins a length tie). A one-sentence chunk
    gives no pair, so label 1 means exactly "swapped". Works with a single document; if no chunk has two sentences, a
    ``ValueError`` is raised.

    Worked example (the input of NSP's first example, ``max_seq_length=8``, ``short_seq_prob=0``, ``swap_prob=1``):

    >>> v = Vocab(size=40, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    >>> x = torch.tensor([[10, 11, 12], [13, 14, 0], [15, 16, 17], [18, 0, 0], [20, 21, 0], [22, 23, 0]])
    >>> sop = SentenceOrderPrediction(v, max_seq_length=8, short_seq_prob=0, swap_prob=1)
    >>> b = sop.build_pairs(x, document_ids=torch.tensor([0, 0, 0, 0, 1, 1]))
    >>> b.input_ids
    tensor([[ 1, 13, 14,  2, 10, 11, 12,  2],
            [ 1, 18,  2, 15, 16, 17,  2,  0],
            [ 1, 22, 23,  2, 20, 21,  2,  0]])
    >>> b.sentence_labels.tolist()
    [1, 1, 1]

    Seeded (the input and options of NSP's seeded example): doc 0 in order, B = s1 s2 cut 1 at the back; docs 1 and 2
    swapped:

    >>> x = torch.tensor([[10, 11, 0], [12, 0, 0], [13, 14, 0], [20, 21, 22], [23, 0, 0], [30, 0, 0], [31, 32, 0]])
    >>> sop = SentenceOrderPrediction(v, max_seq_length=7, mlm_probability=0)
    >>> b = sop(x, document_ids=torch.tensor([0, 0, 0, 1, 1, 2, 2]), generator=torch.Generator().manual_seed(0))
    >>> b.input_ids
    tensor([[ 1, 10, 11,  2, 12, 13,  2],
            [ 1, 23,  2, 20, 21, 22,  2],
            [ 1, 31, 32,  2, 30,  2,  0]])
    >>> b.sentence_labels.tolist()
    [0, 1, 1]

    Reference: Lan et al. 2019, "ALBERT: A Lite BERT for Self-supervised Learning of Language Representations", and
    its ``create_pretraining_data.py``. Where this differs: ``docs/deviations.md``, rows "sop" and "nsp / sop ...".
    """

    vocab: Vocab  # needs cls_id, sep_id, pad_id (and mask_id when mlm_probability > 0)
    max_seq_length: int = option(128, "length of every output row, [CLS] A [SEP] B [SEP] included (>= 5)")
    short_seq_prob: float = option(
        0.1, "probability that a document's target length is uniform in [2, max_seq_length - 3]"
    )
    swap_prob: float = option(0.5, "probability that A and B are swapped (label 1)")
    mlm_probability: float = option(
        0.15, "MaskedLM masking rate on the pairs; 0 turns MLM off (labels all IGNORE_INDEX)"
    )
    mlm_selection: str = option("exact", 'MaskedLM selection: "exact" (BERT\'s fixed count per row) or "bernoulli"')
    max_predictions: int | None = option(
        20, 'MaskedLM cap per row (BERT\'s max_predictions_per_seq); None for "bernoulli"'
    )
    unit: str = option(
        "token", 'MaskedLM unit on the pairs: "token", "word" (BERT wwm), "span" (SpanBERT), "ngram" (ALBERT)'
    )
    _mlm: MaskedLM | None = field(default=None, init=False, repr=False, compare=False)  # built from the mlm_* options

    name = "sop"
    label_meaning = "1 = A and B swapped"  # sentence_labels, in words

    def __post_init__(self) -> None:
        self._check_options()
        check_probability(self.swap_prob, "swap_prob")

    def _round(self, p, a_stop, chunk_stop, n, target, C, doc_start, doc_end, generator):  # type: ignore[override]
        swap = torch.rand(p.numel(), generator=generator, device=p.device) < self.swap_prob  # (D,)
        in_order_a = torch.stack([p, a_stop], -1)  # (D, 2)
        in_order_b = torch.stack([a_stop, chunk_stop], -1)  # (D, 2)
        first = torch.where(swap[:, None], in_order_b, in_order_a)
        second = torch.where(swap[:, None], in_order_a, in_order_b)
        return first, second, swap.long(), n >= 2, chunk_stop
