"""Tests specific to impl="vocab_chunked" (lmobjectives.ops._vocab_chunked): chunk sizing, the
placement of the float32 dinput accumulator, and its accuracy over many chunks. The accuracy
matrix it shares with the other implementations is in test_linear_cross_entropy.py; the
Triton epilogues under the interpreter are in test_triton_interpreter.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lmobjectives.ops import _vocab_chunked as vc
from lmobjectives.ops import linear_cross_entropy
from lmobjectives.ops._common import LossOptions
from lmobjectives.ops._custom_ops import vocab_chunked_linear_cross_entropy


def _sibling(name: str):
    """A module next to this file (the tests are not a package: --import-mode=importlib)."""
    spec = importlib.util.spec_from_file_location(f"lmobjectives_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _sibling("test_linear_cross_entropy")
CUDA, loss_and_grads, make_problem, rel_err = (
    _helpers.CUDA,
    _helpers.loss_and_grads,
    _helpers.make_problem,
    _helpers.rel_err,
)


def test_default_vocab_chunk():
    # 64 MiB for the bf16 logits chunk plus 64 bytes per token, in multiples of 128 classes:
    # (64 MiB - 8192 * 64) / (8192 * 2) = 4064 -> 3968; 32768 tokens: 992 -> 896.
    assert vc.default_vocab_chunk(8192, 128256, torch.bfloat16) == 3968
    assert vc.default_vocab_chunk(32768, 128256, torch.bfloat16) == 896
    assert vc.default_vocab_chunk(8192, 128256, torch.float32) == 1920
    assert vc.default_vocab_chunk(3000, 128256, torch.bfloat16) == 11136  # 11152 -> 87 * 128
    assert vc.default_vocab_chunk(10**6, 128256, torch.bfloat16) == 128  # at least 128
    assert vc.default_vocab_chunk(33, 1007, torch.bfloat16) == 1007  # at most V
    assert vc.default_vocab_chunk(0, 50, torch.bfloat16) == 50


def test_split():
    assert vc._split(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert vc._split(3, 11, 4) == [(3, 7), (7, 11)]
    assert vc._split(5, 5, 4) == []


def test_borrow_rows():
    # N = 8192 tokens: 4096 float32 rows = 8192 bf16 rows at the end of dweight.
    assert vc._borrow_rows(8192, 128256) == 128256 - 8192
    assert vc._borrow_rows(7, 100) == 88  # 4 float32 rows = 8 half rows from row 92, down to 88
    assert vc._borrow_rows(9, 9) is None  # needs 10 rows
    assert vc._borrow_rows(1, 2) == 0
    assert vc._borrow_rows(0, 5) is None


@pytest.mark.parametrize("scratch", [1, 2, 100], ids=["no-scratch", "2-rows", "big"])
@pytest.mark.parametrize("borrow", [True, False], ids=["borrowed", "separate"])
@pytest.mark.parametrize("n,d", [(7, 5), (8, 6), (1, 3)])
def test_dinput_accumulator_is_float32_sum_cast_once(n, d, borrow, scratch):
    """Bitwise: the accumulator (half of it in the bf16 gradient's own storage, cast down in
    place in blocks of ``scratch`` rows; half in borrowed dweight rows or a separate buffer)
    equals a plain float32 running sum cast to bf16 once, and never touches dweight rows
    outside the borrowed region."""
    g = torch.Generator().manual_seed(n * d)
    parts = [
        (torch.randn(n, c, generator=g).bfloat16(), torch.randn(c, d, generator=g).bfloat16()) for c in (3, 5, 4, 2)
    ]
    expected = torch.zeros(n, d)
    for a, b in parts:
        expected.addmm_(a.float(), b.float())
    v = 2 * n + 9
    dweight = torch.full((v, d), 7.0, dtype=torch.bfloat16)
    start = vc._borrow_rows(n, v)
    rows = n - n // 2
    borrowed = None
    if borrow:
        borrowed = dweight.view(-1)[start * d : (start + 2 * rows) * d].view(torch.float32)
        borrowed = borrowed.view(rows, d)
    acc = vc._DinputAccumulator(n, d, torch.bfloat16, torch.device("cpu"), borrowed)
    for a, b in parts:
        acc.add(a, b)
    got = acc.finish(scratch=torch.empty(scratch * d - (scratch == 1), dtype=torch.bfloat16))
    assert got.dtype == torch.bfloat16 and got.shape == (n, d)
    assert torch.equal(got, expected.bfloat16())
    assert (dweight[:start] == 7.0).all() and (dweight[start + 2 * rows :] == 7.0).all()


@pytest.mark.parametrize("v", [1007, 29], ids=["borrowed", "separate"])
def test_borrowing_dweight_rows_changes_nothing(v):
    """Same bits with the accumulator's second half in dweight rows (whose chunks are then
    recomputed) as in a separate buffer; V = 29 < N = 33 cannot borrow at all."""
    x, w, b, t = make_problem(33, 48, v, dtype=torch.bfloat16, bias=True, ignore_every=3)
    options = LossOptions(reduction="sum", label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    results = []
    for borrow in (True, False):
        leaves = [a.clone().requires_grad_() for a in (x, w, b)]
        loss, lse, argmax = vocab_chunked_linear_cross_entropy(
            leaves[0],
            leaves[1],
            t,
            leaves[2],
            options,
            chunk_size=16,
            want_argmax=True,
            borrow_dweight=borrow,
        )
        results.append([loss.detach(), lse, argmax, *torch.autograd.grad(loss, leaves)])
    for a, r in zip(*results):
        assert torch.equal(a, r)


def test_dinput_error_does_not_grow_with_the_number_of_chunks():
    """bf16, 256 chunks of 16 classes: dinput is summed in float32, so its error stays that of
    one rounding (a bf16 running sum would round 256 times)."""
    x, w, b, t = make_problem(40, 32, 4096, dtype=torch.bfloat16, ignore_every=7)
    one = torch.tensor(1.0, dtype=torch.float64)
    oracle = loss_and_grads(x.double(), w.double(), None, t, one, impl="reference")
    one_chunk = loss_and_grads(x, w, None, t, one, impl="vocab_chunked", chunk_size=4096)
    many = loss_and_grads(x, w, None, t, one, impl="vocab_chunked", chunk_size=16)
    for name, a, r, o in zip(("loss", "dinput", "dweight"), many, one_chunk, oracle):
        assert rel_err(a, o) <= 1.1 * rel_err(r, o) + 1e-6, name


def test_chunk_size_is_classes_per_chunk(monkeypatch):
    """The public ``chunk_size`` reaches the vocabulary loop as classes per chunk."""
    seen = []
    split = vc._split

    def spy(start, end, size, **kw):
        seen.append(size)
        return split(start, end, size, **kw)

    monkeypatch.setattr(vc, "_split", spy)
    x, w, _, t = make_problem(6, 4, 50, dtype=torch.float32)
    linear_cross_entropy(x, w, t, impl="vocab_chunked", chunk_size=7)
    assert seen == [7]
    seen.clear()
    linear_cross_entropy(x, w, t, impl="vocab_chunked")
    assert seen == [50]  # default: 64 MiB of logits, capped at V


def test_dinput_accumulation_mode_on_cpu():
    assert vc.dinput_accumulation(torch.device("cpu"), torch.float32) == "in the gradient"
    assert vc.dinput_accumulation(torch.device("cpu"), torch.bfloat16) in (
        "addmm out_dtype=float32",
        "float32 operand copies",
    )


def test_epilogue_choice_and_validation(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert vc.default_epilogue(torch.device("cpu"), torch.bfloat16) == "torch"
    x, w, _, t = make_problem(4, 3, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="epilogue"):
        vocab_chunked_linear_cross_entropy(
            x, w, t, None, LossOptions(), chunk_size=None, want_argmax=False, epilogue="cuda"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("borrow", [True, False], ids=["borrowed", "separate"])
def test_cuda_peak_memory(borrow):
    """bf16, V > N: peak extra memory of forward + backward is at most the two gradients plus
    64 MiB (borrowed dweight rows), or that plus the separate float32 (N/2, d) half."""
    if vc.dinput_accumulation(torch.device("cuda"), torch.bfloat16) != "addmm out_dtype=float32":
        pytest.skip("this torch has no float32-accumulating addmm on CUDA")
    n, d, v = 4096, 1024, 32768
    x, w, _, t = make_problem(n, d, v, dtype=torch.bfloat16, device="cuda", ignore_every=11)
    x.requires_grad_()
    w.requires_grad_()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss, _, _ = vocab_chunked_linear_cross_entropy(
        x, w, t, None, LossOptions(), chunk_size=None, want_argmax=False, borrow_dweight=borrow
    )
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    budget = (n + v) * d * 2 + 64 * 2**20 + (0 if borrow else n * d * 2)
    assert extra <= budget, (extra - budget) / 2**20


def test_probe_never_runs_inside_cuda_graph_capture(monkeypatch):
    """The one-time addmm probe reads its result back (a host sync, illegal while a CUDA graph
    is captured): while capturing and not yet probed, no probe runs and the fallback is used
    (uncached); after an eager call (the forward runs it) the cached answer is used, capture
    or not."""
    calls = []
    monkeypatch.setattr(vc, "_PROBED", {})
    monkeypatch.setattr(vc, "_probe_fused_fp32_addmm", lambda device, dtype: calls.append(device) or True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    cuda = torch.device("cuda", 0)
    assert vc._fused_fp32_addmm(cuda, torch.bfloat16) is False
    assert calls == [] and vc._PROBED == {}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert vc._fused_fp32_addmm(cuda, torch.bfloat16) is True
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert vc._fused_fp32_addmm(cuda, torch.bfloat16) is True
    assert calls == [cuda]
    # the forward probes (eagerly, before any backward) for half-precision inputs
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    x, w = torch.randn(4, 3).bfloat16(), torch.randn(6, 3).bfloat16()
    with torch.no_grad():
        linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 3]), impl="vocab_chunked")
    assert calls == [cuda, torch.device("cpu")]
