import functools
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d
from lmobjectives.objectives.plm import PermutationLM

# pad 0, CLS 1, SEP 2, MASK 3; ordinary ids 4..9
V = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
SPECIAL = set(V.special_ids)
T, F_ = True, False


# --------------------------------------------------------------------------- reference
def protocol_draws(g: torch.Generator, B: int, L: int, p: float, m: int):
    """The documented draw protocol, written out independently of the module."""
    K = math.ceil(L / int(1 / p))
    span = torch.randint(1, m + 1, (B, K), generator=g)
    u = torch.rand(B, K, generator=g, dtype=torch.float64)
    sigma = torch.rand(B, L // 2, generator=g, dtype=torch.float64).argsort(dim=-1, stable=True)
    return span, u, sigma


def windows_used(span_row, p: float, L: int) -> int:
    """How many windows a row walks through before cur_len reaches L."""
    cur = k = 0
    while cur < L:
        cur += int(int(span_row[k]) / p)
        k += 1
    return k


def reference_row(ids, real, p, span_row, u_row, sigma_row):
    """HF's torch_mask_tokens for one row, as a plain loop, on pre-drawn values."""
    L = len(ids)
    selected = [False] * L
    cur, k = 0, 0
    while cur < L:
        s = int(span_row[k])
        c = int(s / p)
        start = cur + int(float(u_row[k]) * (c - s + 1))
        for t in range(start, min(start + s, L)):
            selected[t] = True
        cur += c
        k += 1
    functional = [(i in SPECIAL) or not r for i, r in zip(ids, real)]
    target = [sel and not f for sel, f in zip(selected, functional)]
    # the factorisation order as HF builds it, with sigma as its randperm
    perm_index = torch.arange(L).reshape(-1, L // 2).transpose(0, 1)
    perm_index = perm_index[sigma_row]
    perm_index = perm_index.transpose(0, 1).flatten().tolist()
    rank = [-1 if (not tg and not f) else r for r, tg, f in zip(perm_index, target, functional)]
    perm = [[rank[i] <= rank[j] and target[j] for j in range(L)] for i in range(L)]
    inputs = [V.mask_id if tg else i for i, tg in zip(ids, target)]
    labels = [i if tg else IGNORE_INDEX for i, tg in zip(ids, target)]
    return inputs, labels, perm


def reference(obj: PermutationLM, x: torch.Tensor, real: torch.Tensor, seed: int):
    """Per-example reference on the same draws, redrawing while the batch has no target."""
    g = torch.Generator().manual_seed(seed)
    B, L = x.shape
    while True:
        span, u, sigma = protocol_draws(g, B, L, obj.plm_probability, obj.max_span_length)
        rows = [
            reference_row(x[b].tolist(), real[b].tolist(), obj.plm_probability, span[b], u[b], sigma[b])
            for b in range(B)
        ]
        if any(lab != IGNORE_INDEX for _, labels, _ in rows for lab in labels):
            break
    inputs = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    perm = torch.tensor([r[2] for r in rows], dtype=torch.bool)
    return inputs, labels, perm, (span, u, sigma)


def run(obj, x, seed, attention_mask=None):
    return obj(x, attention_mask=attention_mask, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- worked example
X = torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0]])


def test_docstring_example():
    b = run(PermutationLM(V), X, 3)
    assert b.input_ids.tolist() == [[1, 5, 6, 3, 3, 9, 2, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, 7, 8, -100, -100, -100]]
    assert b.attention_mask.tolist() == [[T, T, T, T, T, T, T, F_]]
    assert b.causal is False
    assert b.perm_mask.dtype == torch.bool
    assert b.perm_mask[0].int().tolist() == [
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert b.target_mapping.dtype == torch.float32
    assert torch.equal(b.target_mapping[0], torch.eye(8))
    assert b.has_targets.tolist() == [True]
    # the draws the docstring quotes
    span, u, sigma = protocol_draws(torch.Generator().manual_seed(3), 1, 8, 1 / 6, 5)
    assert span.tolist() == [[2, 4]] and sigma.tolist() == [[0, 3, 2, 1]]
    assert [round(v, 4) for v in u[0].tolist()] == [0.2867, 0.7729]


def test_docstring_example_attention():
    b = run(PermutationLM(V), X, 3)
    content = attention_mask_4d(b)[0, 0]
    assert content[3:5].int().tolist() == [[1, 1, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0]]
    # attention_mask_4d = content stream: perm_mask applied, then every query sees itself
    expected = (b.attention_mask[:, None, :] & ~b.perm_mask) | torch.eye(8, dtype=torch.bool)
    assert torch.equal(attention_mask_4d(b)[:, 0], expected)
    # the query stream (perm_mask as it is): a target never sees itself
    query = b.attention_mask[:, None, :] & ~b.perm_mask
    assert query[0, 3, 3].item() is False and query[0, 4, 4].item() is False
    assert query[0, 1, 1].item() is True  # an ordinary non-target token sees itself


# --------------------------------------------------------------------------- equality with the reference
@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    L = 2 * draw(st.integers(1, 20))
    ids = draw(st.lists(st.lists(st.integers(0, 9), min_size=L, max_size=L), min_size=B, max_size=B))
    x = torch.tensor(ids)
    x[x == 0] = 4  # padding only as a trailing run (below)
    for b in range(B):
        n_pad = draw(st.integers(0, L))
        if n_pad:
            x[b, L - n_pad :] = 0
    explicit = draw(st.booleans())
    real = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=L, max_size=L), min_size=B, max_size=B)))
    return x, (real if explicit else None)


