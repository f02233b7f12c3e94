"""The multi-process side of tests/ops/test_context.py: N gloo ranks on CPU run every case once.

    python tests/ops/context_worker.py run OUT N            # the test cases -> OUT/world<N>.pt
    python tests/ops/context_worker.py bench OUT N [carry]  # the timing of the module docstring

``run``: each rank takes its slice of the same seeded inputs (`make_scan_inputs` etc., which the
test imports to compute the single-process reference), runs the context-parallel op, weights
every output position differently (loss = Re Σ h ⊙ w) and back-propagates; rank 0 saves the
gathered outputs and gradients (a constant a, A, h0: summed over ranks) per case name. The
process group is set up through a file in OUT (no TCP port to pick). ``bench``: B=1, L=65536,
D=512 complex64, constant a; one thread per rank; forward+backward times and ru_maxrss per rank
(N = 1 runs plain linear_scan).
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch.distributed as dist  # noqa: E402

from ssm_train.ops import context  # noqa: E402
from ssm_train.ops.context import ContextGroup  # noqa: E402

B, L, D = 3, 24, 3  # L divides by 2 and 4; the slice boundaries of both are 6, 12, 18
E, N_STATE = 3, 2
REAL = {torch.complex128: torch.float64, torch.complex64: torch.float32}


# ---------------------------------------------------------------------------------------------
# Cases (imported by the test)


def scan_cases() -> dict[str, dict]:
    """name -> dict(dtype, varying, h0, reverse, resets, carry[, real_a, grads])."""
    cases = {}
    for dtype in (torch.float64, torch.complex128, torch.float32, torch.complex64):
        for varying in (False, True):
            for h0 in (False, True):
                for reverse in (False, True):
                    for resets in (False, True):
                        carries = ("rescan", "correct") if dtype in (torch.float64, torch.complex128) else ("rescan",)
                        for carry in carries:
                            name = (f"{str(dtype)[6:]}-{'varying' if varying else 'const'}-{'h0' if h0 else 'zero'}-"
                                    f"{'rev' if reverse else 'fwd'}-{'resets' if resets else 'noresets'}-{carry}")
                            cases[name] = dict(dtype=dtype, varying=varying, h0=h0, reverse=reverse, resets=resets,
                                               carry=carry)
    for reverse in (False, True):  # a real a on a complex b (promoted)
        cases[f"real_a-complex_b-{'rev' if reverse else 'fwd'}"] = dict(
            dtype=torch.complex128, varying=False, h0=True, reverse=reverse, resets=False, carry="rescan", real_a=True)
    # only h0 needs a gradient (a, b plain tensors): the other ranks must still join the backward
    cases["h0_grad_only"] = dict(dtype=torch.complex128, varying=True, h0=True, reverse=False, resets=False,
                                 carry="rescan", grads=("h0",))
    cases["h0_grad_only-rev"] = dict(dtype=torch.float64, varying=False, h0=True, reverse=True, resets=False,
                                     carry="rescan", grads=("h0",))
    cases["no_grad"] = dict(dtype=torch.float64, varying=True, h0=True, reverse=False, resets=False, carry="rescan",
                            grads=())
    return cases


BROKEN = ("local_grad_gather", "detached_carry")
BROKEN_CASES = ("float64-varying-h0-fwd-noresets-rescan", "complex128-const-h0-rev-noresets-rescan")


def make_scan_inputs(case: dict, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """The whole sequence: a ([D] or [B, L, D], inside the unit disk), b, h0, resets, w."""
    g = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]

    def normal(*shape):
        if dtype.is_complex:
            return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                                 torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    shape = (B, L, D) if case["varying"] else (D,)
    radius = 0.5 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex and not case.get("real_a"):
        phase = torch.rand(shape, generator=g, dtype=torch.float64) * 6.283185307179586
        a = torch.polar(radius, phase).to(dtype)
    else:
        a = (radius * torch.where(torch.rand(shape, generator=g) < 0.3, -1.0, 1.0)).to(REAL.get(dtype, dtype))
    b = normal(B, L, D)
    h0 = normal(B, D) if case["h0"] else None
    resets = None
    if case["resets"]:
        resets = torch.rand(B, L, generator=g) < 0.08
        resets[0, [6, 12, 18]] = True  # at slice boundaries (both directions cut there)
        resets[0, 0] = True
        resets[1, [5, 13]] = True  # next to them
        resets[2] = False  # one row carries through every slice
    w = normal(B, L, D)
    return dict(a=a, b=b, h0=h0, resets=resets, w=w)


def combine_cases() -> dict[str, dict]:
    """combine_over_ranks on its own (cp_linear_scan folds h0 on the first rank itself)."""
    return {f"{str(dtype)[6:]}-P{'D' if const else 'BD'}-{'h0' if h0 else 'zero'}-{'rev' if reverse else 'fwd'}":
            dict(dtype=dtype, const=const, h0=h0, reverse=reverse)
            for dtype in (torch.float64, torch.complex128) for const in (False, True) for h0 in (False, True)
            for reverse in (False, True)}


def make_combine_inputs(case: dict, seed: int = 4) -> dict[str, torch.Tensor | None]:
    """f [4, B, D], P [4, D] or [4, B, D], h0 [B, D], w [4, B, D]: rank r takes row r."""
    g = torch.Generator().manual_seed(seed)
    shape = (4, B, D, 2) if case["dtype"].is_complex else (4, B, D)
    cast = torch.view_as_complex if case["dtype"].is_complex else (lambda t: t)

    def rnd(*shape):
        return cast(torch.randn(*shape, generator=g, dtype=torch.float64))

    P = rnd(*((4, D) if case["const"] else (4, B, D)), *shape[3:]) * 0.5
    return dict(f=rnd(*shape), P=P, h0=rnd(*shape[1:]) if case["h0"] else None, w=rnd(*shape))


def halo_cases() -> dict[str, dict]:
    return {f"{str(dtype)[6:]}-w{width}-{'rev' if reverse else 'fwd'}": dict(dtype=dtype, width=width, reverse=reverse)
            for dtype in (torch.float64, torch.complex128) for width in (1, 3, 6) for reverse in (False, True)}


def make_halo_inputs(case: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """x [B, L, D] (the whole sequence) and per-rank weights w [4, B, width, D] for the halo's loss."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, 2, generator=g, dtype=torch.float64)
    w = torch.randn(4, B, case["width"], D, 2, generator=g, dtype=torch.float64)
    if case["dtype"].is_complex:
        return dict(x=torch.view_as_complex(x), w=torch.view_as_complex(w))
    return dict(x=x[..., 0], w=w[..., 0])


