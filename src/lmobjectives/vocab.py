"""`Vocab`: the vocabulary size and the ids of the special tokens an objective needs."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from .constants import FIM_TOKENS, PARADIGM_TOKENS, sentinel_token

__all__ = ["Vocab", "reserved_ids"]


def _as_id(value: object, size: int) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool, not a float) in ``[0, size)``, else None."""
    if isinstance(value, bool):
        return None
    try:
        i = operator.index(value)  # int, numpy integer, 0-dim integer tensor
    except TypeError:
        return None
    return i if 0 <= i < size else None


_SINGLE_IDS = ("pad_id", "mask_id", "cls_id", "sep_id", "bos_id", "eos_id", "unk_id", *PARADIGM_TOKENS, *FIM_TOKENS)
_RESERVED_SPELLINGS = {**{v: k for k, v in PARADIGM_TOKENS.items()}, **{v: k for k, v in FIM_TOKENS.items()}}
_INSERTED_IDS = ("mask_id", *PARADIGM_TOKENS, *FIM_TOKENS)  # tokens an objective writes into its input: one id each


def reserved_ids(lookup: Any) -> dict[str, Any]:
    """The Vocab fields of the reserved tokens found by ``lookup(spelling) -> id | None``: ``sentinel_ids``
    (T5's ``<extra_id_0>, <extra_id_1>, ...`` up to the first missing one), the UL2 paradigm ids and the
    fill-in-the-middle ids.

    >>> reserved_ids({"<extra_id_0>": 7, "<extra_id_1>": 8, "[NLU]": 9}.get)["sentinel_ids"]
    (7, 8)
    """
    sentinels: list[int] = []
    while (i := lookup(sentinel_token(len(sentinels)))) is not None:
        sentinels.append(i)
    return {"sentinel_ids": tuple(sentinels), **{key: lookup(token) for token, key in _RESERVED_SPELLINGS.items()}}


