"""One training step end to end: ssm-train's layer, the plain loop a user would write, and the floor.

    python benchmarks/step.py [--quick] [--kinds lru,selective,s4d] [--lengths 1024,4096] [--threads 1,2]
    python benchmarks/step.py --device cuda      # on a GPU: one row per kind and length

Model: a 2-layer residual stack x + mixer(LayerNorm(x)), B=8, H=256, random float32 input, loss
mean(y²), one step = forward + backward + AdamW. Three mixers per kind, with the same parameters:

* ``ssm-train``: the layer of ssm_train.nn (LRU with N=256; SelectiveSSM with N=16, expand 2);
* ``loop``: the layer written from the paper's equations with a Python loop over time (what a
  user writes first: complex tensors and autograd for the LRU, Mamba's equations for S6);
* ``floor``: the layer's dense projections alone, no recurrence: the LRU's one [H->2N] and one
  [2N->H] matmul; S6's in/x/dt/out projections and its depthwise convolution. No implementation
  of the layer can beat this: the ratio ssm-train / floor is what the recurrence and its glue
  cost on top of the matmuls.

Timing is interleaved (one step of each mixer in turn, --repeats rounds, median), in one process,
so the three share the machine's state; a warm-up step per mixer comes first. Peak memory is the
growth of the peak resident set in a fresh process per mixer (1 thread, --memory-steps steps,
median of 3 processes); on
CUDA, torch.cuda.max_memory_allocated over the same steps in the one process.
The last line, ``lru_step_vs_floor_L1024=<ratio>``, is the 1-thread LRU ratio for scripts.

``--kinds s4d`` times one S4D layer (FFT convolution, 32 modes, forward + backward) from
(B=2, L=4096, H=256) to (B=1, L=16384, H=512), with PyTorch's huge-page allocation on and off
(``THP_MEM_ALLOC_ENABLE``, which ``import ssm_train`` turns on; one fresh process each), next to what the step computes:
tokens B·L·H grow 4x, but the FFTs' work (5 transforms per batch row and channel, 3 more per
channel for the kernel, each n log n with n = 2L) grows 5.7x and the kernel's Vandermonde product
(H·N·L, not multiplied by B) 8x, so about 6x is the expected ratio, not 4x.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads steal the other jobs' cores

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ssm_train.nn import LRU, SelectiveSSM  # noqa: E402

B, H, N_LAYERS = 8, 256, 2
DEVICE = "cpu"  # --device; cuda: the same step on the GPU (synchronised), no thread counts
D_STATE = {"lru": 256, "selective": 16}
S4D_SHAPES = ((2, 4096, 256), (1, 16384, 512))  # (B, L, H): 4x the tokens·channels
S4D_MODES = 32
VARIANTS = ("ssm-train", "loop", "floor")


# -- the LRU, from the paper's equations, with a loop over time --------------------------------


class LoopLRU(nn.Module):
    """x_k = Λ x_{k-1} + γ ⊙ B u_k, y_k = Re(C x_k) + D ⊙ u_k, as complex tensors and a Python loop."""

    def __init__(self, lru: LRU):
        super().__init__()
        for name, p in lru.named_parameters():
            setattr(self, name, nn.Parameter(p.detach().clone()))

    def forward(self, u: Tensor) -> Tensor:
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C_re, self.C_im)
        bu = u.to(B.dtype) @ B.T
        x, xs = torch.zeros_like(bu[:, 0]), []
        for b_k in bu.unbind(1):  # unbind, not bu[:, k]: indexing makes the backward O(L²)
            x = lam * x + b_k
            xs.append(x)
        return (torch.stack(xs, 1) @ C.T).real + self.D * u


class LRUFloor(nn.Module):
    """The LRU's projections alone: one [H -> 2N] and one [2N -> H] matmul."""

    def __init__(self, d_model: int, d_state: int):
        super().__init__()
        self.w_in = nn.Linear(d_model, 2 * d_state, bias=False)
        self.w_out = nn.Linear(2 * d_state, d_model, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        return self.w_out(self.w_in(u))


# -- the selective SSM (S6), from Mamba's equations, with a loop over time ------------------------


def s6_projections(s6: SelectiveSSM, u: Tensor) -> tuple[Tensor, ...]:
    """What the loop and the floor share: x, z = in_proj(u); x = SiLU(conv(x)); δ, B, C = x_proj(x)."""
    x, z = s6.in_proj(u).chunk(2, dim=-1)
    x = F.silu(s6.conv1d(x.transpose(1, 2))[..., :u.shape[1]].transpose(1, 2))
    return x, z, *s6.x_proj(x).split([s6.dt_rank, s6.d_state, s6.d_state], dim=-1)


class LoopSelective(nn.Module):
    """Mamba's S6 with h [B, E, N] stepped in a Python loop (the layers are ssm-train's, shared)."""

    def __init__(self, s6: SelectiveSSM):
        super().__init__()
        self.s6 = s6

    def forward(self, u: Tensor) -> Tensor:
        s6 = self.s6
        x, z, delta, Bs, Cs = s6_projections(s6, u)
        dt = F.softplus(s6.dt_proj(delta))
        A = -torch.exp(s6.A_log)
        h, ys = x.new_zeros(u.shape[0], s6.d_inner, s6.d_state), []
        for x_k, dt_k, B_k, C_k in zip(x.unbind(1), dt.unbind(1), Bs.unbind(1), Cs.unbind(1)):
            h = torch.exp(dt_k[..., None] * A) * h + (dt_k * x_k)[..., None] * B_k[:, None, :]
            ys.append((h * C_k[:, None, :]).sum(-1))
        y = torch.stack(ys, 1) + s6.D * x
        return s6.out_proj(y * F.silu(z))


class SelectiveFloor(nn.Module):
    """S6's in/x/dt/out projections and its depthwise convolution, joined by the cheapest
    elementwise ops that make every projection reach the loss (no recurrence)."""

    def __init__(self, s6: SelectiveSSM):
        super().__init__()
        self.s6 = s6

    def forward(self, u: Tensor) -> Tensor:
        s6 = self.s6
        x, z, delta, Bs, Cs = s6_projections(s6, u)
        y = (x + s6.dt_proj(delta)) * F.silu(z)
        return s6.out_proj(y) + (Bs * Cs).sum(-1, keepdim=True)


# -- the stack and one step -------------------------------------------------------------------------


class Stack(nn.Module):
    def __init__(self, mixers: list[nn.Module]):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in mixers)
        self.mixers = nn.ModuleList(mixers)

    def forward(self, x: Tensor) -> Tensor:
        for norm, mixer in zip(self.norms, self.mixers):
            x = x + mixer(norm(x))
        return x


