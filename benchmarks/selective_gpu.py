"""GPU benchmark of selective_scan's backends: the fused Triton kernels against the materialised scan
(exp(ΔA), ΔBx and h as [B, L, E·N] tensors through linear_scan), forward + backward.

    python benchmarks/selective_gpu.py            # B=8, E=1536, N=16 (Mamba-130M's d_inner), L = 1024, 4096
    python benchmarks/selective_gpu.py --dry-run  # tiny sizes on CPU through TRITON_INTERPRET=1

First a correctness check of both against the float64 loop (values and the five gradients, relative
error below 1e-4), then per L: median ms of forward + backward and peak memory above the inputs
(torch.cuda.max_memory_allocated), and the speed-up of triton over scan. The fused kernel never
writes the [B, L, E, N] state; the materialised one keeps a and h for the backward.

Exit status 1 if a check fails. The last line is `triton_vs_scan_speedup_L4096=<ratio>`: above 1
means the fused kernel should become selective_scan's default on CUDA (it is opt-in until measured).
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # must precede the import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from ssm_train.ops import selective_scan as ss  # noqa: E402


def make_inputs(Bsz: int, L: int, E: int, N: int, device, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, L, E, generator=g)
    dt = 0.1 * torch.rand(Bsz, L, E, generator=g)
    A = -torch.exp(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # Mamba's init
    B, C = torch.randn(Bsz, L, N, generator=g), torch.randn(Bsz, L, N, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, dt, A, B, C)]


def fwd_bwd(backend: str, ins, grad):
    ins = [t.detach().requires_grad_() for t in ins]
    y = ss.selective_scan(*ins, backend=backend)
    return y.detach(), torch.autograd.grad(y, ins, grad)


def check(device, Bsz: int, L: int, E: int, N: int) -> bool:
    ins64 = make_inputs(Bsz, L, E, N, device, torch.float64)
    grad = torch.randn(Bsz, L, E, device=device, dtype=torch.float64)
    ref_y, ref_g = fwd_bwd("reference", ins64, grad)
    ok = True
    for backend in ("triton", "scan"):
        y, gs = fwd_bwd(backend, [t.float() for t in ins64], grad.float())
        errs = [float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip((y, *gs), (ref_y, *ref_g))]
        good = max(errs) < 1e-4
        ok &= good
        print(f"check {backend:<6} B={Bsz} L={L} E={E} N={N}: max relative error {max(errs):.1e} "
              f"({'ok' if good else 'FAILED'})")
    return ok


def measure(backend: str, ins, grad, device, repeats: int) -> tuple[float, float]:
    def step():
        fwd_bwd(backend, ins, grad)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # compiles
    base = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else float("nan")
    return 1e3 * statistics.median(times), peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU under Triton's interpreter")
    args = parser.parse_args()
    if args.dry_run:
        device, sizes, lengths, repeats = torch.device("cpu"), (1, 2, 40, 4), (16, 32), 1
        ss.CHUNK = 8  # the interpreter is slow
        print("dry run: CPU, Triton's interpreter; the checks are real, the timings mean nothing")
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device (use --dry-run on CPU)")
        device, sizes, lengths, repeats = torch.device("cuda"), (8, 1536, 16), (1024, 4096), 5
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    ok = check(device, 2, 200 if not args.dry_run else 19, 70 if not args.dry_run else 33, 16 if not args.dry_run else 4)
    Bsz, E, N = (sizes[0], sizes[2], sizes[3]) if args.dry_run else sizes
    print(f"\n{'L':>6} {'backend':<7} {'ms fwd+bwd':>11} {'peak MiB':>9}")
    speedup = float("nan")
    for L in lengths:
        ins = make_inputs(Bsz, L, E, N, device)
        grad = torch.randn(Bsz, L, E, device=device)
        rows = {b: measure(b, ins, grad, device, repeats) for b in ("triton", "scan")}
        for b, (ms, peak) in rows.items():
            print(f"{L:>6} {b:<7} {ms:>11.2f} {peak:>9.0f}")
        speedup = rows["scan"][0] / rows["triton"][0]
        print(f"{L:>6} triton vs scan: {speedup:.2f}x faster")
    print(f"triton_vs_scan_speedup_L{lengths[-1]}={speedup:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
