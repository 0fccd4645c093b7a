"""Compile the Triton kernels for a GPU this machine need not have, and read their resources.

``triton.compile`` runs its whole pipeline, down to a cubin made by the ``ptxas`` that Triton
ships, without a driver or a device, given a ``GPUTarget``. This module does so for every
Triton kernel of :mod:`lmobjectives.ops` with the tile sizes, warps and stages its launcher
uses, and reads the registers per thread and the bytes of register spills from ``ptxas -v``;
shared memory comes from Triton's metadata. A kernel that needs more shared memory than the GPU has fails at
launch ("out of resource"), and one that spills runs slowly: both are caught here, on a CPU,
before scarce GPU time is spent.

The arguments are specialised as a real launch specialises them for the benchmark shapes:
pointers 16-byte aligned and integer arguments divisible by 16 (Triton's ``tt.divisibility``
hint). Without that hint, loads are not vectorised and Triton does not software-pipeline
them, so the compiled kernel would not be the one that runs.

Used by ``tests/ops/test_triton_resources.py`` and ``benchmarks/triton_resources.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lmobjectives.ops import _triton, _triton_kernels, _vocab_chunked_kernels

__all__ = ["HOPPER", "KernelResources", "Variant", "compile_resources", "variants"]

HOPPER = GPUTarget("cuda", 90, 32)  # H100/H200 (sm_90a)
HOPPER_SHARED_BYTES = 232448  # 227 KiB: the most shared memory one block may opt into on sm_90

# Kernel argument name -> Triton signature type ("DTYPE": the input's dtype).
_ARG_TYPES = {
    **dict.fromkeys(("x_ptr", "w_ptr", "b_ptr", "logits_ptr", "bias_ptr"), "*DTYPE"),
    **dict.fromkeys(("target_ptr", "argmax_ptr"), "*i64"),
    **dict.fromkeys(
        (
            "max_ptr",
            "sumexp_ptr",
            "ztarget_ptr",
            "zsum_ptr",
            "lse_ptr",
            "coef_a_ptr",
            "coef_b_ptr",
            "coef_c_ptr",
            "dx_ptr",
            "dw_ptr",
            "db_ptr",
            "row_scale_ptr",
        ),
        "*fp32",
    ),
    **dict.fromkeys(("softcap", "smoothing", "z_loss", "smoothing_per_class"), "fp32"),
    **dict.fromkeys(
        ("N", "V", "D", "C", "stride_x", "stride_w", "blocks_per_split", "num_row_blocks", "v_offset"),
        "i32",
    ),
}


@dataclass(frozen=True)
class Variant:
    """One compilation of one kernel: what a launcher would compile for some call."""

    kernel: Any  # the @triton.jit function
    dtype: str  # "bf16" or "fp32": dtype of the input/weight/logits pointers
    flags: dict[str, bool]  # the kernel's boolean constexprs (features on/off)
    config: dict[str, int]  # BLOCK_* constexprs plus compile options (num_warps, ...), as launched

    @property
    def name(self) -> str:
        on = [k.lower() for k, v in sorted(self.flags.items()) if v and k != "UPCAST"]
        return f"{self.kernel.__name__}[{self.dtype}{''.join('+' + f for f in on)}]"


@dataclass(frozen=True)
class KernelResources:
    """What the compiled kernel uses per block / per thread."""

    variant: str  # Variant.name
    registers: int  # per thread
    spill_bytes: int  # per thread, spill stores + spill loads: > 0 means registers ran out
    shared_bytes: int  # per block
    config: dict[str, int]


def variants() -> list[Variant]:
    """Each kernel with its features off and all on, in bf16 and fp32, with the launch
    configuration its launcher uses on a GPU (not the small interpreter tiles)."""
    fused = _triton_kernels.lce_forward_kernel, _triton_kernels.lce_backward_kernel
    kernels = [
        (fused[0], "forward", ("HAS_BIAS", "HAS_SOFTCAP", "NEED_ZSUM", "NEED_ARGMAX"), ()),
        (fused[1], "backward", ("HAS_BIAS", "HAS_SOFTCAP", "NEED_DB"), ("NEED_DX", "NEED_DW")),
        (
            _vocab_chunked_kernels._forward_epilogue_kernel,
            None,
            ("HAS_BIAS", "HAS_SOFTCAP", "NEED_ZSUM", "NEED_ARGMAX"),
            (),
        ),
        (_vocab_chunked_kernels._backward_epilogue_kernel, None, ("HAS_BIAS", "HAS_SOFTCAP"), ()),
    ]
    out = []
    for kernel, kind, optional, always in kernels:
        for dtype in ("bf16", "fp32"):
            upcast = dtype == "fp32"
            if kind is None:
                config = _vocab_chunked_kernels.launch_config(interpret=False)
            else:
                config = _triton.launch_config(kind, upcast=upcast, interpret=False)
            for features_on in (False, True):
                flags = {f: features_on for f in optional} | dict.fromkeys(always, True)
                if kind is not None:
                    flags["UPCAST"] = upcast
                out.append(Variant(kernel, dtype, flags, config))
    return out


def compile_resources(variant: Variant, target: GPUTarget = HOPPER) -> KernelResources:
    """Compile ``variant`` for ``target`` (no GPU needed) and read its resource use."""
    from triton.backends.nvidia.compiler import get_ptxas

    fn = variant.kernel
    config = dict(variant.config)
    options = {k: config.pop(k) for k in list(config) if not k.startswith("BLOCK_")}
    constexprs = {**variant.flags, **config}
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        kind = _ARG_TYPES[arg].replace("DTYPE", variant.dtype)
        signature[arg] = kind
        if kind.startswith("*") or kind == "i32":
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=target, options=options)
    # Assemble the PTX again with -v, with the ptxas Triton picks for this architecture (the
    # PTX carries the block size, so the register budget is the one Triton's cubin had).
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        arch = f"sm_{target.arch}{'a' if target.arch >= 90 else ''}"
        report = subprocess.run(
            [get_ptxas(target.arch).path, "-v", f"--gpu-name={arch}", ptx, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    if regs is None or spills is None:
        raise RuntimeError(f"cannot read the resource usage of {variant.name}:\n{report}")
    return KernelResources(
        variant=variant.name,
        registers=int(regs.group(1)),
        spill_bytes=int(spills.group(1)) + int(spills.group(2)),
        shared_bytes=int(compiled.metadata.shared),
        config=dict(variant.config),
    )