CONV_K = 4


def make_conv_inputs(seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B, L, D, generator=g, dtype=torch.float64),
                weight=torch.randn(D, 1, CONV_K, generator=g, dtype=torch.float64),
                bias=torch.randn(D, generator=g, dtype=torch.float64),
                w=torch.randn(B, L, D, generator=g, dtype=torch.float64))


def selective_cases() -> dict[str, dict]:
    cases = {}
    for dtype in (torch.float64, torch.float32):
        for h0 in (False, True):
            for resets in (False, True):
                cases[f"{str(dtype)[6:]}-{'h0' if h0 else 'zero'}-{'resets' if resets else 'noresets'}"] = dict(
                    dtype=dtype, h0=h0, resets=resets)
    return cases


def make_selective_inputs(case: dict, seed: int = 3) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    x = rnd(B, L, E)
    dt = (0.05 + 0.3 * torch.rand(B, L, E, generator=g, dtype=torch.float64)).to(dtype)
    A = (-0.2 - torch.rand(E, N_STATE, generator=g, dtype=torch.float64)).to(dtype)
    Bm, Cm = rnd(B, L, N_STATE), rnd(B, L, N_STATE)
    h0 = rnd(B, E, N_STATE) if case["h0"] else None
    resets = None
    if case["resets"]:
        resets = torch.rand(B, L, generator=g) < 0.08
        resets[0, [6, 12, 18]] = True
        resets[1, [0, 5, 13]] = True
        resets[2] = False
    w = rnd(B, L, E)
    return dict(x=x, dt=dt, A=A, B=Bm, C=Cm, h0=h0, resets=resets, w=w)


# ---------------------------------------------------------------------------------------------
# Broken variants: each must fail the gradient check


class _LocalGradGather(torch.autograd.Function):
    """all_gather whose backward keeps only this rank's own gradient (no all_reduce)."""

    @staticmethod
    def forward(ctx, x, cg):
        ctx.rank = cg.rank
        parts = [torch.empty_like(context._real_view(x.contiguous())) for _ in range(cg.size)]
        dist.all_gather(parts, context._real_view(x.contiguous()), group=cg.group)
        out = torch.stack(parts)
        return torch.view_as_complex(out) if x.is_complex() else out

    @staticmethod
    def backward(ctx, g):
        return g[ctx.rank], None


