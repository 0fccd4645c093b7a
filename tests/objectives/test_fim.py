import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab
from lmobjectives.constants import FIM_TOKENS
from lmobjectives.data.packing import pack_documents
from lmobjectives.data.tokenizers import ByteTokenizer, HFTokenizer, train_tokenizer
from lmobjectives.objectives.clm import CausalLM
from lmobjectives.objectives.fim import FillInTheMiddle, fim_reassemble
from lmobjectives.recipes.recipe import Recipe, options_of

TOK = ByteTokenizer()
EOS, PRE, MID, SUF, PAD = 262, 263, 264, 265, 256
# the ByteTokenizer's ids plus the three FIM tokens after them (ByteTokenizer(extra_special_tokens=...) order)
V = Vocab(size=266, pad_id=PAD, eos_id=EOS, fim_prefix_id=PRE, fim_middle_id=MID, fim_suffix_id=SUF)
T_, F_ = True, False


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def real_tokens(batch) -> list[int]:
    """The real tokens of all rows, in order (document level: the transformed stream)."""
    return batch.input_ids[batch.attention_mask].tolist()


def split_at(ids: list[int], markers: tuple[int, ...]) -> list[list[int]]:
    """``ids`` split at every marker: the pieces between them (the last one not followed by a marker, possibly empty)."""
    out, cur = [], []
    for i in ids:
        if i in markers:
            out.append(cur)
            cur = []
        else:
            cur.append(i)
    out.append(cur)
    return out


def split_eos(ids: list[int], eos: int = EOS) -> list[list[int]]:
    """``ids`` split at EOS: the fragments (the last one not followed by EOS, possibly empty)."""
    return split_at(ids, (eos,))


def byte_stream(texts: list[str]) -> list[int]:
    return [i for t in texts for i in (*TOK.encode(t), EOS)]


# ---------------------------------------------------------------- worked example


@pytest.mark.parametrize("level", ["context", "document"])
def test_docstring_example(level):
    fim = FillInTheMiddle(V, fim_rate=1.0, seq_len=16, level=level)
    b = fim(["hello", "abc"], tokenizer=TOK, generator=gen(216))
    # <PRE> h <SUF> l o <MID> e l EOS | <PRE> <SUF> c <MID> a b EOS
    assert b.input_ids.tolist() == [[263, 104, 265, 108, 111, 264, 101, 108, 262, 263, 265, 99, 264, 97, 98, 262]]
    assert b.labels.tolist() == [[104, 265, 108, 111, 264, 101, 108, 262, 263, 265, 99, 264, 97, 98, 262, -100]]
    assert b.attention_mask.all() and b.causal is True
    assert fim_reassemble(b.input_ids[0], V) == byte_stream(["hello", "abc"])


def test_reassemble_example():
    v = Vocab(size=10, eos_id=2, fim_prefix_id=7, fim_middle_id=8, fim_suffix_id=9)
    assert fim_reassemble([7, 3, 9, 5, 8, 4, 2, 7, 9, 6, 8, 3, 4, 2], v) == [3, 4, 5, 2, 3, 4, 6, 2]
    assert fim_reassemble([3, 4, 2, 5], v) == [3, 4, 2, 5]  # no FIM: unchanged
    assert fim_reassemble(torch.tensor([7, 9, 8, 2]), v) == [2]  # empty document
    with pytest.raises(ValueError, match="not one <PRE>"):
        fim_reassemble([7, 3, 9, 5], v)
    with pytest.raises(ValueError, match="<MID> before <SUF>"):
        fim_reassemble([7, 3, 8, 5, 9], v)


# ---------------------------------------------------------------- layout and labels


@pytest.mark.parametrize("level", ["context", "document"])
def test_labels_are_causal_lm_of_the_rows(level):
    texts = ["the quick brown fox", "jumps", "over the lazy dog!", "x", "héllo wörld ✓"]
    b = FillInTheMiddle(V, seq_len=12, level=level)(texts, tokenizer=TOK, generator=gen(3))
    ref = CausalLM(V)(b.input_ids, attention_mask=b.attention_mask)
    assert torch.equal(b.labels, ref.labels)
    assert b.input_ids.shape[1] == 12 and b.causal is True and b.prefix_mask is None
    # padding only at the end of the last row, filled with pad_id, never a target
    real = b.attention_mask.flatten()
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any()
    assert (b.input_ids.flatten()[n:] == PAD).all()
    assert (b.labels.flatten()[n - 1 :] == IGNORE_INDEX).all()


