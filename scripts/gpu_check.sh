#!/usr/bin/env bash
# A short check of the GPU strategies (about 3 minutes on one GPU; under 5):
#
#   scripts/gpu_check.sh            # ddp, fsdp and deepspeed_stage_2, each with bf16-mixed
#   STEPS=100 GPUS=2 scripts/gpu_check.sh
#
# Each strategy trains the same small language model (associative recall) for $STEPS steps through
# `ssm_train.run.fit`, and prints steps/s (after a warm-up), peak GPU memory per rank, the final
# loss, and the dtype the recurrent parameters are stored in. The DeepSpeed checkpoint (a folder of
# ZeRO shards) is then exported to one file (`ssm-train export`) and sampled from on one device
# (`ssm-train generate`). Exit status 0 when every step ran and every loss was finite.
#
# Environment: PYTHON [.venv/bin/python or python], STEPS [200], GPUS [1], OUT [a temporary folder],
# STRATEGIES ["ddp fsdp deepspeed_stage_2"], PRECISION [bf16-mixed].
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}"
STEPS="${STEPS:-200}"
GPUS="${GPUS:-1}"
STRATEGIES="${STRATEGIES:-ddp fsdp deepspeed_stage_2}"
PRECISION="${PRECISION:-bf16-mixed}"
OUT="${OUT:-$(mktemp -d /tmp/ssm-gpu-check.XXXXXX)}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/ssm_train/torch_extensions}"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1

"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_check: no CUDA device visible to $PYTHON" >&2; exit 69; }
"$PYTHON" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__,
  "cuda", torch.version.cuda)'

# Lightning starts extra ranks by re-running the script with its arguments, so the driver is a file.
cat >"$OUT/check.py" <<'EOF'
import json, sys, time
from pathlib import Path

import lightning as L
import torch

from ssm_train.config import load_config
from ssm_train.run import fit

strategy, precision, steps, gpus, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
WARMUP = 20


class Stats(L.Callback):
    """Steps/s after a warm-up, peak memory, the recurrent parameters' storage dtype, finite losses."""

    def __init__(self):
        self.t0 = None
        self.losses = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == WARMUP:
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_train_end(self, trainer, pl_module):
        torch.cuda.synchronize()
        rate = (trainer.global_step - WARMUP) / (time.perf_counter() - self.t0)
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**20], device=pl_module.device)
        peak = trainer.strategy.all_gather(peak).max().item()
        nu = dict(pl_module.model.named_parameters())["blocks.0.mixer.nu_log"]
        if trainer.is_global_zero:
            (out / f"{strategy}.json").write_text(json.dumps({
                "steps_per_s": rate, "peak_mib": peak, "nu_log_dtype": str(nu.dtype),
                "first_loss": self.losses[0], "last_loss": self.losses[-1],
                "finite": all(map(lambda x: x == x and abs(x) != float("inf"), self.losses))}))


cfg = load_config(["configs/experiment/default.yaml"], [
    f"runs_dir={out}/runs", f"name={strategy}", "checkpoint.resume=none", "logger.mode=disabled",
    "data.kind=recall", "data.seq_len=512", "data.vocab_size=32", "data.n_pairs=16", "data.n_queries=16",
    "data.batch_size=32", "data.num_workers=4", "model.kind=lru", "model.d_model=256", "model.n_layers=4",
    "model.d_state=256", "optim.lr=0.002", "optim.warmup_steps=20", f"trainer.max_steps={steps}",
    f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=2", "checkpoint.every_n_steps=100000",
    "trainer.accelerator=gpu", f"trainer.devices={gpus}", f"trainer.strategy={strategy}",
    f"trainer.precision={precision}", "trainer.enable_progress_bar=false"])
fit(cfg, callbacks=[Stats()])
EOF

read -r -a strategies <<<"$STRATEGIES"
status=0
for s in "${strategies[@]}"; do
    echo "gpu_check: $s, $PRECISION, $STEPS steps on $GPUS GPU(s)"
    if ! timeout 150 "$PYTHON" "$OUT/check.py" "$s" "$PRECISION" "$STEPS" "$GPUS" "$OUT" >"$OUT/$s.log" 2>&1; then
        echo "gpu_check: $s FAILED; the end of $OUT/$s.log:" >&2
        tail -n 30 "$OUT/$s.log" >&2
        status=1
    fi
done

if [[ " $STRATEGIES " == *" deepspeed_stage_2 "* && -d "$OUT/runs/deepspeed_stage_2/checkpoints/last.ckpt" ]]; then
    echo "gpu_check: export the ZeRO checkpoint to one file and sample from it on one device"
    if "$PYTHON" -m ssm_train export "$OUT/runs/deepspeed_stage_2/checkpoints/last.ckpt" "$OUT/ds.pt" \
        && CUDA_VISIBLE_DEVICES="" "$PYTHON" -m ssm_train generate --ckpt "$OUT/ds.pt" --prompt "1 40 2 41" \
            --max-new-tokens 8 --temperature 0; then :; else status=1; fi
fi

"$PYTHON" - "$OUT" "${strategies[@]}" <<'EOF' || status=1
import json, sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
rows = {n: json.loads((out / f"{n}.json").read_text()) for n in names if (out / f"{n}.json").is_file()}
base = rows.get("ddp", {}).get("steps_per_s")
print(f"\n{'strategy':<22}{'steps/s':>9}{'vs ddp':>8}{'peak MiB':>10}{'nu_log':>16}{'loss first':>12}{'last':>8}")
for n, r in rows.items():
    ratio = f"{r['steps_per_s'] / base:.2f}" if base else "-"
    print(f"{n:<22}{r['steps_per_s']:>9.2f}{ratio:>8}{r['peak_mib']:>10.0f}{r['nu_log_dtype']:>16}"
          f"{r['first_loss']:>12.3f}{r['last_loss']:>8.3f}")
bad = [n for n in names if n not in rows or not rows[n]["finite"]]
sys.exit(f"gpu_check: failed or non-finite: {bad}" if bad else 0)
EOF
echo "gpu_check: logs and runs in $OUT"
exit "$status"
