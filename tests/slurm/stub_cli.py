"""A stand-in for `ssm-train` that exercises slurm/train.sh without training anything.

    stub_cli.py fit -c CONFIG [-c CONFIG ...] key=value ...

It keeps the CLI's contract where train.sh relies on it (`fit`, `-c` files that must exist, exit
status 2 on a config error, `name=` keys the run directory `runs/<name>/`, `checkpoint.resume=auto`
resumes from it) and prints one `STUB {json}` line per rank describing what it was given. Keys
under `stub.` steer it:

    stub.exit=N, stub.exit_rank=R   exit with N (on rank R only, when given)
    stub.requeue=1                  rank 0 runs `scontrol requeue` every time it starts
    stub.sleep=S                    on a fresh run, sleep S s waiting for SIGUSR1 (a resumed run ends)
    stub.requeue_on_usr1=1          on SIGUSR1 rank 0 writes a "checkpoint", then requeues the job
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    if not argv or argv[0] != "fit":
        sys.exit(f"stub: expected 'fit' as the subcommand, got {argv[:1]}")
    configs: list[str] = []
    overrides: dict[str, str] = {}
    args = iter(argv[1:])
    for a in args:
        if a == "-c":
            configs.append(next(args))
        elif "=" in a:
            key, value = a.split("=", 1)
            overrides[key] = value
        else:
            print(f"stub: error: unexpected argument {a!r}", file=sys.stderr)
            sys.exit(2)
    return configs, overrides


def job_id() -> str:
    """The id that `scontrol requeue` needs: an array task's own id, as Lightning computes it."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue() -> None:
    subprocess.run(["scontrol", "requeue", job_id()], check=True)
    time.sleep(300)  # SLURM ends this run; as in Lightning, nothing after the requeue matters


def main() -> None:
    configs, o = parse(sys.argv[1:])
    for c in configs:
        if not Path(c).is_file():
            print(f"stub: error: config file not found: {c!r}", file=sys.stderr)
            sys.exit(2)
    rank = int(os.environ.get("SLURM_PROCID", "0"))
    run_dir = Path("runs") / o.get("name", "default")
    ckpt = run_dir / "stub-ckpt.json"
    resumed = o.get("checkpoint.resume") == "auto" and ckpt.is_file()
    record = {
        "rank": rank,
        "ntasks": int(os.environ.get("SLURM_NTASKS", "1")),
        "ntasks_per_node": os.environ.get("SLURM_NTASKS_PER_NODE"),
        "local_rank": int(os.environ.get("SLURM_LOCALID", "0")),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "unbuffered": os.environ.get("PYTHONUNBUFFERED"),
        "configs": configs,
        "overrides": o,
        "resumed_from": json.loads(ckpt.read_text()) if resumed else None,
    }
    print("STUB " + json.dumps(record, sort_keys=True), flush=True)

    if "stub.exit" in o and int(o.get("stub.exit_rank", rank)) == rank:
        sys.exit(int(o["stub.exit"]))
    if o.get("stub.requeue") == "1" and rank == 0:
        requeue()
    if "stub.sleep" in o and not resumed:

        def on_usr1(signum: int, frame: object) -> None:
            print(f"STUB-USR1 rank={rank}", flush=True)
            if o.get("stub.requeue_on_usr1") == "1" and rank == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                ckpt.write_text(json.dumps({"job_id": record["job_id"], "restart": record["restart"]}))
                requeue()

        signal.signal(signal.SIGUSR1, on_usr1)
        deadline = time.monotonic() + float(o["stub.sleep"])
        while time.monotonic() < deadline:
            time.sleep(0.1)


if __name__ == "__main__":
    main()
