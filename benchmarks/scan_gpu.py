"""GPU benchmark of linear_scan's Triton backend: correctness against the torch backend, then median
milliseconds and the ratio to the memory floor, with accelerated-scan side by side if installed.

    python benchmarks/scan_gpu.py                 # B=8, D=1024, L = 4096, 16384, 65536 (~2-3 min)
    python benchmarks/scan_gpu.py --quick         # L = 4096, 16384
    python benchmarks/scan_gpu.py --sweep         # also time a grid of launch configs at L=16384
    python benchmarks/scan_gpu.py --dry-run       # tiny sizes on CPU through TRITON_INTERPRET=1

Floor = minimal bytes / bandwidth. Bytes, in [B, L, D] arrays of the element size (4 for float32,
8 for complex64): time-varying a: forward reads a, b and writes h (3), forward+backward also
reads g, a, h and writes ∂b, ∂a (8); constant a: 2 and 5. Bandwidth: a large `torch.add(x, y,
out=z)` (3 × 1 GiB) measured at the start of this run (an H100 SXM reaches about 3 TB/s of its
3.35 TB/s nominal). Target: forward+backward within 1.5x of the floor at B=8, D=1024.

accelerated-scan (pip install accelerated-scan; layout [B, D, L], time-varying gates only) is timed
on the same sizes when it imports: `accelerated_scan.scalar.scan` for float32 and
`accelerated_scan.complex.scan` for complex64.

Exit status 1 if a correctness check fails. The last line is `worst_fwd_bwd_x_floor=<ratio>`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "--dry-run" in sys.argv:  # must precede the import of triton (and of scan_triton)
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from ssm_train.ops import scan_triton  # noqa: E402
from ssm_train.ops.scan import linear_scan  # noqa: E402

TARGET_X_FLOOR = 1.5
REPEATS, WARMUP = 10, 2  # per measurement (the dry run lowers them: the interpreter is slow)


# ---------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median wall time of fn() (synchronised) after WARMUP calls (which also compile)."""
    for _ in range(WARMUP):
        fn()
    sync(device)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def add_bandwidth(device: torch.device, n: int) -> float:
    """Bytes/s of torch.add(x, y, out=z) on n float32 elements per array."""
    x, y, z = (torch.empty(n, device=device).normal_() for _ in range(3))
    ms = median_ms(lambda: torch.add(x, y, out=z), device)
    del x, y, z
    return 3 * n * 4 / (ms * 1e-3)


# ---------------------------------------------------------------------------------------------
# Inputs and one measurement


def make_inputs(B: int, L: int, D: int, dtype: torch.dtype, varying: bool, device: torch.device, r_min: float = 0.9):
    g = torch.Generator(device=device).manual_seed(0)
    shape = (B, L, D) if varying else (D,)
    radius = r_min + (1 - r_min) * torch.rand(shape, generator=g, device=device)
    if dtype.is_complex:
        a = torch.polar(radius, 6.283 * torch.rand(shape, generator=g, device=device))
        b = torch.complex(*(torch.randn(B, L, D, generator=g, device=device) for _ in range(2)))
    else:
        a, b = radius, torch.randn(B, L, D, generator=g, device=device)
    return a, b


