"""Long sequences on CPU: time per token and peak memory of one training step at B = 1.

    python benchmarks/long_context.py [--quick] [--kinds lru,s4d,selective] [--lengths 1024,4096,...]
                                      [--policies none,block,chunk] [--cp 1,2] [--threads 1]
    python benchmarks/long_context.py --million     # one 1,048,576-token LRU step, CP=2 + block
                                                    # (d_model = d_state = 64: --width)

One step = forward + backward + AdamW of a 2-layer language model (byte vocabulary, d_model 256)
on one random sequence of L tokens, for each layer kind (lru: N = 256; s4d: 32 complex modes, FFT
convolution; s4d_scan, only when --kinds names it: the same as its recurrence; selective: N = 16,
expand 2, fused scan), each activation-checkpointing policy (trainer.activation_checkpointing:
none | block | chunk, chunks of --chunk steps) and each context-parallel size (--cp: the
sequence split over that many gloo processes of --threads threads each, as
trainer.context_parallel does). Every row runs in fresh processes, so that its
peak memory (growth of the peak resident set over the size before the first step, summed over
the ranks) is its own.

Columns: median seconds per step over --steps timed steps (after one untimed; the slowest rank's),
microseconds per token, per-token time relative to the same kind, policy and cp at the shortest
L, peak memory in all and per rank, and time and memory relative to policy none, cp 1 at the same
L. The closing lines compare block and chunk with none at L=65536 (or the longest L), the per-token
time at that L with the shortest, and end with `chunk_memory_vs_none_L<L>=<ratio>` (selective if
measured, else the first kind) for scripts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssm_train import cpu_memory  # noqa: E402
from ssm_train.nn import Backbone, get_layer, mixer_factory  # noqa: E402
from ssm_train.ops.context import ContextGroup, split_sequence  # noqa: E402

VOCAB, D_MODEL, N_LAYERS = 256, 256, 2
KINDS = {"lru": (256, None), "s4d": (32, {"mode": "conv"}), "s4d_scan": (32, {"mode": "scan"}), "selective": (16, None)}


def build(kind: str, policy: str, chunk: int) -> Backbone:
    d_state, fields = KINDS[kind]
    kind = kind.removesuffix("_scan")  # s4d_scan: S4D as its recurrence
    config = get_layer(kind).config_cls(**fields) if fields else None
    torch.manual_seed(0)
    return Backbone(vocab_size=VOCAB, d_model=D_MODEL, n_layers=N_LAYERS, mixer=mixer_factory(kind, d_state, config),
                    checkpointing=policy, checkpoint_chunk=chunk)


def set_width(width: int) -> None:
    """d_model, and the LRU's d_state with it."""
    global D_MODEL
    D_MODEL = width
    KINDS["lru"] = (width, None)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def one(kind: str, L: int, policy: str, chunk: int, steps: int, group=None) -> dict:
    """Time `steps` training steps (after one warm-up) in this process; peak memory in MB. With
    ``group``: this rank's slice of the sequence, scanned over the group (context parallelism)."""
    cpu_memory.for_checkpointing(policy, L, chunk)  # as `ssm-train fit` does
    model = build(kind, policy, chunk)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (1, L + 1), generator=torch.Generator().manual_seed(1))
    inputs, targets = x[:, :-1], x[:, 1:]
    if group is not None:
        model.set_context_parallel(group)
        inputs, targets = split_sequence(inputs, group).contiguous(), split_sequence(targets, group).contiguous()
    before = rss_kb()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(inputs, targets=targets, loss_fn=token_loss) / L  # as training: chunked with `chunk`
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if group is not None:
            dist.barrier(group.group)  # a step ends when its slowest rank does
        if i:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return {"s": statistics.median(times), "mb": (peak - before) / 1024}


def _rank(rank: int, world: int, init: str, args: tuple, out: str, width: int, threads: int) -> None:
    torch.set_num_threads(threads)
    set_width(width)  # a spawned rank imports this module afresh
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    r = one(*args, group=ContextGroup.of(None))
    with open(f"{out}.{rank}", "w") as f:
        json.dump(r, f)
    dist.destroy_process_group()


