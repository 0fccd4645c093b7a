"""Tokenizers: a dependency-free byte tokenizer and a thin wrapper over HF ``tokenizers``.

Every tokenizer gives token ids, the word each token belongs to (for
whole-word masking) and a :class:`~lmobjectives.vocab.Vocab` with the special
ids objectives need. ``encode`` never adds special tokens: objectives add
their own ``[CLS]`` / ``[SEP]`` / ``[EOS]``.

The HF ``tokenizers`` library is optional; it is imported only when a
:class:`HFTokenizer` is built, trained or loaded.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch

from .._checks import check_choice, check_int
from ..vocab import Vocab, reserved_ids

if TYPE_CHECKING:  # pragma: no cover
    import tokenizers

__all__ = ["ByteTokenizer", "HFTokenizer", "Tokenizer", "load_tokenizer", "train_tokenizer", "word_ids_from_starts"]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")
"""Special tokens of every tokenizer built here, in id order (after the bytes for :class:`ByteTokenizer`)."""

_MARKER = "lmobjectives_tokenizer.json"  # file written by ByteTokenizer.save
_HF_FILE = "tokenizer.json"  # file written by HFTokenizer.save (the HF tokenizers format)


def word_ids_from_starts(is_word_start: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Word ids ``(B, T)`` from a word-start flag: ids count words from 0 in each row, -1 off words.

    A word runs from a start to the token before the next start (or before the
    next invalid token). An invalid token (special, padding; ``valid`` False)
    gets -1 and ends the word before it; a valid token right after an invalid
    one starts a word even when its flag is False.

    >>> word_ids_from_starts(torch.tensor([[0, 1, 0, 1, 1, 0]]), torch.tensor([[0, 1, 1, 1, 1, 0]]))
    tensor([[-1,  0,  0,  1,  2, -1]])
    """
    starts = is_word_start.bool()  # (B, T)
    if valid is None:
        valid = torch.ones_like(starts)
    valid = valid.bool()
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)  # (B, T)
    starts = valid & (starts | ~prev_valid)
    ids = starts.long().cumsum(-1) - 1  # (B, T)
    return torch.where(valid, ids, -1)