def fwd_and_grads(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, backend: str):
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    h = linear_scan(a, b, backend=backend)
    grad_a, grad_b = torch.autograd.grad(h, (a, b), g)
    return h.detach(), grad_a, grad_b


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check(B: int, L: int, D: int, dtype, varying: bool, device, r_min: float = 0.9, tol: float = 1e-4) -> bool:
    """Triton against the torch backend (same float32 arithmetic, sequential order): h, ∂a, ∂b."""
    a, b = make_inputs(B, L, D, dtype, varying, device, r_min)
    g = torch.randn_like(b)
    got = fwd_and_grads(a, b, g, "triton")
    want = fwd_and_grads(a, b, g, "torch")
    errs = [relative_error(x, y) for x, y in zip(got, want)]
    ok = max(errs) <= tol
    cfg, _, n_seg = scan_triton._resolve(None, B, L, D, dtype.is_complex, scan_triton._multiprocessors(device))
    print(f"check B={B} L={L} D={D} {str(dtype)[6:]:<9} {'varying' if varying else 'const':<7} |a|>={r_min}: "
          f"rel err h {errs[0]:.1e}  ∂a {errs[1]:.1e}  ∂b {errs[2]:.1e}  "
          f"(block_d={cfg.block_d} chunk={cfg.chunk} segments={n_seg})  {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def time_ours(a, b, g, device, config=None) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of the raw kernel pair, as _LinearScan calls them."""
    def fwd():
        return scan_triton.forward(a, b, None, False, config)

    def fwd_bwd():
        h = scan_triton.forward(a, b, None, False, config)
        return scan_triton.backward(a, h, None, g, False, True, config)

    return median_ms(fwd, device), median_ms(fwd_bwd, device)


def time_accelerated_scan(B, L, D, dtype, device) -> tuple[float, float] | None:
    try:
        if dtype.is_complex:
            from accelerated_scan.complex import scan
        else:
            from accelerated_scan.scalar import scan
    except ImportError:
        return None
    a, b = make_inputs(B, L, D, dtype, True, device)
    gates, tokens = (x.reshape(B, L, D).transpose(1, 2).contiguous() for x in (a, b))  # [B, D, L]
    del a, b
    g = torch.randn_like(tokens)
    fwd = median_ms(lambda: scan(gates, tokens), device)
    gates.requires_grad_(), tokens.requires_grad_()
    fwd_bwd = median_ms(lambda: torch.autograd.grad(scan(gates, tokens), (gates, tokens), g), device)
    return fwd, fwd_bwd


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L = 4096, 16384 only")
    parser.add_argument("--lengths", default=None, help="comma-separated L (default 4096,16384,65536)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--sweep", action="store_true", help="also time 17 launch configs per dtype at L=16384 (~2 min)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU via Triton's interpreter")
    args = parser.parse_args()

    global REPEATS, WARMUP
    if args.dry_run:
        REPEATS, WARMUP = 1, 0
        device = torch.device("cpu")
        B, D, lengths, n_bw = 1, 8, [32, 128], 2**22
        checks = [(2, 64, 16, torch.complex64, True, 0.9), (1, 512, 8, torch.float32, False, 0.999)]
    else:
        if not torch.cuda.is_available():
            sys.exit("scan_gpu.py needs a CUDA device (or --dry-run for a CPU smoke test)")
        device = torch.device("cuda")
        B, D, n_bw = args.batch, args.dim, 2**28
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else (
            [4096, 16384] if args.quick else [4096, 16384, 65536])
        checks = [(B, 4096, D, dt, v, 0.9) for dt in (torch.float32, torch.complex64) for v in (False, True)]
        checks += [(1, 65536, 32, torch.complex64, True, 0.999), (1, 65536, 32, torch.float32, False, 0.999)]

    import triton

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device={name} torch={torch.__version__} triton={triton.__version__} B={B} D={D}")
    bw = add_bandwidth(device, n_bw)
    print(f"add bandwidth {bw / 1e9:.0f} GB/s (the floor below uses it)\n", flush=True)

    ok = all([check(*c[:5], device, r_min=c[5]) for c in checks])
    print()

    header = (f"{'dtype':<9} {'a':<7} {'L':>6} | {'fwd ms':>8} {'x floor':>7} | {'fwd+bwd ms':>10} {'x floor':>7} | "
              f"{'acc-scan fwd':>12} {'fwd+bwd':>8}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for dtype in (torch.float32, torch.complex64):
        for varying in (False, True):
            for L in lengths:
                a, b = make_inputs(B, L, D, dtype, varying, device)
                g = torch.randn_like(b)
                fwd, fwd_bwd = time_ours(a, b, g, device)
                del a, b, g
                item = B * L * D * (8 if dtype.is_complex else 4)
                floor_fwd = (3 if varying else 2) * item / bw * 1e3
                floor_all = (8 if varying else 5) * item / bw * 1e3
                worst = max(worst, fwd_bwd / floor_all)
                theirs = time_accelerated_scan(B, L, D, dtype, device) if varying else None
                acc = f"{theirs[0]:>12.3f} {theirs[1]:>8.3f}" if theirs else f"{'-':>12} {'-':>8}"
                print(f"{str(dtype)[6:]:<9} {'varying' if varying else 'const':<7} {L:>6} | {fwd:>8.3f} "
                      f"{fwd / floor_fwd:>6.2f}x | {fwd_bwd:>10.3f} {fwd_bwd / floor_all:>6.2f}x | {acc}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if not _accelerated_scan_available():
        print("(accelerated-scan not installed: pip install accelerated-scan for the side-by-side columns)")

    if args.sweep:
        grid = ((1, 2), (128,), (1, 2), (4,)) if args.dry_run else ((1, 2), (512, 1024, 2048), (1, 2), (4, 8))
        sweep(B, 128 if args.dry_run else 16384, D, device, bw, grid)

    print(f"\nforward+backward target: within {TARGET_X_FLOOR}x of the floor; worst above {worst:.2f}x "
          f"({'met' if worst <= TARGET_X_FLOOR else 'not met'}); correctness {'ok' if ok else 'FAILED'}")
    print(f"worst_fwd_bwd_x_floor={worst:.3f}")
    sys.exit(0 if ok else 1)


def _accelerated_scan_available() -> bool:
    try:
        import accelerated_scan  # noqa: F401
    except ImportError:
        return False
    return True


def sweep(B: int, L: int, D: int, device, bw: float, grid) -> None:
    """Forward+backward x floor, time-varying a, over a grid of launch configs: block_d = 64-byte
    rows × (1, 2), tiles of (512, 1024, 2048) elements, segments (1, 2), num_warps 4 (and 8 for
    the largest tile). Prints the best 6 and the default; about 1 minute per dtype on an H100."""
    print(f"\nlaunch-config sweep, forward+backward, time-varying a, B={B} L={L} D={D} (x floor)")
    widths, tiles, segment_counts, warp_counts = grid
    for dtype in (torch.float32, torch.complex64):
        a, b = make_inputs(B, L, D, dtype, True, device)
        g = torch.randn_like(b)
        floor_ms = 8 * B * L * D * (8 if dtype.is_complex else 4) / bw * 1e3
        default = scan_triton._resolve(None, B, L, D, dtype.is_complex, scan_triton._multiprocessors(device))[0]
        results = [(time_ours(a, b, g, device, default)[1] / floor_ms, default, "(default)")]
        for width in widths:
            block_d = width * (8 if dtype.is_complex else 16)
            for tile in tiles:
                for segments in segment_counts:
                    for warps in warp_counts:
                        if warps > 4 and tile < max(tiles):
                            continue
                        cfg = scan_triton.ScanConfig(max(16, tile // block_d), block_d, segments, warps)
                        results.append((time_ours(a, b, g, device, cfg)[1] / floor_ms, cfg, ""))
        for x, cfg, note in sorted(results, key=lambda r: r[0])[:6] + [results[0]]:
            print(f"  {str(dtype)[6:]:<9} {x:5.2f}x  {cfg} {note}", flush=True)
        del a, b, g


if __name__ == "__main__":
    main()