@dataclass(frozen=True)
class Vocab:
    """Vocabulary size and special-token ids.

    Objectives never look at strings, only at these ids. Build one by hand
    (``Vocab(size=30522, pad_id=0, mask_id=103, cls_id=101, sep_id=102)``) or
    from a tokenizer (:meth:`from_tokenizer`). An id of ``None`` means the
    vocabulary has no such token; an objective that needs it says so.

    ``pad_id`` may equal ``eos_id`` (GPT-2, Llama): objectives decide what is
    padding from an ``attention_mask``, never from the pad id alone, so EOS
    stays a learned label. The other structural ids (``pad_id``, ``cls_id``,
    ``sep_id``, ``bos_id``, ``eos_id``, ``unk_id``) may share an id too (GPT-2's
    ``<|endoftext|>`` is BOS, EOS and UNK; RoBERTa's ``<s>`` is BOS and CLS). The
    tokens an objective inserts (``mask_id``, ``sentinel_ids``, the UL2 paradigm
    ids, the fill-in-the-middle ids) must each have an id of their own: a
    ``ValueError`` names the two fields that share one.
    """

    size: int  # number of rows of the embedding / output matrix
    pad_id: int | None = None  # filler after the end of a sequence
    mask_id: int | None = None  # [MASK], inserted by masked-LM corruption
    cls_id: int | None = None  # [CLS], first token of a BERT sentence pair
    sep_id: int | None = None  # [SEP], closes each BERT segment
    bos_id: int | None = None  # beginning of sequence
    eos_id: int | None = None  # end of sequence / document separator when packing
    unk_id: int | None = None  # unknown token
    sentinel_ids: tuple[int, ...] = field(default=())  # span-corruption sentinels in order: span k gets sentinel_ids[k]
    nlu_id: int | None = None  # UL2 paradigm token [NLU] (R-denoisers)
    nlg_id: int | None = None  # UL2 paradigm token [NLG] (X-denoisers)
    s2s_id: int | None = None  # UL2 paradigm token [S2S] (S-denoiser, prefix LM)
    fim_prefix_id: int | None = None  # fill-in-the-middle <|fim_prefix|>
    fim_middle_id: int | None = None  # fill-in-the-middle <|fim_middle|>
    fim_suffix_id: int | None = None  # fill-in-the-middle <|fim_suffix|>
    extra_special_ids: tuple[int, ...] = field(default=())  # any other reserved ids, never selected nor drawn

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            raise ValueError(f"Vocab: size must be a positive int, got {self.size!r}")
        for name in _SINGLE_IDS:
            value = getattr(self, name)
            if value is not None:
                if (i := _as_id(value, self.size)) is None:
                    raise ValueError(f"Vocab: {name} must be an int in [0, {self.size}), got {value!r}")
                object.__setattr__(self, name, i)
        for name in ("sentinel_ids", "extra_special_ids"):
            ids = []
            for value in getattr(self, name):
                if (i := _as_id(value, self.size)) is None:
                    raise ValueError(f"Vocab: {name} must hold ints in [0, {self.size}), got {value!r}")
                ids.append(i)
            object.__setattr__(self, name, tuple(ids))
        if len(set(self.sentinel_ids)) != len(self.sentinel_ids):
            raise ValueError(f"Vocab: sentinel_ids must be distinct, got {self.sentinel_ids!r}")
        owner = {}  # id -> the first field holding it: structural ids first, then the inserted ones
        for name in _SINGLE_IDS:
            if name not in _INSERTED_IDS and getattr(self, name) is not None:
                owner.setdefault(getattr(self, name), name)
        inserted = [(name, getattr(self, name)) for name in _INSERTED_IDS if getattr(self, name) is not None]
        for name, i in inserted + [(f"sentinel_ids[{k}]", i) for k, i in enumerate(self.sentinel_ids)]:
            if i in owner:
                raise ValueError(
                    f"Vocab: {name}={i} is also {owner[i]}; the tokens an objective inserts (mask_id, sentinel_ids, "
                    "the UL2 paradigm ids, the FIM ids) must be distinct from every other special id, or the model "
                    "could not tell them apart (pad_id, cls_id, sep_id, bos_id, eos_id and unk_id may share one, "
                    "e.g. pad_id == eos_id)"
                )
            owner[i] = name

    @property
    def special_ids(self) -> tuple[int, ...]:
        """All reserved ids, sorted and without repeats."""
        ids = {getattr(self, name) for name in _SINGLE_IDS}
        ids.update(self.sentinel_ids)
        ids.update(self.extra_special_ids)
        ids.discard(None)
        return tuple(sorted(ids))  # type: ignore[arg-type]

    def special_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool tensor ``[size]``, True at every special id (a lookup table)."""
        table = torch.zeros(self.size, dtype=torch.bool, device=device)
        if self.special_ids:
            table[list(self.special_ids)] = True
        return table

    def require(self, *names: str, who: str) -> None:
        """Raise ``ValueError`` if any of the named ids is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{who} needs Vocab.{', Vocab.'.join(missing)}; this vocab has None")

    @classmethod
    def from_tokenizer(cls, tok: Any) -> Vocab:
        """Read the ids from a HF ``transformers`` tokenizer or a ``tokenizers.Tokenizer``.

        For a raw ``tokenizers.Tokenizer`` the usual spellings (``[PAD]``,
        ``<pad>``, ``[MASK]``, ``<mask>``, ``[CLS]``, ``<s>``, ...) are looked up.
        For both, T5's ``<extra_id_0>, <extra_id_1>, ...`` fill ``sentinel_ids``
        (in that order, up to the first missing one), ``[NLU] [NLG] [S2S]`` the
        UL2 paradigm ids and ``<|fim_prefix|> <|fim_middle|> <|fim_suffix|>`` the
        fill-in-the-middle ids.
        """
        if hasattr(tok, "all_special_ids") and hasattr(tok, "pad_token_id"):  # transformers
            size = len(tok)
            named = {
                "pad_id": tok.pad_token_id,
                "mask_id": tok.mask_token_id,
                "cls_id": tok.cls_token_id,
                "sep_id": tok.sep_token_id,
                "bos_id": tok.bos_token_id,
                "eos_id": tok.eos_token_id,
                "unk_id": tok.unk_token_id,
            }
            table = tok.get_vocab()
            lookup = table.get
            special = list(tok.all_special_ids)
        elif hasattr(tok, "token_to_id") and hasattr(tok, "get_vocab_size"):  # tokenizers.Tokenizer
            size = tok.get_vocab_size(with_added_tokens=True)
            spellings = {
                "pad_id": ("[PAD]", "<pad>", "<|pad|>"),
                "mask_id": ("[MASK]", "<mask>", "<|mask|>"),
                "cls_id": ("[CLS]", "<cls>", "<|cls|>"),
                "sep_id": ("[SEP]", "<sep>", "<|sep|>"),
                "bos_id": ("[BOS]", "<s>", "<bos>", "<|bos|>", "<|begin_of_text|>"),
                "eos_id": ("[EOS]", "</s>", "<eos>", "<|eos|>", "<|endoftext|>", "<|end_of_text|>"),
                "unk_id": ("[UNK]", "<unk>", "<|unk|>"),
            }
            lookup = tok.token_to_id
            named = {}
            for key, names in spellings.items():
                ids = [lookup(n) for n in names]
                named[key] = next((i for i in ids if i is not None), None)
            added = tok.get_added_tokens_decoder() if hasattr(tok, "get_added_tokens_decoder") else {}
            # only special added tokens are reserved; tok.add_tokens(["word"]) adds an ordinary token
            special = [int(i) for i, t in added.items() if getattr(t, "special", True)]
        else:
            raise TypeError(
                f"Vocab.from_tokenizer: tok must be a transformers tokenizer or a tokenizers.Tokenizer, got {type(tok).__name__}"
            )
        named.update(reserved_ids(lookup))
        known = {v for k, v in named.items() if k != "sentinel_ids"} | set(named["sentinel_ids"])
        extra = tuple(i for i in special if i not in known)
        return cls(size=size, extra_special_ids=extra, **named)
