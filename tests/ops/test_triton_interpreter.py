"""The Triton kernels on CPU through the Triton interpreter, in a subprocess.

TRITON_INTERPRET must be set before Triton is imported, and another test module may already
have imported Triton in this pytest process, so the checks run in a fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton (optional extra) not installed"
)


@pytest.mark.parametrize("tiles", ["interpreter", "gpu-half", "gpu-float"])
@pytest.mark.parametrize("impl", ["triton", "vocab_chunked"])
def test_triton_kernels_match_reference_under_interpreter(impl, tiles):
    """The accuracy cases of _triton_interp_checks.py through the fused kernels
    (``impl="triton"``) or the vocab_chunked epilogue kernels (each also against its torch
    version), with the interpreter's small tiles and with the tiles of a GPU launch, and both
    under ``torch.compile(fullgraph=True)``."""
    script = Path(__file__).with_name("_triton_interp_checks.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), impl, tiles],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if impl == "vocab_chunked":
        assert "ok vocab_chunked epilogues match torch" in proc.stdout
    assert f"ok {impl} check_targets=False past V" in proc.stdout
    assert f"ok {impl} under torch.compile" in proc.stdout
