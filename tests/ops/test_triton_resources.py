"""Every Triton kernel, with the launch configuration its launcher uses on a GPU, compiles for
Hopper (sm_90, the H100/H200) on this CPU-only machine, fits the shared memory a block may
have, and does not spill registers. See ``lmobjectives.ops._triton_resources``."""

from __future__ import annotations

import os

import pytest

triton = pytest.importorskip("triton")
if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 6):
    pytest.skip("ahead-of-time compilation checked with Triton 3.6 and later", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("the interpreter does not compile", allow_module_level=True)

from lmobjectives.ops._triton_resources import (  # noqa: E402
    HOPPER_SHARED_BYTES,
    compile_resources,
    variants,
)

VARIANTS = variants()


def test_variants_cover_every_kernel_and_dtype():
    names = {v.kernel.__name__ for v in VARIANTS}
    assert names == {
        "lce_forward_kernel",
        "lce_backward_kernel",
        "_forward_epilogue_kernel",
        "_backward_epilogue_kernel",
    }
    assert {v.dtype for v in VARIANTS} == {"bf16", "fp32"}
    assert len({v.name for v in VARIANTS}) == len(VARIANTS) == 16


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_kernel_compiles_for_hopper_within_resources(variant):
    r = compile_resources(variant)
    assert 0 < r.registers <= 255, r
    assert r.shared_bytes <= HOPPER_SHARED_BYTES, r
    assert r.spill_bytes == 0, f"register spills: {r}"
