"""Benchmark `linear_scan` backends against the Python loop and the memory floor.

    python benchmarks/scan.py [--quick] [--threads N]

Table: backend (python loop, torch, cpp) × L × dtype (float32, complex64) × a (constant [D] or
time varying [B, L, D]); B = 8, D = 256. Columns: median ms of the forward and of
forward+backward, their ratio to the Python loop (speed-up) and to the memory floor.

Floor = minimal bytes moved / bandwidth of a large elementwise add (`torch.add(x, y, out=z)`,
3 arrays of 128 MiB) measured in this run, again just before each group of rows (the machine
is shared, so its bandwidth drifts; the column "add GB/s" shows the value used). Minimal bytes, in [B, L, D] arrays: time-varying a: forward
reads a, b and writes h (3), forward+backward also reads g, a, h and writes ∂b, ∂a (8);
constant a: 2 and 5.

The "python loop" is `reference_scan` (a loop over `unbind(1)` views) differentiated by autograd.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ssm_train.ops.backend import cpp_available
from ssm_train.ops.scan import linear_scan, reference_scan

B, D = 8, 256


def median_ms(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median wall time of fn() after one warm-up call; stops early once budget_s is spent."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return 1e3 * statistics.median(times)


def add_bandwidth(repeats: int) -> float:
    """Bytes/s of a large out-of-place add, 3 arrays of 128 MiB (far beyond the caches)."""
    n = 32 * 2**20
    x, y, z = torch.randn(n), torch.randn(n), torch.empty(n)
    ms = median_ms(lambda: torch.add(x, y, out=z), repeats, budget_s=2.0)
    return 3 * n * 4 / (ms * 1e-3)


def make_inputs(L: int, dtype: torch.dtype, varying: bool):
    g = torch.Generator().manual_seed(0)
    real = torch.float32
    if dtype.is_complex:
        radius = torch.rand(*(B, L, D) if varying else (D,), generator=g) * 0.1 + 0.9
        phase = torch.rand(radius.shape, generator=g) * 6.28
        a = torch.polar(radius, phase)
        b = torch.complex(torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g))
    else:
        a = torch.rand(*(B, L, D) if varying else (D,), generator=g, dtype=real) * 0.1 + 0.9
        b = torch.randn(B, L, D, generator=g)
    grad = torch.randn_like(b)
    return a.requires_grad_(), b.requires_grad_(), grad


def scan_fn(backend: str, a, b) -> Callable[[], torch.Tensor]:
    if backend == "python loop":
        return lambda: reference_scan(a, b)
    return lambda: linear_scan(a, b, backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L in (1024, 4096), fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lengths = (1024, 4096) if args.quick else (256, 1024, 4096, 16384)
    repeats = 5 if args.quick else 11
    backends = ["python loop", "torch"] + (["cpp"] if cpp_available() else [])
    if "cpp" not in backends:
        print("C++ extension unavailable: cpp rows skipped")

    print(f"B={B} D={D} threads={torch.get_num_threads()}")
    header = (f"{'backend':<12} {'dtype':<10} {'a':<8} {'L':>6} {'add GB/s':>8} | {'fwd ms':>8} {'x loop':>7}"
              f" {'x floor':>7} | {'fwd+bwd ms':>10} {'x loop':>7} {'x floor':>7}")
    print(header)
    print("-" * len(header))
    for dtype in (torch.float32, torch.complex64):
        for varying in (False, True):
            for L in lengths:
                a, b, grad = make_inputs(L, dtype, varying)
                bandwidth = add_bandwidth(5)
                array_bytes = b.numel() * b.element_size()
                floor_fwd = (3 if varying else 2) * array_bytes / bandwidth * 1e3
                floor_both = (8 if varying else 5) * array_bytes / bandwidth * 1e3
                # The Python loop is slow at long L: fewer repeats within a time budget.
                base: dict[str, float] = {}
                for backend in backends:
                    budget = 2.0 if backend == "python loop" else 10.0
                    fn = scan_fn(backend, a, b)
                    with torch.no_grad():
                        fwd = median_ms(fn, repeats, budget)
                    both = median_ms(lambda: torch.autograd.grad(fn(), (a, b), grad), repeats, budget)
                    if backend == "python loop":
                        base = {"fwd": fwd, "both": both}
                    print(f"{backend:<12} {str(dtype).removeprefix('torch.'):<10} "
                          f"{'varying' if varying else 'const':<8} {L:>6} {bandwidth / 1e9:>8.1f} | "
                          f"{fwd:>8.2f} {base['fwd'] / fwd:>6.1f}x {fwd / floor_fwd:>6.2f}x |"
                          f" {both:>10.2f} {base['both'] / both:>6.1f}x {both / floor_both:>6.2f}x",
                          flush=True)
                del a, b, grad
    print("x loop = Python-loop time / this time (higher is faster); "
          "x floor = this time / memory-floor time (1 = at the floor)")


if __name__ == "__main__":
    main()
