"""Training throughput: LRU, S4D, selective SSM and Transformer backbones of matched size.

    python benchmarks/throughput.py [--quick] [--threads 1] [--device cpu|cuda] [--tokens 16384]

One training step = forward + backward + AdamW step of a language model (byte vocabulary, next-
token cross-entropy) on random tokens, at a constant number of tokens per batch (B·L = --tokens),
for L = 256, 1024, 4096, 16384 (--quick: 256, 1024, 4096, 8192 tokens per batch, 2 timed steps).
Every model has n_layers = 2 and its natural state size (LRU: N = H; S4D: 32 complex modes per
channel, the S4D paper's N = 64, as an FFT convolution (s4d) and as its recurrence (s4d_scan);
selective: N = 16, expand 2, with the fused selective scan (selective) and with its [B, L, E·N]
state materialised through linear_scan (selective_scan); Transformer: head dimension 32); d_model
is chosen per model so that the parameter counts match the LRU's at d_model = 128 (printed).

Columns: median ms per step, training tokens/s, peak memory during the steps (CPU: growth of the
peak resident set size over the size before the first step, in a fresh process per row; CUDA:
torch.cuda.max_memory_allocated), and the time per token relative to the same model at L/4. A
linear-time recurrence stays near 1x per token from L to 4L (4x per sequence); attention's
quadratic term pushes it towards 4x per token (16x per sequence) once it dominates.

The last line is `lru_vs_transformer_speedup_L4096=<ratio>` (Transformer step time / LRU step time
at L = 4096) for scripts. On a shared CPU, threads spinning in OpenMP barriers steal the other
jobs' cores: OMP_WAIT_POLICY=PASSIVE is set before torch is imported, and one thread is the default.
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
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssm_train.nn import Backbone, get_layer, mixer_factory, param_groups  # noqa: E402

VOCAB, N_LAYERS, REFERENCE_D_MODEL = 256, 2, 128


@dataclass(frozen=True)
class Shape:
    kind: str  # the Backbone's mixer: a registered model.kind
    d_state: int  # LRU: N; S4D: complex modes per channel; selective: N; transformer: head dim
    multiple: int  # d_model must be a multiple of this (transformer: the head dimension)
    layer: dict | None = None  # fields of the kind's config (model.<kind>.*), e.g. S4D's mode
    selective_backend: str = "auto"  # selective: auto (fused on CPU) | scan (materialised [B, L, E·N])


SHAPES = {
    "lru": Shape("lru", REFERENCE_D_MODEL, 8),
    "s4d": Shape("s4d", 32, 8, {"mode": "conv"}),
    "s4d_scan": Shape("s4d", 32, 8, {"mode": "scan"}),
    "selective": Shape("selective", 16, 8),
    "selective_scan": Shape("selective", 16, 8, selective_backend="scan"),
    "transformer": Shape("transformer", 32, 32),
    "rglru": Shape("rglru", 1, 8),  # Hawk's RG-LRU block (its state is d_rnn wide: d_state unused)
}
KINDS = tuple(SHAPES)


def build(kind: str, d_model: int) -> Backbone:
    s = SHAPES[kind]
    config = get_layer(s.kind).config_cls(**(s.layer or {}))
    return Backbone(vocab_size=VOCAB, d_model=d_model, n_layers=N_LAYERS, mixer=mixer_factory(s.kind, s.d_state, config))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_d_model(kind: str, target: int) -> int:
    """The multiple of the shape's step whose parameter count is closest to target."""
    s = SHAPES[kind]
    candidates = range(s.multiple, 8 * REFERENCE_D_MODEL + 1, s.multiple)
    with torch.device("meta"):  # counts only: no memory, no init cost
        return min(candidates, key=lambda h: abs(n_params(build(kind, h)) - target))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# One row, in its own process on CPU (so that the peak resident size belongs to this row alone)