def _require_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:  # exercised by tests/cli/test_faults.py with the package hidden
        raise ImportError(
            "this needs the optional HF `tokenizers` package: pip install tokenizers (from a clone of lmobjectives: "
            "pip install -e \".[hf]\"), or use the dependency-free tokenizer spec 'byte'"
        ) from e
    return tokenizers


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    vocab: Vocab  # vocabulary size and special ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special token."""
        ...

    def encode_words(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and, per token, its word index in ``text`` (from 0; -1 = no word)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens appear by name (``[MASK]``)."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer to ``directory`` so that :func:`load_tokenizer` reads it back."""
        ...


# --------------------------------------------------------------------------- bytes


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, then seven special tokens.

    ====  =======  ====  =======  ====  ========
    id    token    id    token    id    token
    ====  =======  ====  =======  ====  ========
    256   [PAD]    259   [SEP]    262   [EOS]
    257   [UNK]    260   [MASK]
    258   [CLS]    261   [BOS]
    ====  =======  ====  =======  ====  ========

    ``extra_special_tokens`` (e.g. T5's ``<extra_id_0> ...`` sentinels, UL2's
    ``[NLU]``, FIM's ``<|fim_prefix|>``) get the ids after ``[EOS]``, in order;
    the :class:`Vocab` knows the ones it has a field for.

    A *word* is a maximal run of non-whitespace bytes; the ASCII whitespace
    bytes (space, ``\\t``, ``\\n``, ``\\r``, ``\\v``, ``\\f``) and special tokens
    belong to no word (word id -1). Non-ASCII characters are several bytes of
    the same word. :meth:`decode` renders specials by name and replaces
    invalid UTF-8 with U+FFFD.

    >>> tok = ByteTokenizer()
    >>> tok.encode_words("ab cd")
    ([97, 98, 32, 99, 100], [0, 0, -1, 1, 1])
    >>> tok.decode([104, 105, ByteTokenizer.MASK])
    'hi[MASK]'
    >>> tok.vocab.size, tok.vocab.mask_id
    (263, 260)
    >>> ByteTokenizer(extra_special_tokens=("<extra_id_0>", "<extra_id_1>")).vocab.sentinel_ids
    (263, 264)
    """

    PAD = 256  # [PAD]
    UNK = 257  # [UNK] (never produced by encode: every byte has an id)
    CLS = 258  # [CLS]
    SEP = 259  # [SEP]
    MASK = 260  # [MASK]
    BOS = 261  # [BOS]
    EOS = 262  # [EOS]
    SIZE = 263  # 256 bytes + 7 specials, without extra special tokens
    WHITESPACE = b" \t\n\r\x0b\x0c"  # bytes that separate words

    def __init__(self, extra_special_tokens: Sequence[str] = ()) -> None:
        extra = tuple(extra_special_tokens)
        if any(not isinstance(t, str) or not t for t in extra) or len(set(extra)) != len(extra):
            raise ValueError(f"ByteTokenizer: extra_special_tokens must be distinct non-empty strings, got {extra!r}")
        if clash := set(extra) & set(SPECIAL_TOKENS):
            raise ValueError(f"ByteTokenizer: extra_special_tokens repeats built-in special tokens {sorted(clash)}")
        self.extra_special_tokens = extra  # spelled after the seven built-in specials, ids from SIZE on
        self.specials = SPECIAL_TOKENS + extra  # every special token, id 256 + index
        ids = {token: 256 + i for i, token in enumerate(self.specials)}
        reserved = reserved_ids(ids.get)
        named = set(range(256, self.SIZE)) | set(reserved.pop("sentinel_ids")) | set(reserved.values())
        self.vocab = Vocab(
            size=self.SIZE + len(extra),
            pad_id=self.PAD,
            unk_id=self.UNK,
            cls_id=self.CLS,
            sep_id=self.SEP,
            mask_id=self.MASK,
            bos_id=self.BOS,
            eos_id=self.EOS,
            **reserved_ids(ids.get),
            extra_special_ids=tuple(i for i in ids.values() if i not in named),
        )
        in_word = torch.ones(self.vocab.size, dtype=torch.bool)  # (V,) True for bytes that can be part of a word
        in_word[list(self.WHITESPACE)] = False
        in_word[256:] = False
        self._in_word = in_word

    def __repr__(self) -> str:
        return (
            f"ByteTokenizer(extra_special_tokens={self.extra_special_tokens!r})"
            if self.extra_special_tokens
            else "ByteTokenizer()"
        )

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``.

        >>> ByteTokenizer().encode("é!")
        [195, 169, 33]
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode: text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def encode_words(self, text: str) -> tuple[list[int], list[int]]:
        """UTF-8 bytes of ``text`` and the word index of each (-1 for whitespace)."""
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode_words: text must be a str, got {type(text).__name__}")
        data = text.encode("utf-8")
        if not data:
            return [], []
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # (T,)
        return list(data), self.word_ids(ids[None])[0].tolist()

    def word_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word index ``(B, T)`` of every token of a batch ``(B, T)``, counted from 0 in each row.

        -1 at whitespace bytes and special tokens (padding included). The same
        numbering as :meth:`encode_words` for a row that holds one encoded text.

        >>> tok = ByteTokenizer()
        >>> tok.word_ids(torch.tensor([[97, 98, 32, 99, 100, 256]]))
        tensor([[ 0,  0, -1,  1,  1, -1]])
        """
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"ByteTokenizer.word_ids: input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(
                f"ByteTokenizer.word_ids: input_ids must be an integer tensor (B, T), got shape "
                f"{tuple(input_ids.shape)} and dtype {input_ids.dtype}"
            )
        ids = input_ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab.size):
            raise ValueError(
                f"ByteTokenizer.word_ids: input_ids must lie in [0, {self.vocab.size}), "
                f"got values from {int(ids.min())} to {int(ids.max())}"
            )
        in_word = self._in_word.to(ids.device)[ids]  # (B, T)
        return word_ids_from_starts(torch.zeros_like(in_word), in_word)  # a word = a maximal run of in-word bytes

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: bytes decoded as UTF-8 (``errors="replace"``), specials by name.

        >>> ByteTokenizer().decode([195, 169, ByteTokenizer.EOS, 255])
        'é[EOS]�'
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        parts = []
        for is_byte, run in groupby(ids, key=lambda i: 0 <= i < 256):
            run = list(run)
            if is_byte:
                parts.append(bytes(run).decode("utf-8", errors="replace"))
            else:
                for i in run:
                    if not 256 <= i < self.vocab.size:
                        raise ValueError(f"ByteTokenizer.decode: id {i!r} is outside [0, {self.vocab.size})")
                    parts.append(self.specials[i - 256])
        return "".join(parts)

    def save(self, directory: str | Path) -> None:
        """Write a marker file to ``directory`` (created if needed) for :func:`load_tokenizer`."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        marker = {
            "type": "byte",
            "vocab_size": self.vocab.size,
            "extra_special_tokens": list(self.extra_special_tokens),
        }
        (path / _MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- HF tokenizers


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` seen through the :class:`Tokenizer` protocol.

    ``encode`` and ``encode_words`` call the tokenizer with
    ``add_special_tokens=False`` (no post-processor specials). Word ids are
    the encoding's ``word_ids`` (its pre-tokenizer's words: for byte-level
    BPE a word keeps its leading space and punctuation is a word of its own;
    for BERT pre-tokenization whitespace is dropped and punctuation is a
    word), ``None`` becoming -1, renumbered 0, 1, 2, ... in order of
    appearance. ``decode`` keeps special tokens, rendered by name.

    >>> hf = train_tokenizer(["the cat sat on the mat.", "cats and hats"] * 10, "wordpiece", vocab_size=29)
    >>> ids, words = hf.encode_words("the cats.")
    >>> [hf.tokenizer.id_to_token(i) for i in ids], words
    (['the', 'cat', '##s', '.'], [0, 1, 1, 2])
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        tk = _require_tokenizers()
        if not isinstance(tokenizer, tk.Tokenizer):
            raise TypeError(f"HFTokenizer: tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer  # the wrapped HF tokenizer
        self.vocab = Vocab.from_tokenizer(tokenizer)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.tokenizer.model).__name__}, size={self.vocab.size})"

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """Load a ``tokenizer.json`` (HF tokenizers format)."""
        tk = _require_tokenizers()
        return cls(tk.Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode: text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_words(self, text: str) -> tuple[list[int], list[int]]:
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode_words: text must be a str, got {type(text).__name__}")
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        renumber: dict[int, int] = {}
        words = [-1 if w is None else renumber.setdefault(w, len(renumber)) for w in encoding.word_ids]
        return encoding.ids, words

    def decode(self, ids: Sequence[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> None:
        """Write ``directory/tokenizer.json`` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path / _HF_FILE))