@settings(max_examples=150, deadline=None)
@given(
    batch=batches(),
    p=st.sampled_from([1 / 6, 0.15, 0.2, 1 / 3, 0.5, 0.7, 1.0]),
    m=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_equals_per_example_reference(batch, p, m, seed):
    x, real = batch
    obj = PermutationLM(V, plm_probability=p, max_span_length=m)
    real_used = (x != 0) if real is None else real  # pad 0 != eos: padding_mask is "not pad" here
    if not bool((real_used & ~V.special_mask()[x]).any()):
        with pytest.raises(ValueError, match="nothing to predict"):
            run(obj, x, seed, real)
        return
    b = run(obj, x, seed, real)
    inputs, labels, perm, _ = reference(obj, x, real_used, seed)
    assert torch.equal(b.input_ids, inputs)
    assert torch.equal(b.labels, labels)
    assert torch.equal(b.perm_mask, perm)
    assert torch.equal(b.attention_mask, real_used)
    assert torch.equal(b.has_targets, (labels != IGNORE_INDEX).any(-1))
    assert torch.equal(b.target_mapping, torch.eye(x.shape[1]).expand(x.shape[0], -1, -1))


def test_equals_hugging_face_on_the_same_draws(monkeypatch):
    """HF's own torch_mask_tokens, its torch.randint / torch.randperm fed the protocol's draws."""
    collator = pytest.importorskip("transformers.data.data_collator").DataCollatorForPermutationLanguageModeling
    g = torch.Generator().manual_seed(11)
    for trial in range(12):
        B, L = 3, 2 * int(torch.randint(1, 40, (), generator=g))
        x = torch.randint(4, 10, (B, L), generator=g)
        x[:, 0] = 1  # CLS
        x[1, L // 2] = 2  # a SEP inside
        x[2, L - L // 3 :] = 0  # padding
        p, m = [(1 / 6, 5), (0.15, 3), (1 / 3, 2), (0.5, 1)][trial % 4]
        obj = PermutationLM(V, plm_probability=p, max_span_length=m)
        seed = 100 + trial
        ours = run(obj, x, seed)
        *_, (span, u, sigma) = reference(obj, x, x != 0, seed)  # the draws of the attempt that was kept
        calls = []
        for b in range(B):
            for k in range(windows_used(span[b], p, L)):
                calls += [("span", int(span[b, k])), ("offset", float(u[b, k]))]
        perms = [sigma[b].clone() for b in range(B)]

        def randint(*args, **kwargs):
            kind, value = calls.pop(0)  # noqa: B023 (called inside this iteration)
            if kind == "span":
                assert args[:2] == (1, m + 1)  # noqa: B023 (called inside this iteration)
                return torch.tensor([value])
            n = args[0]  # torch.randint(context_length - span_length + 1, (1,))
            return torch.tensor([int(value * n)])

        def randperm(n, *args, **kwargs):
            assert n == L // 2  # noqa: B023 (called inside this iteration)
            return perms.pop(0)  # noqa: B023 (called inside this iteration)

        tok = SimpleNamespace(
            mask_token="[MASK]",
            mask_token_id=V.mask_id,
            pad_token="[PAD]",
            pad_token_id=V.pad_id,
            get_special_tokens_mask=lambda ids, already_has_special_tokens: [int(i in SPECIAL) for i in ids],
        )
        hf_self = SimpleNamespace(tokenizer=tok, plm_probability=p, max_span_length=m)
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randint", randint)
            patch.setattr(torch, "randperm", randperm)
            inputs, perm_mask, target_mapping, labels = collator.torch_mask_tokens(hf_self, x.clone())
        assert not calls and not perms  # HF consumed exactly the protocol's draws
        assert torch.equal(ours.input_ids, inputs)
        assert torch.equal(ours.labels, labels)
        assert torch.equal(ours.perm_mask, perm_mask.bool())
        assert torch.equal(ours.target_mapping, target_mapping)


# --------------------------------------------------------------------------- invariants
def check_invariants(x: torch.Tensor, real: torch.Tensor, b) -> None:
    B, L = x.shape
    target = b.labels != IGNORE_INDEX
    special = V.special_mask()[x]
    # targets: original id as label, [MASK] as input; elsewhere the input is unchanged
    assert torch.equal(b.labels[target], x[target])
    assert bool((b.input_ids[target] == V.mask_id).all())
    assert torch.equal(b.input_ids[~target], x[~target])
    assert not bool((target & (special | ~real)).any())  # never a special token or padding
    pm = b.perm_mask
    # every non-target key is visible to every query
    assert not bool((pm & ~target[:, None, :]).any())
    ordinary_context = real & ~special & ~target
    half = L // 2
    for r in range(B):
        t = target[r].nonzero().flatten()
        n = t.numel()
        sub = pm[r][t][:, t]  # (n, n) among targets: True = cannot see
        assert bool(sub.diagonal().all())  # a target never sees itself (query stream)
        off = ~torch.eye(n, dtype=torch.bool)
        assert bool(((sub ^ sub.T) | ~off).all())  # exactly one of two targets sees the other
        sees = ~sub & off  # strict order
        counts = sees.sum(-1)  # how many targets each target sees
        assert sorted(counts.tolist()) == list(range(n))  # a total order: no cycle
        assert not bool(((sees.int() @ sees.int() > 0) & ~sees).any())  # transitive
        # ordinary non-target queries see no target
        assert bool(pm[r][ordinary_context[r]][:, t].all())
        # the order never crosses the halves: first-half queries see no second-half target,
        # second-half targets see every first-half target
        first, second = t[t < half], t[t >= half]
        assert bool(pm[r][:half][:, second].all())
        assert not bool(pm[r][second][:, first].any())
    assert torch.equal(b.target_mapping, torch.eye(L).expand(B, L, L))


@settings(max_examples=60, deadline=None)
@given(batch=batches(), p=st.sampled_from([1 / 6, 0.25, 0.5, 1.0]), m=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_invariants(batch, p, m, seed):
    x, real = batch
    obj = PermutationLM(V, plm_probability=p, max_span_length=m)
    real_used = (x != 0) if real is None else real
    if not bool((real_used & ~V.special_mask()[x]).any()):
        return
    before = x.clone()
    b = run(obj, x, seed, real)
    assert torch.equal(x, before)  # the caller's tensor is untouched
    check_invariants(x, real_used, b)


def test_deterministic_cases():
    x = torch.randint(4, 10, (3, 12), generator=torch.Generator().manual_seed(0))
    x[1, 4] = 2
    # p = 1: every span fills its window, so every ordinary token is a target
    b = run(PermutationLM(V, plm_probability=1.0), x, 0)
    assert torch.equal(b.labels != IGNORE_INDEX, x != 2)
    # p = 1/2, spans of 1: windows of 2 tokens, one target in each
    b = run(PermutationLM(V, plm_probability=0.5, max_span_length=1), torch.randint(4, 10, (5, 40)), 1)
    assert ((b.labels != IGNORE_INDEX).view(5, 20, 2).sum(-1) == 1).all()


def test_same_seed_same_batch_and_generator_is_used():
    x = torch.randint(4, 10, (4, 32), generator=torch.Generator().manual_seed(0))
    a, b = run(PermutationLM(V), x, 7), run(PermutationLM(V), x, 7)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.perm_mask, b.perm_mask)
    c = run(PermutationLM(V), x, 8)
    assert not (torch.equal(a.labels, c.labels) and torch.equal(a.perm_mask, c.perm_mask))


def test_redraw_when_no_target():
    # one ordinary token among specials: most first draws miss it; the batch always ends with one target
    x = torch.tensor([[1, 1, 2, 2, 2, 5]])
    obj = PermutationLM(V)
    redrawn = 0
    for seed in range(40):
        b = run(obj, x, seed)
        assert b.labels.tolist() == [[-100] * 5 + [5]]
        span, u, _ = protocol_draws(torch.Generator().manual_seed(seed), 1, 6, 1 / 6, 5)
        s, c = int(span[0, 0]), int(span[0, 0]) * 6
        start = int(float(u[0, 0]) * (c - s + 1))
        redrawn += not (start <= 5 < start + s)
    assert redrawn > 0  # the redraw path was exercised


# --------------------------------------------------------------------------- statistics
@functools.cache
def expected_selected(r: int, p: float, m: int) -> float:
    """Exact expected number of selected tokens in the last ``r`` positions of a row (the window walk)."""
    if r <= 0:
        return 0.0
    total = 0.0
    for s in range(1, m + 1):
        c = int(s / p)
        inside = sum(min(r, o + s) - min(r, o) for o in range(c - s + 1)) / (c - s + 1)
        total += inside + expected_selected(r - c, p, m)
    return total / m


@pytest.mark.parametrize("p, m", [(1 / 6, 5), (0.15, 3), (0.5, 2)])
def test_target_rate(p, m):
    B, L = 256, 240
    x = torch.randint(4, 10, (B, L), generator=torch.Generator().manual_seed(1))
    b = run(PermutationLM(V, plm_probability=p, max_span_length=m), x, 2)
    per_row = (b.labels != IGNORE_INDEX).sum(-1).double()  # (B,) i.i.d. rows
    mean, se = per_row.mean().item(), per_row.std().item() / math.sqrt(B)
    exact = expected_selected(L, p, m)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    if (p, m) == (1 / 6, 5):
        assert abs(exact / L - 1 / 6) < 1e-3  # plm_probability, as windows are 6 times their span


def test_offsets_and_order_are_uniform():
    # spans of 1 in windows of 6: the target's place in its window is uniform on 0..5
    B, L = 400, 60
    x = torch.randint(4, 10, (B, L), generator=torch.Generator().manual_seed(3))
    b = run(PermutationLM(V, max_span_length=1), x, 4)
    place = (b.labels != IGNORE_INDEX).view(B, L // 6, 6).float().sum((0, 1))  # (6,) counts per offset
    n = B * L // 6
    assert ((place - n / 6).abs() < 4 * math.sqrt(n * (1 / 6) * (5 / 6))).all(), place
    # every token a target (p = 1): the order of positions 0 and 1 is a fair coin, and mirrors 2, 3
    b = run(PermutationLM(V, plm_probability=1.0), torch.randint(4, 10, (4000, 4)), 5)
    first = b.perm_mask[:, 0, 1].float()  # 0 cannot see 1: rank 0 < rank 1
    assert abs(first.mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert torch.equal(b.perm_mask[:, 0, 1], b.perm_mask[:, 2, 3])  # HF shuffles both halves together


# --------------------------------------------------------------------------- errors
def test_errors():
    obj = PermutationLM(V)
    with pytest.raises(ValueError, match="even length.*got length 7"):
        obj(torch.full((2, 7), 5))
    with pytest.raises(ValueError, match="nothing to predict"):
        obj(torch.tensor([[1, 5, 2, 0]]), attention_mask=torch.tensor([[1, 0, 1, 0]]))
    with pytest.raises(ValueError, match="mask_id"):
        PermutationLM(Vocab(size=10, pad_id=0))
    with pytest.raises(TypeError, match="vocab"):
        PermutationLM("vocab")  # type: ignore[arg-type]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="plm_probability"):
            PermutationLM(V, plm_probability=bad)
    with pytest.raises(TypeError, match="plm_probability"):
        PermutationLM(V, plm_probability="1/6")  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_span_length"):
            PermutationLM(V, max_span_length=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_span_length / plm_probability"):
        PermutationLM(V, plm_probability=1e-300)
    with pytest.raises(ValueError, match="attention_mask"):
        obj(torch.full((2, 8), 5), attention_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="outside"):
        obj(torch.full((2, 8), 10))
    with pytest.raises(TypeError, match="generator"):
        obj(torch.full((2, 8), 5), generator=0)  # type: ignore[arg-type]


def test_on_device(device):
    x = torch.randint(4, 10, (3, 64), generator=torch.Generator().manual_seed(0))
    x[2, 50:] = 0
    obj = PermutationLM(V)
    g = torch.Generator(device=device.type).manual_seed(0)
    b = obj(x.to(device), generator=g).to("cpu")
    check_invariants(x, x != 0, b)
