"""Context parallelism (ssm_train.ops.context) on 2 and 4 gloo ranks on CPU against one process.

One launch of tests/ops/context_worker.py per group size runs every case on its ranks and saves
the gathered outputs and gradients (a loss that weights every output position differently, so a
gradient routed to the wrong step or rank shows); the tests compare them with linear_scan /
selective_scan / causal_depthwise_conv run here on the whole sequence: to 1e-10 in float64 and
complex128, 1e-5 (relative to 1 + max|reference|) in float32 and complex64. Two deliberately
broken backwards (an all_gather whose backward keeps only the local gradient; s_r with its
gradient dropped) must fail the same comparison, so that it is shown to bite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssm_train.ops import context
from ssm_train.ops.context import ContextGroup, combine_over_ranks, cp_linear_scan, halo, split_sequence
from ssm_train.ops.scan import linear_scan
from tests.nn.scan_checks import assert_close_to
from tests.ops import context_worker as cw

WORKER = Path(__file__).resolve().parent / "context_worker.py"
WORLDS = (2, 4)


def tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5


@pytest.fixture(scope="module", params=WORLDS, ids=lambda n: f"{n}ranks")
def world(request, tmp_path_factory) -> tuple[int, dict]:
    """(N, results): one run of every case on N ranks."""
    n = request.param
    out = tmp_path_factory.mktemp(f"context{n}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(WORKER), "run", str(out), str(n)], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"worker on {n} ranks exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return n, torch.load(out / f"world{n}.pt", weights_only=True)


def real_loss(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (y * w).real.sum() if y.is_complex() else (y * w).sum()


def scan_reference(case: dict) -> dict[str, torch.Tensor]:
    full = cw.make_scan_inputs(case)
    grads = case.get("grads", ("a", "b", "h0"))
    a, b = (full[k].clone().requires_grad_(k in grads) for k in ("a", "b"))
    h0 = None if full["h0"] is None else full["h0"].clone().requires_grad_("h0" in grads)
    kw = {} if full["resets"] is None else {"resets": full["resets"]}
    with torch.set_grad_enabled(bool(grads)):
        h = linear_scan(a, b, h0, reverse=case["reverse"], **kw)
        if grads:
            real_loss(h, full["w"]).backward()
    out = dict(h=h.detach())
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if name in grads and x is not None:
            out[name] = x.grad
    return out


def compare(got: dict, ref: dict, tolerance: float, what: str) -> None:
    assert set(ref) <= set(got), f"{what}: worker saved {sorted(got)}, reference has {sorted(ref)}"
    for k, expected in ref.items():
        assert_close_to(got[k], expected, tolerance, f"{what}: {k}")


# ---------------------------------------------------------------------------------------------
# cp_linear_scan


SCAN_CASES = cw.scan_cases()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCAN_CASES))
def test_cp_linear_scan_matches_one_process(world, name):
    n, results = world
    case = SCAN_CASES[name]
    got = results["scan"][name]
    ref = scan_reference(case)
    if case.get("grads", ("a", "b", "h0")):
        assert ref["b" if "b" in ref else "h0"].abs().max() > 0.1, "guard: the gradient must not vanish"
    compare(got, ref, tol(case["dtype"]), f"{name} on {n} ranks")


@pytest.mark.slow
@pytest.mark.parametrize("variant", cw.BROKEN)
@pytest.mark.parametrize("name", cw.BROKEN_CASES)
def test_broken_backward_carry_fails_the_gradient_check(world, variant, name):
    """The forward is untouched (it still matches); the gradients of a, b, h0 no longer do."""
    n, results = world
    got, ref = results["broken"][f"{variant}:{name}"], scan_reference(SCAN_CASES[name])
    assert_close_to(got["h"], ref["h"], 1e-10, f"{variant}: forward")
    errors = {k: (got[k] - ref[k]).abs().max().item() / (1 + ref[k].abs().max().item()) for k in ("a", "b", "h0")}
    assert max(errors.values()) > 1e-2, f"{variant} on {n} ranks went unnoticed: relative errors {errors}"
    with pytest.raises(AssertionError):
        compare(got, ref, 1e-10, variant)


COMBINE_CASES = cw.combine_cases()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMBINE_CASES))
def test_combine_over_ranks_is_the_scan_over_ranks(world, name):
    """s_first = h0, s_r = P_{r∓1} s_{r∓1} + f_{r∓1}, and its gradients, for f, P, h0 given."""
    n, results = world
    case = COMBINE_CASES[name]
    full = cw.make_combine_inputs(case)
    f, P = (full[k][:n].clone().requires_grad_() for k in ("f", "P"))
    h0 = None if full["h0"] is None else full["h0"].clone().requires_grad_()
    order = range(n - 1, -1, -1) if case["reverse"] else range(n)
    s, states = (torch.zeros_like(f[0]) if h0 is None else h0), {}
    for r in order:
        states[r] = s
        s = P[r] * s + f[r]
    states = torch.stack([states[r] for r in range(n)])
    (states * full["w"][:n]).real.sum().backward()
    ref = dict(s=states.detach(), f=f.grad, P=P.grad)
    if h0 is not None:
        ref["h0"] = h0.grad
    compare(results["combine"][name], ref, 1e-10, f"combine {name} on {n} ranks")


# ---------------------------------------------------------------------------------------------
# halo and a causal convolution through it


HALO_CASES = cw.halo_cases()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HALO_CASES))
def test_halo_values_and_gradients(world, name):
    n, results = world
    case = HALO_CASES[name]
    if case["width"] > cw.L // n:
        pytest.skip(f"width {case['width']} exceeds a slice of {cw.L // n} (one hop only)")
    full = cw.make_halo_inputs(case)
    x = full["x"].clone().requires_grad_()
    Lr, k = cw.L // n, case["width"]
    halos = []
    for r in range(n):
        src = r + 1 if case["reverse"] else r - 1
        if 0 <= src < n:
            start = src * Lr if case["reverse"] else (src + 1) * Lr - k
            halos.append(x[:, start:start + k])
        else:
            halos.append(torch.zeros_like(x[:, :k]))
    sum(real_loss(hr, full["w"][r]) for r, hr in enumerate(halos)).backward()
    got = results["halo"][name]
    assert_close_to(got["halo"], torch.stack(halos).detach(), 0, f"{name}: halo values")
    assert_close_to(got["x"], x.grad, 1e-12, f"{name}: gradient of x")
    assert x.grad.abs().sum() > 0


@pytest.mark.slow
def test_causal_conv_with_halo_matches_one_process(world):
    from ssm_train.ops.conv import causal_depthwise_conv

    n, results = world
    full = cw.make_conv_inputs()
    x, weight, bias = (full[k].clone().requires_grad_() for k in ("x", "weight", "bias"))
    y, _ = causal_depthwise_conv(x, weight, bias)
    (y * full["w"]).sum().backward()
    compare(results["conv"]["k4"], dict(y=y.detach(), x=x.grad, weight=weight.grad, bias=bias.grad), 1e-10,
            f"conv on {n} ranks")


# ---------------------------------------------------------------------------------------------
# cp_selective_scan


SELECTIVE_CASES = cw.selective_cases()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SELECTIVE_CASES))
def test_cp_selective_scan_matches_one_process(world, name):
    from ssm_train.ops.selective_scan import selective_scan

    n, results = world
    case = SELECTIVE_CASES[name]
    full = cw.make_selective_inputs(case)
    leaves = {k: full[k].clone().requires_grad_() for k in ("x", "dt", "A", "B", "C")}
    h0 = None if full["h0"] is None else full["h0"].clone().requires_grad_()
    y, h_last = selective_scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], h0=h0,
                               resets=full["resets"], return_state=True)
    (y * full["w"]).sum().backward()
    ref = dict(y=y.detach(), **{k: v.grad for k, v in leaves.items()})
    if h0 is not None:
        ref["h0"] = h0.grad
    got = results["selective"][name]
    compare(got, ref, tol(case["dtype"]), f"selective {name} on {n} ranks")
    assert_close_to(got["h_last"][-1], h_last.detach(), tol(case["dtype"]), "the last rank's final state")


# ---------------------------------------------------------------------------------------------
# One process: the group of size 1, splitting, errors


def test_split_sequence_slices_and_refuses_uneven_lengths():
    x = torch.arange(24.0).view(1, 12, 2)
    parts = [split_sequence(x, ContextGroup(None, r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts, 1), x) and parts[1].shape == (1, 4, 2)
    with pytest.raises(ValueError, match="does not divide by the group size 5"):
        split_sequence(x, ContextGroup(None, 0, 5))


@pytest.mark.parametrize("reverse", [False, True])
def test_size_one_group_is_linear_scan(reverse):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    assert ContextGroup.of(None) == ContextGroup(None, 0, 1)
    torch.testing.assert_close(cp_linear_scan(a, b, h0, reverse=reverse), linear_scan(a, b, h0, reverse=reverse))
    assert torch.equal(combine_over_ranks(b[:, 0], a[:, 0], h0), h0)
    assert torch.equal(halo(b, 2), torch.zeros(2, 2, 3, dtype=torch.float64))
    assert torch.equal(context.gather_sequence(b), b)


def test_errors_before_any_communication():
    b = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match="carry must be"):
        cp_linear_scan(torch.ones(2), b, carry="fix")
    with pytest.raises(ValueError, match="width must be in"):
        halo(b, 5)
    with pytest.raises(TypeError, match="widen"):
        combine_over_ranks(b[:, 0], b[:, 0], torch.zeros(1, 2, dtype=torch.complex64))


def test_decay_product():
    a = torch.tensor([0.5, -0.9], dtype=torch.float32)
    torch.testing.assert_close(context.decay_product(a, 3), a.double().pow(3).float())
    resets = torch.tensor([[False, False, False], [False, True, False]])
    assert torch.equal(context.decay_product(a, 3, resets)[1], torch.zeros(2))
    av = torch.rand(2, 3, 2)
    torch.testing.assert_close(context.decay_product(av, 3, resets), av.prod(1) * torch.tensor([[1.0], [0.0]]))