class _DropGrad(torch.autograd.Function):
    """s_r in the forward; no gradient for it in the backward (the carry's gradient is lost)."""

    @staticmethod
    def forward(ctx, s):
        return s.view_as(s)

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(g)


def patched(variant: str):
    """A context manager that breaks the backward carry of `context` in one way."""
    import contextlib

    @contextlib.contextmanager
    def patch():
        saved = context.all_gather, context.combine_over_ranks
        if variant == "local_grad_gather":
            context.all_gather = lambda x, group=None: _LocalGradGather.apply(x, ContextGroup.of(group))
        elif variant == "detached_carry":
            combine = saved[1]
            context.combine_over_ranks = lambda *a, **k: _DropGrad.apply(combine(*a, **k))
        else:
            raise ValueError(variant)
        try:
            yield
        finally:
            context.all_gather, context.combine_over_ranks = saved

    return patch()


# ---------------------------------------------------------------------------------------------
# Running the cases


def _leaf(x: torch.Tensor | None, grad: bool = True) -> torch.Tensor | None:
    return None if x is None else x.detach().clone().requires_grad_(grad)


def _sum_over_ranks(x: torch.Tensor | None, like: torch.Tensor, cg: ContextGroup) -> torch.Tensor:
    x = torch.zeros_like(like) if x is None else x.detach().clone()
    dist.all_reduce(context._real_view(x), group=cg.group)
    return x


def _gathered(x: torch.Tensor | None, like_slice: torch.Tensor, cg: ContextGroup) -> torch.Tensor:
    x = torch.zeros_like(like_slice) if x is None else x.detach()
    return context.gather_sequence(x, cg)


def run_scan_case(case: dict, cg: ContextGroup) -> dict[str, torch.Tensor]:
    full = make_scan_inputs(case)
    grads = case.get("grads", ("a", "b", "h0"))
    varying = case["varying"]
    a = _leaf(context.split_sequence(full["a"], cg) if varying else full["a"], "a" in grads)
    b = _leaf(context.split_sequence(full["b"], cg), "b" in grads)
    h0 = _leaf(full["h0"], "h0" in grads)
    resets = None if full["resets"] is None else context.split_sequence(full["resets"], cg)
    w = context.split_sequence(full["w"], cg)
    with torch.set_grad_enabled(bool(grads)):
        h = context.cp_linear_scan(a, b, h0, resets=resets, reverse=case["reverse"], group=cg, carry=case["carry"])
        if grads:
            loss = (h * w).real.sum() if h.is_complex() else (h * w).sum()
            loss.backward()
    out = dict(h=context.gather_sequence(h.detach(), cg))
    if grads:
        out["b"] = _gathered(b.grad, b, cg)
        out["a"] = _gathered(a.grad, a, cg) if varying else _sum_over_ranks(a.grad, a, cg)
        if h0 is not None:
            out["h0"] = _sum_over_ranks(h0.grad, h0, cg)
    return out


def run_combine_case(case: dict, cg: ContextGroup) -> dict[str, torch.Tensor]:
    full = make_combine_inputs(case)
    f, P, h0 = _leaf(full["f"][cg.rank]), _leaf(full["P"][cg.rank]), _leaf(full["h0"])
    s = context.combine_over_ranks(f, P, h0, cg, reverse=case["reverse"])
    (s * full["w"][cg.rank]).real.sum().backward()
    out = dict(s=context.all_gather(s.detach(), cg), f=context.all_gather(f.grad, cg),
               P=context.all_gather(P.grad, cg))
    if h0 is not None:
        out["h0"] = _sum_over_ranks(h0.grad, h0, cg)
    return out


def run_halo_case(case: dict, cg: ContextGroup) -> dict[str, torch.Tensor]:
    full = make_halo_inputs(case)
    x = _leaf(context.split_sequence(full["x"], cg))
    y = context.halo(x, case["width"], cg, reverse=case["reverse"])
    loss = (y * full["w"][cg.rank]).real.sum()
    loss.backward()
    return dict(halo=context.all_gather(y.detach(), cg), x=_gathered(x.grad, x, cg))


def run_conv_case(cg: ContextGroup) -> dict[str, torch.Tensor]:
    from ssm_train.ops.conv import causal_depthwise_conv

    full = make_conv_inputs()
    x = _leaf(context.split_sequence(full["x"], cg))
    weight, bias = _leaf(full["weight"]), _leaf(full["bias"])
    tail = context.halo(x, CONV_K - 1, cg).transpose(1, 2)  # [B, E, K-1]
    y, _ = causal_depthwise_conv(x, weight, bias, tail=tail)
    (y * context.split_sequence(full["w"], cg)).sum().backward()
    return dict(y=context.gather_sequence(y.detach(), cg), x=_gathered(x.grad, x, cg),
                weight=_sum_over_ranks(weight.grad, weight, cg), bias=_sum_over_ranks(bias.grad, bias, cg))


