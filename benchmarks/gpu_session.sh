#!/usr/bin/env bash
# One GPU session for the fused linear cross-entropy: correctness at full size + the whole benchmark.
#
#   bash benchmarks/gpu_session.sh prepare   # here, on the CPU machine: fetch the peers' wheels into .whl/
#   bash benchmarks/gpu_session.sh run       # on the GPU machine (device tool: carry [".whl"], timeout ~540 s)
#
# The GPU image has torch 2.11, triton 3.6, numpy, safetensors, tqdm, pytest and hypothesis but no
# network; Liger-Kernel and Cut Cross-Entropy are pure-Python wheels carried in .whl/. `run` writes
# everything under $OUT (or benchmarks/results when $OUT is unset): the GPU test log and
# linear_cross_entropy_h200.{json,md}. Commit those two files as the benchmark's results.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1
    ls -la .whl
    ;;
run)
    out="${OUT:-benchmarks/results}"
    mkdir -p "$out"
    # the peers are optional: without .whl/ their rows record an ImportError, the rest still runs
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "peer wheels not installed (run 'prepare' and carry .whl/)"
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
    # 1. correctness on the GPU: only the CUDA tests (test_cuda_* and the [cuda] device variants;
    #    Triton and inductor compiles included, capped at 200 s). The CPU tests (~90 s on 2 cores)
    #    run on every CPU machine; here, collected first, they would eat most of that time before
    #    the CUDA tests at the end of the file ran.
    timeout 200 python3 -m pytest -q -rf -p no:cacheprovider -k cuda \
        tests/ops/test_linear_cross_entropy.py tests/ops/test_vocab_chunked.py 2>&1 \
        | tail -60 | tee "$out/gpu_tests.log" || true
    # 2. full-size correctness + the whole benchmark (writes its files after every method)
    python3 benchmarks/linear_cross_entropy_gpu.py --out "$out/linear_cross_entropy_h200"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
