"""Fill-in-the-middle (Bavarian et al. 2022): move a random span of text to the end, train as a causal LM.

A document cut at two character positions into ``prefix``, ``middle`` and
``suffix`` is rearranged with three sentinel tokens so that a left-to-right
model learns to write the middle after seeing both sides:

* PSM: ``<PRE> prefix <SUF> suffix <MID> middle <EOT>``
* SPM: ``<PRE> <SUF> suffix <MID> prefix middle <EOT>``

and the rearranged sequences are trained on with the ordinary next-token loss
(:class:`~lmobjectives.objectives.clm.CausalLM`), every token a target (joint
FIM + left-to-right training, as in the paper).

The objective reads raw texts (the trainer's ``"documents"`` layout): the cut
points are characters, so it tokenises after cutting. Tokenisation is one
Python call per document and per piece (a tokenizer is Python); every random
draw and the assembly of the rows are vectorised tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch

from .._checks import check_choice, check_generator, check_int, check_probability, int_rows
from .._option import option
from ..batch import Batch
from ..vocab import Vocab
from .clm import CausalLM

__all__ = ["FillInTheMiddle", "fim_reassemble"]

LEVELS = ("context", "document")
_FIM_IDS = ("fim_prefix_id", "fim_middle_id", "fim_suffix_id")
_PLAIN, _PSM, _SPM = 0, 1, 2  # how a unit (document, fragment or separator) is laid out


def _encode_with_char_starts(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and, per token, the index of the character its first byte belongs to.

    Exact for the project's tokenizers: :class:`~lmobjectives.data.tokenizers.ByteTokenizer`
    (token k is byte k; its character is the number of UTF-8 lead bytes before it) and
    :class:`~lmobjectives.data.tokenizers.HFTokenizer` (the HF encoding's character offsets). Any
    other tokenizer may provide ``encode_offsets(text) -> (ids, char_starts)``.
    """
    encode_offsets = getattr(tokenizer, "encode_offsets", None)
    if callable(encode_offsets):
        ids, starts = encode_offsets(text)
        return list(ids), list(starts)
    from ..data.tokenizers import ByteTokenizer, HFTokenizer  # lazy: lmobjectives.data imports objectives

    if isinstance(tokenizer, ByteTokenizer):
        ids = tokenizer.encode(text)
        if not ids:
            return [], []
        data = torch.tensor(ids, dtype=torch.uint8)  # (n,) the UTF-8 bytes
        lead = (data & 0xC0) != 0x80  # (n,) True where a character starts
        return ids, (lead.long().cumsum(0) - 1).tolist()
    if isinstance(tokenizer, HFTokenizer):
        encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]
    raise TypeError(
        f"FillInTheMiddle(level='context') needs each token's character offset to cut a context's fragments "
        f"at characters; tokenizer {type(tokenizer).__name__} gives none (ByteTokenizer and HFTokenizer do, or "
        "add encode_offsets(text) -> (ids, char_starts)); use level='document' with this tokenizer"
    )