def test_padding_falls_back_to_eos_without_pad_id():
    v = dataclasses.replace(V, pad_id=None)
    b = FillInTheMiddle(v, fim_rate=0.0, seq_len=8)(["abc"], tokenizer=TOK)
    assert b.input_ids.tolist() == [[97, 98, 99, EOS, EOS, EOS, EOS, EOS]]
    assert b.attention_mask.tolist() == [[T_, T_, T_, T_, F_, F_, F_, F_]]
    assert b.labels.tolist() == [[98, 99, EOS, -100, -100, -100, -100, -100]]


@pytest.mark.parametrize("level", ["context", "document"])
def test_fim_rate_zero_is_plain_packing(level):
    texts = ["first document", "é日本", "third one here, a little longer than the rest"]
    b = FillInTheMiddle(V, fim_rate=0.0, seq_len=8, level=level)(texts, tokenizer=TOK, generator=gen(0))
    packed = pack_documents([TOK.encode(t) for t in texts], 8, EOS, pad_id=PAD)
    assert torch.equal(b.input_ids, packed.input_ids)
    assert torch.equal(b.attention_mask, packed.attention_mask)


def test_document_level_pieces_are_sentinel_separated():
    # fim_rate=1, spm_rate=0: every document is PSM: <PRE> p <SUF> s <MID> m EOS with p + m + s = the text
    texts = ["abcdef", "gh", "ijklmnop"]
    fim = FillInTheMiddle(V, fim_rate=1.0, spm_rate=0.0, seq_len=7, level="document")
    b = fim(texts, tokenizer=TOK, generator=gen(5))
    fragments = split_eos(real_tokens(b))
    assert fragments[-1] == [] and len(fragments) == 4
    for text, frag in zip(texts, fragments):
        assert frag[0] == PRE and frag.count(SUF) == 1 and frag.count(MID) == 1
        assert frag.index(SUF) < frag.index(MID)
        assert len(frag) == len(text) + 3
    assert b.input_ids.shape == (4, 7)  # 16 characters + 3 x 3 sentinels + 3 EOS = 28 tokens


# ---------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6),
    fim_rate=st.sampled_from([0.0, 0.5, 1.0]),
    spm_rate=st.sampled_from([0.0, 0.5, 1.0]),
    seq_len=st.integers(2, 40),
    seed=st.integers(0, 2**31),
)
def test_document_level_round_trip_is_exact(texts, fim_rate, spm_rate, seq_len, seed):
    fim = FillInTheMiddle(V, fim_rate=fim_rate, spm_rate=spm_rate, seq_len=seq_len, level="document")
    b = fim(texts, tokenizer=TOK, generator=gen(seed))
    stream = real_tokens(b)
    assert fim_reassemble(stream, V) == byte_stream(texts)
    # cuts are between characters: every piece is valid UTF-8 on its own
    for frag in split_eos(stream):
        for piece in _pieces(frag):
            bytes(piece).decode("utf-8")  # raises on a cut inside a character


def _pieces(fragment: list[int]) -> list[list[int]]:
    """A fragment split at the sentinels."""
    return split_at(fragment, (PRE, MID, SUF))


def test_round_trip_over_many_draws():
    texts = ["def f(x):\n    return x + 1\n", "naïve café — ✓ 日本語", "a", "xy"]
    fim = FillInTheMiddle(V, fim_rate=0.9, seq_len=64, level="document")
    for seed in range(100):
        b = fim(texts, tokenizer=TOK, generator=gen(seed))
        assert fim_reassemble(real_tokens(b), V) == byte_stream(texts)


def _char_of_byte(data: bytes) -> list[int]:
    """Per byte, the index of the character it belongs to (count of UTF-8 lead bytes up to it, minus one)."""
    return [sum(1 for b in data[: i + 1] if b & 0xC0 != 0x80) - 1 for i in range(len(data))]