def measure(kind: str, d_model: int, L: int, tokens: int, device: str, repeats: int, budget_s: float) -> dict:
    torch.manual_seed(0)
    os.environ["SSM_TRAIN_SELECTIVE_BACKEND"] = SHAPES[kind].selective_backend
    B = max(1, tokens // L)
    model = build(kind, d_model).to(device)
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.1), lr=1e-3)
    x = torch.randint(0, VOCAB, (B, L + 1), device=device)

    def step() -> None:
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    step()  # warm-up: builds the C++ scan or compiles Triton kernels, allocates optimizer state
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    ms = 1e3 * statistics.median(times)
    return {"kind": kind, "L": L, "B": B, "ms": ms, "tok_s": B * L / (ms / 1e3), "peak": max(peak, 0), "n": len(times)}


def run_row(args, kind: str, d_model: int, L: int) -> dict:
    if args.device == "cuda":  # one process: max_memory_allocated resets per row
        return measure(kind, d_model, L, args.tokens, "cuda", args.repeats, args.budget)
    cmd = [sys.executable, __file__, "--worker", kind, str(d_model), str(L), "--tokens", str(args.tokens),
           "--repeats", str(args.repeats), "--budget", str(args.budget), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L up to 4096, 2 timed steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per batch, B·L (default 16384; quick 8192)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per row (default 3, quick 2)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per row at most")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "D_MODEL", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.tokens = args.tokens or (8192 if args.quick else 16384)
    if args.worker:
        kind, d_model, L = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(measure(kind, d_model, L, args.tokens, "cpu", args.repeats, args.budget)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or "lru" not in kinds or "transformer" not in kinds:
        parser.error(f"--kinds must include lru and transformer, from {KINDS}; got {args.kinds!r}")
    if args.tokens < 4096:
        parser.error(f"--tokens must be >= 4096 (one sequence of the L = 4096 row), got {args.tokens}")
    lengths = [L for L in ((256, 1024, 4096) if args.quick else (256, 1024, 4096, 16384)) if L <= args.tokens]

    with torch.device("meta"):
        target = n_params(build("lru", REFERENCE_D_MODEL))
    d_models = {k: matched_d_model(k, target) for k in kinds}
    load_before = os.getloadavg()
    print(f"device={args.device} threads={args.threads} tokens/batch={args.tokens} n_layers={N_LAYERS} "
          f"vocab={VOCAB} torch={torch.__version__}")
    w = max(12, *map(len, kinds))  # the model column
    print(f"{'model':<{w}} d_model d_state  params")
    for k in kinds:
        with torch.device("meta"):
            p = n_params(build(k, d_models[k]))
        print(f"{k:<{w}} {d_models[k]:>7} {SHAPES[k].d_state:>7} {p:>7,}  ({p / target:.3f}x LRU)")
    print()

    header = (f"{'model':<{w}} {'L':>6} {'B':>4} | {'ms/step':>9} {'tokens/s':>9} {'peak MB':>8} | "
              f"{'x per token vs L/4':>18}")
    print(header)
    print("-" * len(header))
    rows: dict[tuple[str, int], dict] = {}
    per_token = lambda k, L: rows[k, L]["ms"] / (rows[k, L]["B"] * L)  # noqa: E731
    growth = lambda k, L: per_token(k, L) / per_token(k, L // 4)  # noqa: E731
    for k in kinds:
        for L in lengths:
            r = rows[k, L] = run_row(args, k, d_models[k], L)
            g = f"{growth(k, L):.2f}x" if (k, L // 4) in rows else "-"
            print(f"{k:<{w}} {L:>6} {r['B']:>4} | {r['ms']:>9.1f} {r['tok_s']:>9.0f} {r['peak'] / 2**20:>8.1f} | {g:>18}",
                  flush=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-minute; "
          f"{os.cpu_count()} CPUs)")

    print("\ncost growth from L to 4L, time per token ratio (1.00 = linear time; 4.00 = quadratic):")
    for k in kinds:
        steps = [f"{L // 4}->{L}: {growth(k, L):.2f}x" for L in lengths if (k, L // 4) in rows]
        print(f"  {k:<{w}} " + ", ".join(steps))
    if ("lru", 1024) in rows and ("lru", 16384) in rows:
        print(f"lru time per token, L=16384 / L=1024: {per_token('lru', 16384) / per_token('lru', 1024):.2f}x "
              "(target <= 1.3x)")
    speedup = rows["transformer", 4096]["ms"] / rows["lru", 4096]["ms"]
    print(f"lru_vs_transformer_speedup_L4096={speedup:.2f}")


if __name__ == "__main__":
    main()