def one_context_parallel(kind: str, L: int, policy: str, chunk: int, steps: int, ranks: int) -> dict:
    """`one` on ``ranks`` gloo processes of this process's thread count: the slowest rank's median step time, the
    largest and the summed peak memory over the ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        mp.spawn(_rank, args=(ranks, f"file://{tmp}/store", (kind, L, policy, chunk, steps), out, D_MODEL, torch.get_num_threads()), nprocs=ranks)
        rs = [json.load(open(f"{out}.{r}")) for r in range(ranks)]
    return {"s": max(r["s"] for r in rs), "mb": sum(r["mb"] for r in rs), "mb_per_rank": max(r["mb"] for r in rs)}


def run_row(kind: str, L: int, policy: str, ranks: int, args: argparse.Namespace, steps: int) -> dict | str:
    """One row in a fresh process (its peak memory its own): the result, or the error's last line."""
    cmd = [sys.executable, __file__, "--one", kind, str(L), policy, "--chunk", str(args.chunk),
           "--steps", str(steps), "--threads", str(args.threads), "--ranks", str(ranks), "--width", str(D_MODEL)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"FAILED: {(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="L = 1024, 4096, 16384; 2 timed steps")
    p.add_argument("--kinds", default="lru,s4d,selective")
    p.add_argument("--lengths", default="")
    p.add_argument("--policies", default="none,block,chunk")
    p.add_argument("--cp", default="1,2", help="context-parallel sizes (ranks of one thread each)")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--million", action="store_true",
                   help="only the 1,048,576-token LRU LM step: context_parallel=2 + block checkpointing")
    p.add_argument("--width", type=int, default=0,
                   help="d_model (and the LRU's d_state) instead of 256 (--million: 64, to fit 24 GB)")
    p.add_argument("--one", nargs=3, metavar=("KIND", "L", "POLICY"), help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    set_width(args.width or (64 if args.million else D_MODEL))
    steps = args.steps or (2 if args.quick else 3)
    if args.one:
        kind, L, policy = args.one[0], int(args.one[1]), args.one[2]
        r = (one(kind, L, policy, args.chunk, steps) if args.ranks == 1
             else one_context_parallel(kind, L, policy, args.chunk, steps, args.ranks))
        print(json.dumps(r))
        return
    print(f"# B=1, d_model={D_MODEL}, {N_LAYERS} layers, {args.threads} thread(s) per rank, chunk={args.chunk}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}; torch {torch.__version__}")
    if args.million:
        L = 1 << 20
        r = run_row("lru", L, "block", 2, args, args.steps or 1)
        if isinstance(r, str):
            print(f"lru L={L} context_parallel=2 block {r}")
            return
        print(f"lru L={L} context_parallel=2 block: {r['s']:.1f} s/step, {L / r['s']:.0f} tokens/s, "
              f"peak {r['mb_per_rank']:.0f} MB per rank, {r['mb']:.0f} MB in all")
        print(f"million_tokens_per_s={L / r['s']:.0f}")
        return
    lengths = [int(v) for v in args.lengths.split(",")] if args.lengths else (
        [1024, 4096, 16384] if args.quick else [1024, 4096, 16384, 65536, 262144])
    kinds, policies, cps = args.kinds.split(","), args.policies.split(","), [int(c) for c in args.cp.split(",")]
    rows: dict[tuple[str, int, str, int], dict] = {}
    print(f"{'kind':<10} {'L':>7} {'policy':<6} {'cp':>3} {'s/step':>8} {'us/token':>9} {'x per-token vs L0':>18} "
          f"{'peak MB':>9} {'MB/rank':>8} {'time vs none':>13} {'mem vs none':>12}")
    for kind in kinds:
        for L in lengths:
            for cp in cps:
                for policy in policies:
                    if cp > 1 and policy == "chunk":
                        continue  # chunk checkpointing passes states along one rank's time
                    r = run_row(kind, L, policy, cp, args, steps)
                    if isinstance(r, str):
                        print(f"{kind:<10} {L:>7} {policy:<6} {cp:>3} {r}", flush=True)
                        continue
                    rows[kind, L, policy, cp] = r
                    base, none = rows.get((kind, lengths[0], policy, cp)), rows.get((kind, L, "none", 1))
                    per_token = r["s"] / L
                    print(f"{kind:<10} {L:>7} {policy:<6} {cp:>3} {r['s']:>8.3f} {1e6 * per_token:>9.2f} "
                          f"{per_token / (base['s'] / lengths[0]) if base else float('nan'):>17.2f}x "
                          f"{r['mb']:>9.0f} {r.get('mb_per_rank', r['mb']):>8.0f} "
                          f"{r['s'] / none['s'] if none else float('nan'):>12.2f}x "
                          f"{r['mb'] / none['mb'] if none and none['mb'] > 0 else float('nan'):>11.2f}x", flush=True)
    kind = "selective" if "selective" in kinds else kinds[0]
    L = 65536 if 65536 in lengths else lengths[-1]
    for policy in ("block", "chunk"):
        a, b = rows.get((kind, L, policy, 1)), rows.get((kind, L, "none", 1))
        ok = a and b and b["mb"] > 0
        print(f"{policy}_vs_none_L{L}: memory {a['mb'] / b['mb'] if ok else float('nan'):.3f}x, "
              f"time {a['s'] / b['s'] if ok else float('nan'):.2f}x")
    a, b = rows.get((kind, L, "none", 1)), rows.get((kind, lengths[0], "none", 1))
    if a and b:
        print(f"per_token_L{L}_vs_L{lengths[0]}={(a['s'] / L) / (b['s'] / lengths[0]):.2f}")
    a, b = rows.get((kind, L, "chunk", 1)), rows.get((kind, L, "none", 1))
    print(f"chunk_memory_vs_none_L{L}={a['mb'] / b['mb'] if a and b and b['mb'] > 0 else float('nan'):.3f}")


if __name__ == "__main__":
    main()