def _context_fragments(texts: list[str], seq_len: int) -> list[list[tuple[list[int], str]]]:
    """Reference for context level, written plainly: per row, per EOS-separated group of the packed row,
    its raw tokens and the text FIM cuts (start of the character of its first byte .. of the next group's)."""
    stream, where = [], []  # where: (document, byte index) of each stream place, None at EOS
    for d, text in enumerate(texts):
        data = text.encode("utf-8")
        stream += [*data, EOS]
        where += [(d, k) for k in range(len(data))] + [None]
    rows = []
    for r in range(0, len(stream), seq_len):
        groups, cur = [], []
        for place in range(r, min(r + seq_len, len(stream))):
            if where[place] is None:
                groups.append(cur)
                cur = []
            else:
                cur.append(place)
        groups.append(cur)
        row = []
        for g in groups:
            if not g:
                row.append(([], ""))
                continue
            d, k = where[g[0]]
            text, m = texts[d], where[g[-1]][1] + 1
            data = text.encode("utf-8")
            chars = _char_of_byte(data)
            lo = 0 if k == 0 else chars[k]
            hi = len(text) if m == len(data) else chars[m]
            row.append(([stream[p] for p in g], text[lo:hi]))
        rows.append(row)
    return rows


def _check_context_rows(b, texts: list[str], seq_len: int) -> int:
    """Every complete FIM fragment of every row gives its reference text back; plain fragments are the raw
    tokens; rows other than the last are full. Returns the number of complete FIM fragments seen."""
    reference = _context_fragments(texts, seq_len)
    assert b.input_ids.shape == (len(reference), seq_len)
    assert len(reference) == math.ceil(len(byte_stream(texts)) / seq_len)
    complete = 0
    for r, expected in enumerate(reference):
        row = b.input_ids[r][b.attention_mask[r]].tolist()
        if r < len(reference) - 1:
            assert len(row) == seq_len  # bytes: a row only grows, and is truncated back to seq_len
        groups = split_eos(row)
        assert len(groups) <= len(expected)
        for group, (raw, text) in zip(groups[:-1], expected):  # followed by EOS: complete
            if group[:1] == [PRE]:
                assert bytes(fim_reassemble(group, V)).decode("utf-8") == text
                complete += 1
            else:
                assert group == raw
        last, (raw, _) = groups[-1], expected[len(groups) - 1]
        if last[:1] != [PRE]:
            assert last == raw[: len(last)]
    return complete


@pytest.mark.parametrize(
    "texts",
    [
        ["the quick brown fox jumps", "over", "the lazy dog and keeps running far away"],
        ["é日本語のテキスト", "ab", "ünïcödé ✓✓✓ text"],  # characters split between rows
    ],
)
def test_context_level_fragments_round_trip(texts):
    fim = FillInTheMiddle(V, fim_rate=0.8, seq_len=16)
    complete = sum(_check_context_rows(fim(texts, tokenizer=TOK, generator=gen(s)), texts, 16) for s in range(30))
    assert complete >= 30, complete


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5),
    fim_rate=st.sampled_from([0.0, 0.5, 1.0]),
    seq_len=st.integers(2, 24),
    seed=st.integers(0, 2**31),
)
def test_context_level_rows_property(texts, fim_rate, seq_len, seed):
    b = FillInTheMiddle(V, fim_rate=fim_rate, seq_len=seq_len)(texts, tokenizer=TOK, generator=gen(seed))
    _check_context_rows(b, texts, seq_len)
    assert torch.equal(b.labels, CausalLM(V)(b.input_ids, attention_mask=b.attention_mask).labels)


def test_context_level_truncates_a_grown_row_at_its_end():
    # one row of 8 raw tokens; FIM adds 3 sentinels: the row keeps its first 8 tokens, the last 3 are dropped
    b = FillInTheMiddle(V, fim_rate=1.0, spm_rate=0.0, seq_len=8)(["abcdefg"], tokenizer=TOK, generator=gen(0))
    row = b.input_ids[0].tolist()
    assert b.input_ids.shape == (1, 8) and b.attention_mask.all()
    assert row[0] == PRE and EOS not in row
    full = FillInTheMiddle(V, fim_rate=1.0, spm_rate=0.0, seq_len=11, level="document")
    # the same draw at document level (one unit, same four uniforms) untruncated: the row is its first 8 tokens
    assert full(["abcdefg"], tokenizer=TOK, generator=gen(0)).input_ids[0, :8].tolist() == row


