#!/usr/bin/env bash
# Every GPU measurement issue 7 and docs/gpu.md ask for, in one call on a machine lent through the
# `device` tool (an H100 or H200; its image has torch and triton, no network):
#
#   run(command="scripts/device_gpu_measurements.sh", timeout_s=600)
#
# About 7 minutes on an H100. In order of importance, each under its own time limit so that one
# that hangs does not cost the others:
#   1. benchmarks/scan_gpu.py --sweep   linear_scan's Triton kernels against the memory floor (target 1.5x)
#   2. benchmarks/selective_gpu.py      the fused Triton selective scan against the materialised one
#   3. benchmarks/throughput.py --device cuda --quick   matched models, tokens/s and memory
#   3b. benchmarks/step.py --device cuda   LRU / selective step against the plain loop and the floor
#   4. scripts/gpu_check.sh             DDP / FSDP / DeepSpeed training steps (needs omegaconf, torchdata,
#                                       wandb, deepspeed: carried as wheels in .wheels/, see docs/gpu.md)
# Everything printed is also written to $OUT (or ./gpu-out) as one log per step. Record the tables
# in docs/RESULTS.md with the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
PYTHON="${PYTHON:-python3}"

if compgen -G ".wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .wheels/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' \
    | tee -a "$OUT/gpu.txt"

status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [[ $rc == 0 ]] || { echo "== $name exited $rc"; status=1; }
}
step scan_gpu 240 "$PYTHON" benchmarks/scan_gpu.py --sweep
step selective_gpu 90 "$PYTHON" benchmarks/selective_gpu.py
step throughput 120 "$PYTHON" benchmarks/throughput.py --device cuda --quick
step step_bench 120 "$PYTHON" benchmarks/step.py --device cuda --repeats 3 --memory-steps 1
if "$PYTHON" -c 'import omegaconf, torchdata, deepspeed, wandb' 2>/dev/null; then
    step gpu_check 200 env PYTHON="$PYTHON" STEPS=100 scripts/gpu_check.sh
else
    echo "== gpu_check skipped: omegaconf, torchdata, deepspeed or wandb is missing (carry them in .wheels/)"
fi
exit "$status"