def _checked_texts(texts: Iterable[str], seen: list[int]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"train_tokenizer: texts must hold str, item {i} is {type(text).__name__}")
        seen[0] += 1
        yield text


def _train_wordpiece(tk: Any, texts: Iterable[str], vocab_size: int, specials: list[str]) -> tokenizers.Tokenizer:
    """BERT-style WordPiece, trained deterministically.

    ``tokenizers.trainers.WordPieceTrainer`` is not deterministic (tokenizers
    issue #1794): it numbers the ``##x`` continuation symbols in hash-map
    order, and those numbers break ties between equally frequent merges. So
    the same algorithm (BPE merges over words whose non-initial characters
    are continuation symbols, then WordPiece's greedy longest-match encoding)
    is run through the deterministic ``BpeTrainer``, with each continuation
    character ``c`` spelled as a private-use character that stands for
    ``##c``; the alphabet is sorted by code point, so every id is fixed.
    """
    normalizer = tk.normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    seen = [0]
    for text in _checked_texts(texts, seen):
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    if seen[0] == 0:
        raise ValueError("train_tokenizer: texts is empty; need at least one text to train on")
    used = set().union(*counts) if counts else set()
    private = chain(range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))
    fresh = (chr(c) for c in private if chr(c) not in used)
    spelled = {c: next(fresh) for c in sorted({c for word in counts for c in word[1:]})}  # c -> stand-in for ##c
    meaning = {v: k for k, v in spelled.items()}

    def words() -> Iterator[str]:
        for word, n in sorted(counts.items()):
            marked = word[0] + "".join(spelled[c] for c in word[1:])
            for start in range(0, n, 1024):
                yield " ".join([marked] * min(1024, n - start))

    bpe = tk.Tokenizer(tk.models.BPE())
    bpe.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(words(), trainer=trainer)

    def unmark(token: str) -> str:
        text = "".join(meaning.get(c, c) for c in token)
        return "##" + text if token[0] in meaning else text

    vocab = {unmark(token): i for token, i in bpe.get_vocab().items()}
    tokenizer = tk.Tokenizer(tk.models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(specials)
    return tokenizer


def train_tokenizer(
    texts: Iterable[str], kind: Literal["bpe", "wordpiece"], vocab_size: int, extra_special_tokens: Sequence[str] = ()
) -> HFTokenizer:
    """Train a tokenizer on ``texts`` with the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK] [BOS] [EOS]`` (ids 0..6),
    then ``extra_special_tokens`` (ids 7, 8, ...: sentinels, paradigm or FIM tokens an objective needs).

    - ``"bpe"``: byte-level BPE (GPT-2 style: ``ByteLevel`` pre-tokenizer and
      decoder, all 256 bytes in the alphabet, so no text is ever unknown).
      ``vocab_size`` must be at least 263 (7 specials + 256 bytes).
    - ``"wordpiece"``: BERT-style WordPiece (``BertNormalizer`` without
      lower-casing or accent stripping, ``BertPreTokenizer``, ``##``
      continuation prefix, ``WordPiece`` decoder). Words with a character not
      seen in training become ``[UNK]``.

    Training is deterministic: the same texts give the same tokenizer (for
    WordPiece this takes a detour around a non-deterministic HF trainer, see
    ``_train_wordpiece``).
    ``vocab_size`` is an upper bound (a small corpus may give fewer merges).
    """
    tk = _require_tokenizers()
    check_choice(kind, "train_tokenizer: kind", ("bpe", "wordpiece"))
    specials = list(dict.fromkeys((*SPECIAL_TOKENS, *extra_special_tokens)))
    minimum = len(specials) + (256 if kind == "bpe" else 1)
    check_int(vocab_size, f"train_tokenizer: vocab_size for {kind!r}", low=minimum)
    if isinstance(texts, str):
        raise TypeError("train_tokenizer: texts must be an iterable of str, got a single str")
    if kind == "bpe":
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        return _reached(HFTokenizer(_train_wordpiece(tk, texts, vocab_size, specials)), kind, vocab_size)
    seen = [0]
    tokenizer.train_from_iterator(_checked_texts(texts, seen), trainer=trainer)
    if seen[0] == 0:
        raise ValueError("train_tokenizer: texts is empty; need at least one text to train on")
    return _reached(HFTokenizer(tokenizer), kind, vocab_size)


def _reached(tok: HFTokenizer, kind: str, asked: int) -> HFTokenizer:
    """Refuse a vocabulary larger than asked (the alphabet alone exceeds it); warn when the corpus gave fewer."""
    got = tok.vocab.size
    if got > asked:
        raise ValueError(
            f"train_tokenizer: {kind}:{asked} cannot be honoured: the special tokens and the corpus's alphabet "
            f"alone make {got} tokens; ask for at least {got}"
        )
    if got < asked:
        warnings.warn(
            f"train_tokenizer: asked for {kind}:{asked}, the corpus gives {got} tokens (no more merges to make); "
            f"training with {got}",
            stacklevel=3,
        )
    return tok


# --------------------------------------------------------------------------- specs

_TRAIN_SPEC = re.compile(r"^(bpe|wordpiece):(\d+)$")
_FORMS = (
    "'byte'; 'bpe:N' or 'wordpiece:N' (train a vocabulary of N tokens on texts); "
    "a tokenizer.json file; or a directory holding tokenizer.json or saved by ByteTokenizer.save"
)


def _with_specials(tok: Tokenizer, extra_special_tokens: Sequence[str]) -> Tokenizer:
    """``tok`` with every token of ``extra_special_tokens`` (added at the end of the vocabulary where missing)."""
    if isinstance(tok, ByteTokenizer):
        missing = [t for t in extra_special_tokens if t not in tok.specials]
        return ByteTokenizer((*tok.extra_special_tokens, *missing)) if missing else tok
    missing = [t for t in extra_special_tokens if tok.tokenizer.token_to_id(t) is None]  # type: ignore[attr-defined]
    if missing:
        tok.tokenizer.add_special_tokens(missing)  # type: ignore[attr-defined]
        tok = HFTokenizer(tok.tokenizer)  # type: ignore[attr-defined]
    return tok


def load_tokenizer(
    spec: str | Path, texts: Iterable[str] | None = None, extra_special_tokens: Sequence[str] = ()
) -> Tokenizer:
    """Build a tokenizer from a short spec.

    - ``"byte"``: :class:`ByteTokenizer` (no dependency).
    - ``"bpe:N"`` / ``"wordpiece:N"``: :func:`train_tokenizer` on ``texts``
      (required) with ``vocab_size=N``.
    - a path to a ``tokenizer.json`` file, or to a directory that holds one
      (e.g. a saved HF model directory) → :class:`HFTokenizer`.
    - a directory written by ``ByteTokenizer.save`` → :class:`ByteTokenizer`.

    Anything else raises ``ValueError`` listing these forms. The tokenizer
    has every token of ``extra_special_tokens`` (the special tokens an
    objective needs, e.g. span corruption's sentinels): a loaded one that
    lacks some gets them appended to its vocabulary.

    >>> load_tokenizer("byte").vocab.eos_id
    262
    >>> load_tokenizer("byte", extra_special_tokens=["[NLU]"]).vocab.nlu_id
    263
    """
    if isinstance(extra_special_tokens, str):
        raise TypeError(
            f"load_tokenizer: extra_special_tokens must be a sequence of str, got the str {extra_special_tokens!r}"
        )
    if spec == "byte":
        return ByteTokenizer(extra_special_tokens)
    if isinstance(spec, str) and (match := _TRAIN_SPEC.match(spec)):
        if texts is None:
            raise ValueError(f"load_tokenizer: spec {spec!r} trains a tokenizer and needs texts, got texts=None")
        return train_tokenizer(texts, match.group(1), int(match.group(2)), extra_special_tokens)  # type: ignore[arg-type]
    return _with_specials(_load_saved(spec), extra_special_tokens)


def _load_saved(spec: str | Path) -> Tokenizer:
    """A tokenizer from a path (see :func:`load_tokenizer`)."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"load_tokenizer: spec must be a str, got {type(spec).__name__}; expected {_FORMS}")
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return HFTokenizer.from_file(path)
    if path.is_dir():
        marker = path / _MARKER
        if marker.is_file():
            try:
                saved = json.loads(marker.read_text(encoding="utf-8"))
                kind = saved.get("type")
            except (json.JSONDecodeError, AttributeError):
                kind = None
            if kind != "byte":
                raise ValueError(f"load_tokenizer: {str(marker)!r} does not describe a known tokenizer (type {kind!r})")
            return ByteTokenizer(saved.get("extra_special_tokens", ()))
        if (path / _HF_FILE).is_file():
            return HFTokenizer.from_file(path / _HF_FILE)
        raise ValueError(
            f"load_tokenizer: directory {str(path)!r} holds no {_HF_FILE} nor {_MARKER}; expected {_FORMS}"
        )
    raise ValueError(f"load_tokenizer: unknown spec {str(spec)!r}; expected {_FORMS}")