def test_context_level_split_character_goes_to_the_later_row():
    # "aé" + EOS with seq_len 2: row 0 = a, 0xC3 ; row 1 = 0xA9, EOS. 'é' belongs to row 1's fragment
    b = FillInTheMiddle(V, fim_rate=1.0, spm_rate=0.0, seq_len=2)(["aé"], tokenizer=TOK, generator=gen(0))
    assert [[text for _, text in row] for row in _context_fragments(["aé"], 2)] == [["a"], ["é", ""]]
    # row 0: <PRE> + 'a' pieces truncated to 2 tokens; row 1: fragment 'é' (2 bytes) FIM'd then truncated
    assert b.input_ids[0, 0].item() == PRE and b.input_ids[1, 0].item() == PRE


def _hf():
    """A byte-level BPE with the FIM tokens added as special tokens; Vocab.from_tokenizer finds their ids."""
    texts = ["the cat sat on the mat.", "naïve café ✓ 日本", "def f(x): return x + 1"] * 5
    raw = train_tokenizer(texts, "bpe", vocab_size=300).tokenizer
    raw.add_special_tokens(list(FIM_TOKENS.values()))
    hf = HFTokenizer(raw)
    assert None not in (hf.vocab.fim_prefix_id, hf.vocab.fim_middle_id, hf.vocab.fim_suffix_id)
    return hf, hf.vocab


def test_byte_tokenizer_with_fim_tokens():
    try:
        tok = ByteTokenizer(extra_special_tokens=tuple(FIM_TOKENS.values()))  # type: ignore[call-arg]
    except TypeError:
        pytest.skip("ByteTokenizer has no extra_special_tokens yet")
    assert tok.vocab == dataclasses.replace(V, mask_id=260, cls_id=258, sep_id=259, bos_id=261, unk_id=257)
    b = FillInTheMiddle(tok.vocab, fim_rate=1.0, seq_len=16)(["hello", "abc"], tokenizer=tok, generator=gen(216))
    assert tok.decode(b.input_ids[0]) == (
        "<|fim_prefix|>h<|fim_suffix|>lo<|fim_middle|>el[EOS]<|fim_prefix|><|fim_suffix|>c<|fim_middle|>ab[EOS]"
    )


def test_hf_tokenizer_round_trip_by_decoding():
    hf, vocab = _hf()
    texts = ["the cat sat on the mat.", "naïve café ✓ 日本", "def f(x): return x + 1", "mat"]
    for level in ("document", "context"):
        fim = FillInTheMiddle(vocab, fim_rate=1.0, seq_len=200, level=level)  # one row, nothing truncated
        for seed in range(20):
            b = fim(texts, tokenizer=hf, generator=gen(seed))
            stream = b.input_ids[b.attention_mask].tolist()
            fragments = split_eos(stream, vocab.eos_id)[:-1]
            assert len(fragments) == len(texts)
            for text, frag in zip(texts, fragments):
                assert frag[0] == vocab.fim_prefix_id
                assert hf.decode(fim_reassemble(frag, vocab)) == text


def test_hf_tokenizer_context_fragments_are_character_ranges():
    hf, vocab = _hf()
    texts = ["the cat sat on the mat.", "naïve café ✓ 日本", "def f(x): return x + 1"]
    seen = 0
    for seed in range(10):
        b = FillInTheMiddle(vocab, fim_rate=1.0, seq_len=6)(texts, tokenizer=hf, generator=gen(seed))
        for row, real in zip(b.input_ids, b.attention_mask):
            for frag in split_eos(row[real].tolist(), vocab.eos_id)[:-1]:  # complete: followed by EOS
                if frag[:1] == [vocab.fim_prefix_id]:
                    piece = hf.decode(fim_reassemble(frag, vocab))
                    assert piece and any(piece in t for t in texts), piece
                    seen += 1
    assert seen > 0


def test_hf_tokenizer_context_level_without_fim_is_plain_packing():
    hf, vocab = _hf()
    texts = ["the cat sat on the mat.", "naïve café ✓ 日本", "def f(x): return x + 1"]
    b = FillInTheMiddle(vocab, fim_rate=0.0, seq_len=7)(texts, tokenizer=hf, generator=gen(0))
    packed = pack_documents([hf.encode(t) for t in texts], 7, vocab.eos_id, pad_id=vocab.pad_id)
    assert torch.equal(b.input_ids, packed.input_ids)