def build(kind: str, variant: str, seed: int = 0) -> Stack:
    """The three variants of one kind start from the same ssm-train layers (same seed)."""
    torch.manual_seed(seed)
    layers = [LRU(H, D_STATE[kind]) if kind == "lru" else SelectiveSSM(H, D_STATE[kind]) for _ in range(N_LAYERS)]
    if variant == "ssm-train":
        return Stack(layers)
    if kind == "lru":
        return Stack([LoopLRU(m) if variant == "loop" else LRUFloor(H, D_STATE[kind]) for m in layers])
    return Stack([LoopSelective(m) if variant == "loop" else SelectiveFloor(m) for m in layers])


def stepper(model: nn.Module, L: int, seed: int = 0) -> Callable[[], None]:
    g = torch.Generator().manual_seed(seed)
    model = model.to(DEVICE)
    x = torch.randn(B, L, H, generator=g).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    return step


def check_same_function(kind: str, L: int = 64) -> float:
    """The loop computes the layer ssm-train computes: max relative difference of the outputs."""
    x = torch.randn(2, L, H, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y, y_loop = build(kind, "ssm-train")(x), build(kind, "loop")(x)
    return ((y - y_loop).abs().max() / y.abs().max()).item()


def time_interleaved(kind: str, L: int, threads: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    steps = {v: stepper(build(kind, v), L) for v in VARIANTS}
    for step in steps.values():
        step()  # warm-up: the C++ build, the optimizer state, the allocator's first pages
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[v].append(time.perf_counter() - t0)
    return {v: 1e3 * statistics.median(t) for v, t in times.items()}


def peak_memory_mb(kind: str, variant: str, L: int, steps: int, runs: int = 3) -> float:
    """Growth of the peak resident set over `steps` steps, in a fresh 1-thread process (CUDA:
    the peak of allocated memory over the steps, in this process). The median of ``runs``
    processes: one process's peak moves by up to 40% with where glibc happens to place blocks."""
    if DEVICE == "cuda":
        step = stepper(build(kind, variant), L)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, "--worker", kind, variant, str(L), "--memory-steps", str(steps)]
    outs = [subprocess.run(cmd, check=True, capture_output=True, text=True).stdout for _ in range(runs)]
    return statistics.median(json.loads(out.strip().splitlines()[-1])["peak_mb"] for out in outs)


def worker(kind: str, variant: str, L: int, steps: int) -> None:
    torch.set_num_threads(1)
    step = stepper(build(kind, variant), L)
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    for _ in range(steps):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_mb": max(peak, 0) / 2**20}))


# -- S4D: from (B=2, L=4096, H=256) to (B=1, L=16384, H=512) ---------------------------------------


def s4d_work(B_: int, L: int, H_: int) -> dict[str, float]:
    """What one S4D conv layer's forward + backward computes, up to constants. `fft_conv`: per
    batch row and channel rfft(u), irfft(y); backward rfft(g), irfft(∂u), rfft(u) again; per
    channel rfft(K) forward and backward and irfft(∂K)."""
    n = 1 << (2 * L - 1).bit_length()
    return {"tokens": B_ * L * H_, "ffts": (5 * B_ * H_ + 3 * H_) * n * math.log2(n), "kernel": H_ * S4D_MODES * L}


def time_s4d(repeats: int) -> dict[tuple[int, int, int], float]:
    """Median ms per forward + backward of one S4D layer at each shape, interleaved, 1 thread."""
    from ssm_train.nn import S4D

    torch.set_num_threads(1)
    runs = {}
    for shape in S4D_SHAPES:
        torch.manual_seed(0)
        layer, u = S4D(shape[2], S4D_MODES), torch.randn(*shape, requires_grad=True)
        runs[shape] = lambda layer=layer, u=u: layer(u).square().mean().backward()
    times: dict[tuple[int, int, int], list[float]] = {s: [] for s in runs}
    for _ in range(repeats + 1):  # the first round warms up
        for shape, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[shape].append(time.perf_counter() - t0)
    return {s: 1e3 * statistics.median(t[1:]) for s, t in times.items()}


def time_s4d_in_process(thp: str, repeats: int) -> dict[tuple[int, int, int], float]:
    """`time_s4d` in a fresh process with THP_MEM_ALLOC_ENABLE=thp (PyTorch reads it once)."""
    cmd = [sys.executable, __file__, "--s4d-worker", "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "THP_MEM_ALLOC_ENABLE": thp})
    return {tuple(r["shape"]): r["ms"] for r in json.loads(out.stdout.strip().splitlines()[-1])}


def print_s4d(repeats: int) -> None:
    ms = {thp: time_s4d_in_process(thp, repeats) for thp in ("1", "0")}
    small, big = S4D_SHAPES
    w0, w1 = s4d_work(*small), s4d_work(*big)
    print(f"\ns4d layer (N={S4D_MODES} modes, conv, forward + backward, 1 thread): " + "; ".join(
        f"{k} x{w1[k] / w0[k]:.2f}" for k in w0) + " from the first shape to the second")
    print(f"{'huge pages':<10} | {'B,L,H = ' + ','.join(map(str, small)):>18} {','.join(map(str, big)):>12} | {'ratio':>6}")
    for thp in ("1", "0"):
        a, b = ms[thp][small], ms[thp][big]
        print(f"{'on' if thp == '1' else 'off':<10} | {a:>15.1f} ms {b:>9.1f} ms | {b / a:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L = 1024 only, 1 thread, 3 rounds")
    parser.add_argument("--kinds", default="lru,selective,s4d", help="comma-separated subset of lru,selective,s4d")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each times every variant once)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per memory process (0: skip memory)")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "VARIANT", "L"), help=argparse.SUPPRESS)
    parser.add_argument("--s4d-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    if args.s4d_worker:
        print(json.dumps([{"shape": s, "ms": t} for s, t in time_s4d(args.repeats).items()]))
        return
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]), args.memory_steps)
        return
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - {*D_STATE, "s4d"}:
        parser.error(f"--kinds must be a subset of lru,selective,s4d, got {args.kinds!r}")
    with_s4d = "s4d" in kinds and DEVICE == "cpu"  # the S4D rows are about the CPU's caches and pages
    kinds = [k for k in kinds if k != "s4d"]
    lengths = [1024] if args.quick else [int(x) for x in args.lengths.split(",")]
    threads = [1] if args.quick or DEVICE == "cuda" else [int(x) for x in args.threads.split(",")]
    repeats = 3 if args.quick else args.repeats

    device = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    print(f"device={device} B={B} H={H} n_layers={N_LAYERS} torch={torch.__version__} rounds={repeats} "
          f"load={os.getloadavg()[0]:.2f} cpus={os.cpu_count()}")
    for kind in kinds:
        print(f"{kind}: N={D_STATE[kind]}; loop vs ssm-train, max relative output difference "
              f"{check_same_function(kind):.1e}")
    header = (f"{'kind':<10} {'L':>5} {'thr':>3} | {'ssm-train':>9} {'loop':>9} {'floor':>9} ms | "
              f"{'vs floor':>8} {'vs loop':>8} | {'peak MB ssm/loop/floor':>24}")
    print(header + "\n" + "-" * len(header))
    ms: dict[tuple[str, int, int], dict[str, float]] = {}
    for kind in kinds:
        for L in lengths:
            mem = ({v: peak_memory_mb(kind, v, L, args.memory_steps) for v in VARIANTS}
                   if args.memory_steps > 0 else {v: math.nan for v in VARIANTS})
            for t in threads:
                r = ms[kind, L, t] = time_interleaved(kind, L, t, repeats)
                m = "/".join(f"{mem[v]:.0f}" for v in VARIANTS) if t == threads[0] else ""
                print(f"{kind:<10} {L:>5} {t:>3} | {r['ssm-train']:>9.1f} {r['loop']:>9.1f} {r['floor']:>9.1f}    | "
                      f"{r['ssm-train'] / r['floor']:>7.2f}x {r['loop'] / r['ssm-train']:>7.2f}x | {m:>24}", flush=True)
    if len(threads) > 1:
        print(f"\nspeed-up of {threads[-1]} threads over {threads[0]} (ssm-train): " + ", ".join(
            f"{k} L={L} {ms[k, L, threads[0]]['ssm-train'] / ms[k, L, threads[-1]]['ssm-train']:.2f}x"
            for k in kinds for L in lengths))
    if with_s4d:
        print_s4d(repeats)
    print(f"load after={os.getloadavg()[0]:.2f}")
    if ("lru", 1024, 1) in ms:
        r = ms["lru", 1024, 1]
        print(f"lru_step_vs_floor_L1024={r['ssm-train'] / r['floor']:.3f}")


if __name__ == "__main__":
    main()