def run_selective_case(case: dict, cg: ContextGroup) -> dict[str, torch.Tensor]:
    full = make_selective_inputs(case)
    sl = {k: _leaf(context.split_sequence(full[k], cg)) for k in ("x", "dt", "B", "C")}
    A, h0 = _leaf(full["A"]), _leaf(full["h0"])
    resets = None if full["resets"] is None else context.split_sequence(full["resets"], cg)
    y, h_last = context.cp_selective_scan(sl["x"], sl["dt"], A, sl["B"], sl["C"], h0=h0, resets=resets,
                                          return_state=True, group=cg)
    (y * context.split_sequence(full["w"], cg)).sum().backward()
    out = dict(y=context.gather_sequence(y.detach(), cg), h_last=context.all_gather(h_last.detach(), cg))
    out.update({k: _gathered(v.grad, v, cg) for k, v in sl.items()})
    out["A"] = _sum_over_ranks(A.grad, A, cg)
    if h0 is not None:
        out["h0"] = _sum_over_ranks(h0.grad, h0, cg)
    return out


def _init(out: Path, rank: int, world: int, tag: str = "") -> ContextGroup:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / f'rendezvous{world}{tag}'}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=90))
    return ContextGroup.of(None)


def run(rank: int, world: int, out: Path) -> None:
    cg = _init(out, rank, world)
    results: dict[str, dict] = {"scan": {}, "broken": {}, "combine": {}, "halo": {}, "selective": {}, "conv": {}}
    for name, case in scan_cases().items():
        results["scan"][name] = run_scan_case(case, cg)
    for variant in BROKEN:
        for name in BROKEN_CASES:
            with patched(variant):
                results["broken"][f"{variant}:{name}"] = run_scan_case(scan_cases()[name], cg)
    for name, case in combine_cases().items():
        results["combine"][name] = run_combine_case(case, cg)
    for name, case in halo_cases().items():
        if case["width"] <= L // world:
            results["halo"][name] = run_halo_case(case, cg)
    results["conv"]["k4"] = run_conv_case(cg)
    for name, case in selective_cases().items():
        results["selective"][name] = run_selective_case(case, cg)
    if rank == 0:
        torch.save(results, out / f"world{world}.pt")
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The measurement


def bench(rank: int, world: int, out: Path, carry: str, Lb: int = 65536, Db: int = 512, repeats: int = 3) -> None:
    torch.set_num_threads(1)
    from ssm_train.ops.scan import linear_scan

    cg = _init(out, rank, world, f"-{carry}") if world > 1 else ContextGroup(None, 0, 1)
    g = torch.Generator().manual_seed(0)
    a = torch.polar(0.9 + 0.1 * torch.rand(Db, generator=g), 6.28 * torch.rand(Db, generator=g)).requires_grad_()
    Lr = Lb // world
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    b = torch.randn(1, Lr, Db, dtype=torch.complex64, generator=g).requires_grad_()
    w = torch.randn(1, Lr, Db, dtype=torch.complex64, generator=g)
    times = []
    for _ in range(repeats + 1):
        a.grad = b.grad = None
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        h = linear_scan(a, b) if world == 1 else context.cp_linear_scan(a, b, group=cg, carry=carry)
        (h * w).real.sum().backward()
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - t0)
        del h
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = dict(rank=rank, world=world, carry=carry, median_s=sorted(times[1:])[len(times[1:]) // 2],
               times_s=times, maxrss_mb=peak / 1024, maxrss_above_start_mb=(peak - base) / 1024)
    (out / f"bench{world}-{carry}-rank{rank}.json").write_text(json.dumps(res))
    if world > 1:
        dist.destroy_process_group()


def main(argv: list[str]) -> None:
    import torch.multiprocessing as mp

    mode, out, world = argv[0], Path(argv[1]), int(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if mode == "run":
        mp.spawn(run, args=(world, out), nprocs=world)
    elif mode == "bench":
        carry = argv[3] if len(argv) > 3 else "rescan"
        if world == 1:
            bench(0, 1, out, carry)
        else:
            mp.spawn(bench, args=(world, out, carry), nprocs=world)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
