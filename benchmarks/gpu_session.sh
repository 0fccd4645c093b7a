#!/usr/bin/env bash
# One GPU session for the fused linear cross-entropy: correctness at full size + the whole benchmark.
#
#   bash benchmarks/gpu_session.sh prepare   # here, on the CPU machine: fetch the peers' wheels into .whl/
#   bash benchmarks/gpu_session.sh run       # on the GPU machine (device tool: carry [".whl"], timeout ~540 s)
#
# The GPU image has torch 2.11, triton 3.6, numpy, safetensors, tqdm, pytest and hypothesis but no
# network; Liger-Kernel and Cut Cross-Entropy are pure-Python wheels carried in .whl/. `run` writes
# everything under $OUT (or benchmarks/results when $OUT is unset): the GPU test log,
# train_bf16.json (tokens/s of a short bf16-autocast `clm` run and the host syncs its training
# loop made, by call site) and linear_cross_entropy_h200.{json,md}. Commit the benchmark's two
# files as its results, with the test log and train_bf16.json.
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
    # 2. one short training run on CUDA under bf16 autocast: tokens/s, and every host sync the
    #    training loop makes (torch.cuda.set_sync_debug_mode: one warning per synchronising call,
    #    counted by call site over the steps after the first 20; at most 90 s)
    OUT_JSON="$out/train_bf16.json" timeout 90 python3 - <<'PY' 2>&1 | tail -5 || true
import collections, json, os, tempfile, time, warnings
import torch
from lmobjectives.training import TrainConfig, train
from lmobjectives.training import trainer

syncs, steps = collections.Counter(), {"n": 0}
step = trainer.train_step
def counted_step(*args, **kwargs):  # sync debugging on from the 21st step, with its warnings
    steps["n"] += 1
    torch.cuda.set_sync_debug_mode("warn" if steps["n"] > 20 else "default")
    return step(*args, **kwargs)
trainer.train_step = counted_step
config = TrainConfig(objective="clm", steps=200, batch_size=32, seq_len=256, d_model=256, n_layers=4,
                     n_heads=4, d_ff=1024, device="cuda", log_every=50, save_every=0, progress=False,
                     out=tempfile.mkdtemp())
with warnings.catch_warnings(record=True) as caught, torch.autocast("cuda", dtype=torch.bfloat16):
    warnings.simplefilter("always")
    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
torch.cuda.set_sync_debug_mode("default")
for w in caught:
    if "synchroniz" in str(w.message):
        syncs[f"{w.filename}:{w.lineno}: {str(w.message)[:120]}"] += 1
report = {"config": {k: getattr(config, k) for k in ("objective", "steps", "batch_size", "seq_len", "d_model", "n_layers")},
          "autocast": "bfloat16", "tokens_per_s": result.tokens_per_s, "wall_s": wall,
          "final_loss": result.final_loss, "steps_with_sync_debug": max(0, steps["n"] - 20),
          "host_syncs_by_call_site": dict(syncs.most_common())}
open(os.environ["OUT_JSON"], "w").write(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=1)[:2000])
PY
    # 3. full-size correctness + the whole benchmark (writes its files after every method)
    python3 benchmarks/linear_cross_entropy_gpu.py --out "$out/linear_cross_entropy_h200"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