# ---------------------------------------------------------------- statistics


def _fragments_of(b) -> list[list[int]]:
    return [f for f in split_eos(real_tokens(b)) if f]


@pytest.mark.parametrize("level", ["context", "document"])
@pytest.mark.parametrize("fim_rate", [0.5, 0.9])
def test_fim_rate(level, fim_rate):
    texts = ["abcdefgh"] * 3000
    # context level: one row per document (9 raw tokens); a FIM row is truncated, but it starts with <PRE>
    b = FillInTheMiddle(V, fim_rate=fim_rate, seq_len=9, level=level)(texts, tokenizer=TOK, generator=gen(1))
    frags = _fragments_of(b) if level == "document" else [row[:1] for row in b.input_ids.tolist()]
    n = len(texts)
    assert len(frags) == n
    hits = sum(1 for f in frags if f[0] == PRE)
    sd = math.sqrt(n * fim_rate * (1 - fim_rate))
    assert abs(hits - n * fim_rate) < 5 * sd, (hits, n * fim_rate, sd)


@pytest.mark.parametrize("spm_rate", [0.0, 0.3, 1.0])
def test_spm_rate(spm_rate):
    # "<PRE> <SUF>" starts every SPM example and the PSM examples with an empty prefix (cut point 0 drawn):
    # P = spm + (1 - spm) * P(lower cut = 0), P(lower cut = 0) = 1 - (n / (n + 1))^2 for n characters
    n_chars, D = 4, 4000
    fim = FillInTheMiddle(V, fim_rate=1.0, spm_rate=spm_rate, seq_len=64, level="document")
    frags = _fragments_of(fim(["abcd"] * D, tokenizer=TOK, generator=gen(2)))
    assert len(frags) == D and all(f[0] == PRE for f in frags)
    hits = sum(1 for f in frags if f[1] == SUF)
    p = spm_rate + (1 - spm_rate) * (1 - (n_chars / (n_chars + 1)) ** 2)
    sd = math.sqrt(D * p * (1 - p))
    assert abs(hits - D * p) <= 5 * sd + 1e-9, (hits, D * p, sd)


def _chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    stat = ((observed - expected) ** 2 / expected).sum()
    dof = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat.double() / 2))


@pytest.mark.parametrize("text", ["abcde", "é日b✓"])  # 5 characters of 1 byte; 4 characters of 2, 3, 1, 3 bytes
def test_cut_points_are_uniform_over_characters(text):
    # two independent uniform cut points in 0..n, sorted: P(lo, hi) = 2 / (n+1)^2 if lo < hi, 1 / (n+1)^2 if equal
    n, D = len(text), 6000
    fim = FillInTheMiddle(V, fim_rate=1.0, spm_rate=0.0, seq_len=1024, level="document")
    frags = _fragments_of(fim([text] * D, tokenizer=TOK, generator=gen(7)))
    counts = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for f in frags:
        prefix, suffix, middle = _pieces(f)[1:]
        lo = len(bytes(prefix).decode("utf-8"))  # characters, not bytes
        hi = lo + len(bytes(middle).decode("utf-8"))
        assert text[:lo].encode() == bytes(prefix) and text[hi:].encode() == bytes(suffix)
        counts[lo, hi] += 1
    i, j = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    p = torch.where(i < j, 2.0, torch.where(i == j, 1.0, 0.0)).double() / (n + 1) ** 2
    upper = i <= j
    assert counts[~upper].sum() == 0
    assert _chi_square_p_value(counts[upper], D * p[upper]) > 1e-4


# ---------------------------------------------------------------- purity, determinism


def test_seeded_and_pure():
    texts = ["some text here", "and more text"]
    before = list(texts)
    fim = FillInTheMiddle(V, seq_len=16)
    a = fim(texts, tokenizer=TOK, generator=gen(11))
    b = fim(texts, tokenizer=TOK, generator=gen(11))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert texts == before
    outs = {tuple(fim(texts, tokenizer=TOK, generator=gen(s)).input_ids.flatten().tolist()) for s in range(10)}
    assert len(outs) > 1
    torch.manual_seed(0)
    fim(texts, tokenizer=TOK)  # generator=None: torch's default generator