def _assemble(
    mode: torch.Tensor, length: torch.Tensor, source: torch.Tensor, sentinels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay out units one after the other: ``(unit of each output token (M,), index into the source (M,))``.

    ``mode`` ``(U,)``: ``_PLAIN``, ``_PSM`` or ``_SPM``; ``length`` / ``source`` ``(U, 3)``: the length and
    the source index of (prefix, middle, suffix) of a FIM unit, of the whole unit in column 0 for a plain
    one; ``sentinels``: source indices of ``<PRE>, <SUF>, <MID>``. Each unit is ten slots, most of them
    empty: ``PRE | SUF suffix MID (SPM) | prefix | SUF suffix MID (PSM) | middle | plain``.
    """
    fim, psm, spm = (mode != _PLAIN).long(), (mode == _PSM).long(), (mode == _SPM).long()  # (U,)
    a, b, c = length.unbind(-1)  # (U,) prefix, middle, suffix (a = whole unit when plain)
    p_src, m_src, s_src = source.unbind(-1)
    pre, suf, mid = (s.expand_as(a) for s in sentinels.unbind(0))
    slot_length = torch.stack([fim, spm, c * spm, spm, a * fim, psm, c * psm, psm, b * fim, a * (1 - fim)], -1)
    slot_source = torch.stack([pre, suf, s_src, mid, p_src, suf, s_src, mid, m_src, p_src], -1)  # (U, 10)
    slot_length, slot_source = slot_length.flatten(), slot_source.flatten()  # (10U,)
    slot = torch.repeat_interleave(torch.arange(slot_length.numel()), slot_length)  # (M,) slot of each output token
    first = slot_length.cumsum(0) - slot_length  # (10U,) output index of each slot's first token
    within = torch.arange(slot.numel()) - first[slot]  # (M,) place inside the slot (0 for a sentinel)
    return slot // 10, slot_source[slot] + within


@dataclass(frozen=True)
class FillInTheMiddle:
    """Fill-in-the-middle training rows from raw texts, trained as a causal LM on every token.

    Each unit of text (see ``level``) becomes, with probability ``fim_rate``, a FIM example: two cut points are drawn
    uniformly and independently among its ``n + 1`` character positions and sorted (prefix, middle and suffix may each
    be empty), the three pieces are tokenised separately and laid out, with probability ``spm_rate``, as SPM, else PSM::

        PSM   <PRE> prefix <SUF> suffix <MID> middle <EOT>
        SPM   <PRE> <SUF> suffix <MID> prefix middle <EOT>

    Contract: ``__call__(texts, *, tokenizer, generator=None)``, ``texts`` non-empty strings, ``tokenizer`` anything
    with ``encode(text) -> list[int]`` giving ids of this vocab. ``<PRE> <MID> <SUF>`` are ``vocab.fim_prefix_id``,
    ``fim_middle_id``, ``fim_suffix_id``; ``<EOT>`` is ``vocab.eos_id``, which ends every document, FIM or not. Other
    units keep their tokens. Returns :class:`CausalLM`'s batch of the rows (``labels[t] = input_ids[t + 1]``): rows of
    ``seq_len``, the last padded (``vocab.pad_id``, else EOS) with ``attention_mask`` False. An SPM example is token
    for token a PSM example with an empty prefix and ``prefix + middle`` as its middle; :func:`fim_reassemble` undoes
    both. Draws: four float64 uniforms per unit in one ``torch.rand`` (FIM or not, SPM or PSM, the two cut points).

    * ``level="context"`` (default, the paper's choice): documents are tokenised and packed (each followed by EOS) into
      rows of ``seq_len``; each row is split at EOS into fragments, the units. A fragment from token ``k`` to token
      ``m`` is the character range ``start(k) .. start(m)`` of its document, ``start`` being the character of a token's
      first byte (0 for a document's first token, the text's length at its end): a character split between two rows
      belongs to the later row's fragment. A FIM fragment is cut and re-tokenised, other fragments keep their tokens
      (``fim_rate=0`` is plain packing); a row that grew is truncated at its end to ``seq_len`` (its last tokens
      dropped, not carried over), one that shrank is padded. A fragment with no character and a document with no
      token are never FIM. Needs per-token character offsets (:class:`ByteTokenizer`, :class:`HFTokenizer`, or
      ``encode_offsets(text) -> (ids, char_starts)``).
    * ``level="document"``: each document is a unit; the transformed documents are joined with EOS and cut into rows
      of ``seq_len``, nothing truncated (an example may span two rows). Any tokenizer with ``encode``.

    A text that spells a special token (``<|fim_prefix|>``, ``<|endoftext|>``) is encoded by an HF tokenizer as that
    token, which then looks like a sentinel: clean such texts beforehand.

    Worked example (``ByteTokenizer``: ``a b c e h l o`` are bytes ``97 98 99 101 104 108 111``; EOS 262, ``<PRE>``
    263, ``<MID>`` 264, ``<SUF>`` 265; ``fim_rate=1``, ``seq_len=16``, seed 216). The stream ``h e l l o EOS a b c
    EOS`` fits in one row, whose two fragments are ``"hello"`` (PSM, cut points 1 and 3: prefix ``h``, middle ``el``,
    suffix ``lo``) and ``"abc"`` (SPM, cut points 1 and 2: prefix ``a``, middle ``b``, suffix ``c``)::

        row             <PRE>  h  <SUF>  l    o   <MID>  e    l   EOS  <PRE> <SUF>  c  <MID>  a    b   EOS
        input_ids     [[ 263, 104, 265, 108, 111, 264, 101, 108, 262, 263, 265,  99, 264,  97,  98, 262]]
        labels        [[ 104, 265, 108, 111, 264, 101, 108, 262, 263, 265,  99, 264,  97,  98, 262, -100]]

    >>> from lmobjectives.data.tokenizers import ByteTokenizer
    >>> tok = ByteTokenizer()
    >>> vocab = Vocab(size=266, pad_id=256, eos_id=262, fim_prefix_id=263, fim_middle_id=264, fim_suffix_id=265)
    >>> fim = FillInTheMiddle(vocab, fim_rate=1.0, seq_len=16)
    >>> batch = fim(["hello", "abc"], tokenizer=tok, generator=torch.Generator().manual_seed(216))
    >>> batch.input_ids.tolist()
    [[263, 104, 265, 108, 111, 264, 101, 108, 262, 263, 265, 99, 264, 97, 98, 262]]
    >>> batch.labels.tolist(), batch.attention_mask.all().item()
    ([[104, 265, 108, 111, 264, 101, 108, 262, 263, 265, 99, 264, 97, 98, 262, -100]], True)
    >>> fim_reassemble(batch.input_ids[0], vocab) == tok.encode("hello") + [262] + tok.encode("abc") + [262]
    True

    Reference: Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle". Where this differs
    from the paper and StarCoder's Megatron code: ``docs/deviations.md``, rows "fim ...".
    """

    vocab: Vocab  # needs eos_id (<EOT>, the document separator) and fim_prefix_id, fim_middle_id, fim_suffix_id
    fim_rate: float = option(0.5, "probability that a document (fragment, at context level) is FIM-transformed")
    spm_rate: float = option(0.5, "probability that a FIM example is laid out SPM rather than PSM")
    seq_len: int = option(2048, "tokens per output row (>= 2; the run's --seq-len sets it)")
    level: str = option(
        "context", '"context": FIM per document fragment of a packed row (paper\'s choice) | "document"'
    )

    name = "fim"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"FillInTheMiddle: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require(
            "eos_id",
            *_FIM_IDS,
            who="FillInTheMiddle (reserve <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|> in the tokenizer)",
        )
        ids = {name: getattr(self.vocab, name) for name in ("eos_id", *_FIM_IDS)}
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"FillInTheMiddle: the EOS and FIM ids of the vocab must be distinct, got {ids}")
        object.__setattr__(self, "fim_rate", check_probability(self.fim_rate, "fim_rate"))
        object.__setattr__(self, "spm_rate", check_probability(self.spm_rate, "spm_rate"))
        check_int(self.seq_len, "seq_len", low=2)  # a row needs a token and its next token
        check_choice(self.level, "level", LEVELS)

    def __call__(self, texts: Sequence[str], *, tokenizer: Any, generator: torch.Generator | None = None) -> Batch:
        texts = _check_texts(texts)
        if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(
                f"FillInTheMiddle: tokenizer must have encode(text) -> list[int] (ByteTokenizer, HFTokenizer), "
                f"got {type(tokenizer).__name__}"
            )
        check_generator(generator, torch.device("cpu"))
        if self.level == "context":
            input_ids, real = self._context_rows(texts, tokenizer, generator)
        else:
            input_ids, real = self._document_rows(texts, tokenizer, generator)
        return CausalLM(self.vocab)(input_ids, attention_mask=real, generator=generator)

    # ---------------------------------------------------------------- draws and pieces
    def _draw(self, n_chars: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit of ``n_chars`` characters: mode ``(F,)`` (plain, PSM, SPM) and sorted cut points ``(F, 2)``."""
        u = torch.rand(n_chars.numel(), 4, generator=generator, dtype=torch.float64)  # (F, 4)
        fim = (u[:, 0] < self.fim_rate) & (n_chars > 0)  # (F,)
        spm = u[:, 1] < self.spm_rate
        mode = torch.where(fim, torch.where(spm, _SPM, _PSM), _PLAIN)  # (F,)
        n = n_chars[:, None]  # (F, 1)
        cuts = (u[:, 2:] * (n + 1)).floor().long().minimum(n).sort(-1).values  # (F, 2) uniform on 0..n, sorted
        return mode, cuts

    def _pieces(self, tokenizer: Any, texts: list[str], cuts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of every (prefix, middle, suffix), flat, and their lengths ``(F, 3)``: one encode per piece."""
        encode = tokenizer.encode
        pieces = [
            encode(piece) if piece else []
            for text, (lo, hi) in zip(texts, cuts)
            for piece in (text[:lo], text[lo:hi], text[hi:])
        ]
        flat, lengths = int_rows(pieces, "FillInTheMiddle: tokenizer.encode's results")
        return flat, lengths.view(-1, 3)

    def _check_ids(self, tokens: torch.Tensor) -> None:
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab.size):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise ValueError(
                f"FillInTheMiddle: the tokenizer produced id {bad}, outside [0, {self.vocab.size}) of the vocab "
                f"(vocab.size={self.vocab.size}); build the vocab from this tokenizer"
            )

    def _sources(self, *parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, list[int]]:
        """The source buffer ``parts..., <PRE>, <SUF>, <MID>, EOS``: it, the indices of ``<PRE>, <SUF>, <MID>``,
        the index of EOS and where each part starts."""
        v = self.vocab
        tail = torch.tensor([v.fim_prefix_id, v.fim_suffix_id, v.fim_middle_id, v.eos_id], dtype=torch.long)
        offsets = torch.tensor([0, *(p.numel() for p in parts)]).cumsum(0).tolist()
        base = offsets[-1]
        return torch.cat([*parts, tail]), torch.arange(base, base + 3), base + 3, offsets[:-1]

    # ---------------------------------------------------------------- document level
    def _document_rows(
        self, texts: list[str], tokenizer: Any, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        D, T = len(texts), self.seq_len
        n_chars = torch.tensor([len(t) for t in texts], dtype=torch.long)  # (D,)
        mode, cuts = self._draw(n_chars, generator)  # (D,), (D, 2)
        is_fim = mode != _PLAIN
        fim_docs = is_fim.nonzero().flatten().tolist()
        plain_docs = (~is_fim).nonzero().flatten().tolist()
        pieces, piece_len = self._pieces(tokenizer, [texts[d] for d in fim_docs], cuts[fim_docs].tolist())  # (F, 3)
        plain, plain_len = int_rows(
            [tokenizer.encode(texts[d]) for d in plain_docs], "FillInTheMiddle: tokenizer.encode's results"
        )
        self._check_ids(torch.cat([pieces, plain]))
        source, sentinels, eos, (_, plain_base) = self._sources(pieces, plain)

        length = torch.zeros(D, 3, dtype=torch.long)  # (D, 3) per document: pieces, or the whole text in column 0
        start = torch.zeros(D, 3, dtype=torch.long)
        length[is_fim] = piece_len
        start[is_fim] = (piece_len.flatten().cumsum(0) - piece_len.flatten()).view(-1, 3)
        length[~is_fim, 0] = plain_len
        start[~is_fim, 0] = plain_len.cumsum(0) - plain_len + plain_base
        # units: document 0, EOS, document 1, EOS, ...
        unit_mode = torch.stack([mode, torch.full_like(mode, _PLAIN)], 1).flatten()  # (2D,)
        eos_length = torch.tensor([[1, 0, 0]]).expand(D, 3)
        unit_length = torch.stack([length, eos_length], 1).flatten(0, 1)  # (2D, 3)
        unit_start = torch.stack([start, torch.full_like(start, eos)], 1).flatten(0, 1)  # (2D, 3)
        _, index = _assemble(unit_mode, unit_length, unit_start, sentinels)
        stream = source[index]  # (M,)
        N = -(-stream.numel() // T)
        input_ids = torch.full((N * T,), self._pad_id, dtype=torch.long)
        input_ids[: stream.numel()] = stream
        real = torch.arange(N * T) < stream.numel()
        return input_ids.view(N, T), real.view(N, T)

    # ---------------------------------------------------------------- context level
    def _context_rows(
        self, texts: list[str], tokenizer: Any, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        D, T = len(texts), self.seq_len
        encoded = [_encode_with_char_starts(tokenizer, text) for text in texts]
        tokens, lengths = int_rows(
            [ids for ids, _ in encoded], "FillInTheMiddle: tokenizer.encode's results"
        )  # (n,), (D,)
        char_start, n_starts = int_rows([starts for _, starts in encoded], "FillInTheMiddle: character offsets")  # (n,)
        if not torch.equal(n_starts, lengths):
            d = int((n_starts != lengths).nonzero()[0])
            raise ValueError(
                f"FillInTheMiddle: the tokenizer gave {int(lengths[d])} tokens but {int(n_starts[d])} character "
                f"offsets for texts[{d}]"
            )
        self._check_ids(tokens)
        n_chars = torch.tensor([len(t) for t in texts], dtype=torch.long)  # (D,)

        # the packed stream, as data.packing.pack_documents lays it out: each document followed by EOS
        S = tokens.numel() + D
        doc_of_token = torch.repeat_interleave(torch.arange(D), lengths)  # (n,)
        position = torch.arange(tokens.numel()) + doc_of_token  # (n,) place of each token in the stream
        eos_position = (lengths + 1).cumsum(0) - 1  # (D,)
        stream = torch.full((S,), self.vocab.eos_id, dtype=torch.long)  # (S,)
        stream[position] = tokens
        # character boundary before each stream place: a token's start; a document's first token 0; EOS: the end
        boundary = torch.empty(S, dtype=torch.long)  # (S,)
        boundary[position] = char_start
        boundary[(eos_position - lengths)[lengths > 0]] = 0
        boundary[eos_position] = n_chars
        is_eos = torch.zeros(S, dtype=torch.bool)
        is_eos[eos_position] = True

        # units: maximal runs of one document's tokens inside one row, and each EOS alone
        row = torch.arange(S) // T  # (S,)
        starts_unit = torch.ones(S, dtype=torch.bool)
        starts_unit[1:] = (row[1:] != row[:-1]) | is_eos[1:] | is_eos[:-1]
        unit_first = starts_unit.nonzero().flatten()  # (U,) stream place of each unit's first token
        unit_size = torch.diff(unit_first, append=torch.tensor([S]))  # (U,)
        unit_row = row[unit_first]
        text_unit = (~is_eos[unit_first]).nonzero().flatten()  # (F,) units that are fragments of a document
        first = unit_first[text_unit]  # (F,)
        c0, c1 = boundary[first], boundary[first + unit_size[text_unit]]  # (F,) the fragment's characters
        mode, cuts = self._draw(c1 - c0, generator)  # (F,), (F, 2)

        fim = (mode != _PLAIN).nonzero().flatten()  # (F',) fragments to transform
        doc = torch.repeat_interleave(torch.arange(D), lengths + 1)[first[fim]].tolist()
        lo_hi = [(a, b) for a, b in zip(c0[fim].tolist(), c1[fim].tolist())]
        fragments = [texts[d][a:b] for d, (a, b) in zip(doc, lo_hi)]
        pieces, piece_len = self._pieces(tokenizer, fragments, cuts[fim].tolist())  # (F', 3)
        self._check_ids(pieces)
        source, sentinels, _, (_, piece_base) = self._sources(stream, pieces)

        U = unit_first.numel()
        unit_mode = torch.zeros(U, dtype=torch.long)
        unit_mode[text_unit] = mode
        length = torch.zeros(U, 3, dtype=torch.long)
        start = torch.zeros(U, 3, dtype=torch.long)
        length[:, 0] = unit_size  # plain: the unit's own tokens in the stream
        start[:, 0] = unit_first
        length[text_unit[fim]] = piece_len
        start[text_unit[fim]] = (piece_len.flatten().cumsum(0) - piece_len.flatten()).view(-1, 3) + piece_base
        unit, index = _assemble(unit_mode, length, start, sentinels)  # (M,), (M,)

        # truncate or pad each row back to seq_len
        N = -(-S // T)
        out_row = unit_row[unit]  # (M,)
        row_size = torch.bincount(out_row, minlength=N)  # (N,)
        place = torch.arange(out_row.numel()) - (row_size.cumsum(0) - row_size)[out_row]  # (M,) place in its row
        keep = place < T
        input_ids = torch.full((N, T), self._pad_id, dtype=torch.long)
        real = torch.zeros(N, T, dtype=torch.bool)
        input_ids[out_row[keep], place[keep]] = source[index[keep]]
        real[out_row[keep], place[keep]] = True
        return input_ids, real

    @property
    def _pad_id(self) -> int:
        return self.vocab.pad_id if self.vocab.pad_id is not None else self.vocab.eos_id  # type: ignore[return-value]


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"FillInTheMiddle: texts must be a list of str (one per document), got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("FillInTheMiddle: texts is empty; need at least one document")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"FillInTheMiddle: texts[{i}] must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError(
                f"FillInTheMiddle: texts[{i}] is empty (''): a document needs at least one character to cut "
                "for FIM; drop empty documents"
            )
    return list(texts)


def fim_reassemble(ids: Sequence[int] | torch.Tensor, vocab: Vocab) -> list[int]:
    """Undo the FIM layout: each EOS-separated fragment ``<PRE> p <SUF> s <MID> m`` becomes ``p m s``.

    An SPM fragment ``<PRE> <SUF> s <MID> p m`` is read the same way (empty
    ``p`` before ``<SUF>``, then ``p m`` after ``<MID>``), giving ``p m s``;
    fragments that do not start with ``<PRE>`` and the EOS tokens are kept.
    With a tokenizer whose encoding of a concatenation is the concatenation of
    the encodings (bytes), this gives the original tokens back exactly; with
    others, decode the result. Pass real tokens only (no padding). A
    utility for checks and inspection, not a training transform.

    >>> v = Vocab(size=10, eos_id=2, fim_prefix_id=7, fim_middle_id=8, fim_suffix_id=9)
    >>> fim_reassemble([7, 3, 9, 5, 8, 4, 2, 7, 9, 6, 8, 3, 4, 2], v)  # PSM 3|4|5, SPM 3 4|6
    [3, 4, 5, 2, 3, 4, 6, 2]
    """
    vocab.require("eos_id", *_FIM_IDS, who="fim_reassemble")
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    pre, mid, suf = vocab.fim_prefix_id, vocab.fim_middle_id, vocab.fim_suffix_id
    out: list[int] = []
    for is_eos, group in groupby(ids, key=lambda i: i == vocab.eos_id):
        fragment = list(group)
        if is_eos or fragment[0] != pre:
            out.extend(fragment)
            continue
        if fragment.count(pre) != 1 or fragment.count(suf) != 1 or fragment.count(mid) != 1:
            raise ValueError(
                f"fim_reassemble: fragment {fragment[:12]}... is not one <PRE> .. <SUF> .. <MID> .. example"
            )
        i, j = fragment.index(suf), fragment.index(mid)
        if j < i:
            raise ValueError(f"fim_reassemble: <MID> before <SUF> in fragment {fragment[:12]}...")
        out.extend(fragment[1:i] + fragment[j + 1 :] + fragment[i + 1 : j])
    return out