class _EncodeOnly:
    """A tokenizer with nothing but encode (bytes, like ByteTokenizer)."""

    def encode(self, text):
        return list(text.encode("utf-8"))


class _WithOffsets(_EncodeOnly):
    def encode_offsets(self, text):
        return ByteTokenizer().encode(text), [
            sum(1 for b in text.encode()[: i + 1] if b & 0xC0 != 0x80) - 1 for i in range(len(text.encode()))
        ]


def test_other_tokenizers():
    texts = ["héllo", "abc"]
    doc = FillInTheMiddle(V, seq_len=16, level="document")
    expected = doc(texts, tokenizer=TOK, generator=gen(1)).input_ids
    assert torch.equal(doc(texts, tokenizer=_EncodeOnly(), generator=gen(1)).input_ids, expected)
    ctx = FillInTheMiddle(V, seq_len=4)
    with pytest.raises(TypeError, match="level='document'"):
        ctx(texts, tokenizer=_EncodeOnly())
    expected = ctx(texts, tokenizer=TOK, generator=gen(1)).input_ids
    assert torch.equal(ctx(texts, tokenizer=_WithOffsets(), generator=gen(1)).input_ids, expected)

    class _BadOffsets(_EncodeOnly):
        def encode_offsets(self, text):
            return self.encode(text), [0]

    with pytest.raises(ValueError, match=r"5 tokens but 1 character offsets for texts\[0\]"):
        ctx(["abcde"], tokenizer=_BadOffsets())


# ---------------------------------------------------------------- errors


def test_bad_options():
    with pytest.raises(ValueError, match=r"Vocab.fim_prefix_id, Vocab.fim_middle_id, Vocab.fim_suffix_id"):
        FillInTheMiddle(Vocab(size=266, eos_id=EOS))
    with pytest.raises(ValueError, match=r"Vocab.eos_id"):
        FillInTheMiddle(dataclasses.replace(V, eos_id=None))
    with pytest.raises(ValueError, match="distinct"):
        FillInTheMiddle(dataclasses.replace(V, fim_middle_id=PRE))
    with pytest.raises(TypeError, match="vocab"):
        FillInTheMiddle("vocab")  # type: ignore[arg-type]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"fim_rate .*{bad}"):
            FillInTheMiddle(V, fim_rate=bad)
        with pytest.raises(ValueError, match=rf"spm_rate .*{bad}"):
            FillInTheMiddle(V, spm_rate=bad)
    with pytest.raises(TypeError, match="fim_rate"):
        FillInTheMiddle(V, fim_rate=float("nan"))
    for bad in (0, 1):
        with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
            FillInTheMiddle(V, seq_len=bad)
    for bad in (2.5, True):  # a float or a bool is the wrong type, not a wrong value
        with pytest.raises(TypeError, match="seq_len must be an int"):
            FillInTheMiddle(V, seq_len=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level .*'doc'"):
        FillInTheMiddle(V, level="doc")


def test_bad_input():
    fim = FillInTheMiddle(V, seq_len=8)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        fim(["abc", ""], tokenizer=TOK)
    with pytest.raises(ValueError, match="texts is empty"):
        fim([], tokenizer=TOK)
    with pytest.raises(TypeError, match="texts must be a list of str"):
        fim("abc", tokenizer=TOK)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str"):
        fim([b"abc"], tokenizer=TOK)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tokenizer must have encode"):
        fim(["abc"], tokenizer="byte")
    with pytest.raises(TypeError, match="generator"):
        fim(["abc"], tokenizer=TOK, generator=0)  # type: ignore[arg-type]
    small = Vocab(size=100, eos_id=96, fim_prefix_id=97, fim_middle_id=98, fim_suffix_id=99)
    for level in ("context", "document"):
        with pytest.raises(ValueError, match=r"id 1\d\d, outside \[0, 100\)"):
            FillInTheMiddle(small, seq_len=8, level=level)(["xyz"], tokenizer=TOK)


def test_options_for_the_cli():
    recipe = Recipe(FillInTheMiddle, "fill-in-the-middle", data="documents", length_option="seq_len")
    options = {o.name: o for o in options_of(recipe)}
    assert list(options) == ["fim_rate", "spm_rate", "level"]
    assert options["fim_rate"].default == 0.5 and options["spm_rate"].default == 0.5
    assert options["level"].default == "context"
    assert all(o.help for o in options.values())
