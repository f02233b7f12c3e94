"""linear_scan(..., resets=): the state restarts at document starts, on every backend.

The oracle is the definition itself: a window of documents scanned with resets equals each
document scanned alone from a zero state (forward; reverse: from the document's own end, with h0
reaching only the last document), and the reference loop with resets equals it too.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_train.ops import backend
from ssm_train.ops.backend import cpp_available
from ssm_train.ops.scan import cuts, flip_resets, linear_scan, reference_scan

needs_cpp = pytest.mark.skipif(not cpp_available(), reason=f"C++ scan extension did not build: {backend.load_cpp()}")
BACKENDS = ["reference", "torch", pytest.param("cpp", marks=needs_cpp)]


def inputs(B: int, L: int, D: int, complex_: bool, varying: bool, seed: int, radius: float | None = None):
    g = torch.Generator().manual_seed(seed)
    shape = (B, L, D) if varying else (D,)
    r = torch.full(shape, radius, dtype=torch.float64) if radius else torch.rand(shape, generator=g, dtype=torch.float64)
    if complex_:
        a = torch.polar(r, 2 * math.pi * torch.rand(shape, generator=g, dtype=torch.float64))
        b = torch.randn(B, L, D, generator=g, dtype=torch.complex128)
        h0 = torch.randn(B, D, generator=g, dtype=torch.complex128)
    else:
        a = r * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
        b = torch.randn(B, L, D, generator=g, dtype=torch.float64)
        h0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    return a, b, h0


def starts_to_resets(starts: list[list[int]], L: int) -> torch.Tensor:
    r = torch.zeros(len(starts), L, dtype=torch.bool)
    for i, row in enumerate(starts):
        r[i, row] = True
    return r


def per_document(a, b, h0, resets, reverse):
    """Each row cut into its documents, each scanned alone by the reference loop."""
    rows = []
    for i in range(b.shape[0]):
        bounds = [0, *resets[i, 1:].nonzero().flatten().add(1).tolist(), b.shape[1]]
        segs = []
        for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            a_seg = a if a.dim() == 1 else a[i:i + 1, s:e]
            last = k == len(bounds) - 2
            keep_h0 = (last and reverse) or (k == 0 and not reverse and not resets[i, 0])
            segs.append(reference_scan(a_seg, b[i:i + 1, s:e], h0[i:i + 1] if keep_h0 else None, reverse=reverse))
        rows.append(torch.cat(segs, 1))
    return torch.cat(rows, 0)


STARTS = [[0, 5, 11], [3], [], [0, 1, 2, 19]]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_resets_equal_documents_scanned_alone(name, reverse, varying, complex_):
    a, b, h0 = inputs(4, 20, 3, complex_, varying, seed=1)
    resets = starts_to_resets(STARTS, 20)
    got = linear_scan(a, b, h0, reverse=reverse, resets=resets, backend=name)
    want = per_document(a, b, h0, resets, reverse)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


@pytest.mark.parametrize("name", ["torch", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("complex_", [False, True])
def test_resets_gradients_match_the_reference(name, reverse, varying, complex_):
    a, b, h0 = inputs(4, 20, 3, complex_, varying, seed=2, radius=0.9999)
    resets = starts_to_resets(STARTS, 20)
    w = torch.randn(b.shape, dtype=b.dtype, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (lambda *x: linear_scan(*x, reverse=reverse, resets=resets, backend=name),
               lambda *x: per_document(*x, resets, reverse)):
        xs = leaves(a, b, h0)
        (fn(*xs) * w.conj()).real.sum().backward()
        grads.append([x.grad for x in xs])
    for got, want, what in zip(*grads, ("a", "b", "h0")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=what)


def test_skipping_the_reset_leaks_the_previous_document():
    a, b, h0 = inputs(4, 20, 3, True, False, seed=4, radius=0.99)
    resets = starts_to_resets(STARTS, 20)
    want = per_document(a, b, h0, resets, False)
    assert not torch.allclose(linear_scan(a, b, h0, backend="torch"), want, atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(L=st.integers(1, 24), p=st.floats(0.0, 0.5), seed=st.integers(0, 2**16), reverse=st.booleans(),
       varying=st.booleans())
def test_fast_path_equals_reference_on_random_boundaries(L, p, seed, reverse, varying):
    a, b, h0 = inputs(3, L, 2, True, varying, seed=seed)
    resets = torch.rand(3, L, generator=torch.Generator().manual_seed(seed)) < p
    got = linear_scan(a, b, h0, reverse=reverse, resets=resets, backend="torch")
    want = reference_scan(a, b, h0, reverse=reverse, resets=resets)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(want, per_document(a, b, h0, resets, reverse), rtol=1e-12, atol=1e-12)


def test_reverse_with_resets_is_the_forward_scan_of_the_flipped_window():
    a, b, h0 = inputs(4, 20, 3, True, True, seed=5)
    resets = starts_to_resets(STARTS, 20)
    rev = linear_scan(a, b, h0, reverse=True, resets=resets, backend="torch")
    fwd = linear_scan(a.flip(1), b.flip(1), h0, resets=_cut_starts(resets), backend="torch")
    torch.testing.assert_close(rev, fwd.flip(1), rtol=1e-12, atol=1e-12)


def _cut_starts(resets: torch.Tensor) -> torch.Tensor:
    """In the flipped window the cuts sit at the flipped document starts, except column 0 (h0
    is kept in reverse)."""
    f = flip_resets(resets).clone()
    f[:, 0] = False
    return f


def test_cuts_and_flip():
    r = starts_to_resets([[0, 3], [2]], 5)
    assert cuts(r).tolist() == r.tolist()
    assert cuts(r, reverse=True).tolist() == [[False, False, True, False, False], [False, True, False, False, False]]
    assert flip_resets(flip_resets(r)).tolist() == r.tolist()
    assert flip_resets(r).tolist() == [[True, False, True, False, False], [False, False, False, True, False]]


def test_a_window_starting_a_document_drops_h0_without_folding():
    a, b, h0 = inputs(2, 6, 3, True, False, seed=6)
    resets = starts_to_resets([[0], []], 6)
    got = linear_scan(a, b, h0, resets=resets, backend="torch")
    torch.testing.assert_close(got[0], linear_scan(a, b[:1], None, backend="torch")[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], linear_scan(a, b[1:], h0[1:], backend="torch")[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 6, dtype=torch.int64), "bool tensor"),
    (torch.zeros(2, 5, dtype=torch.bool), r"\[B, L\] = \[2, 6\]"),
    ([[True]], "bool tensor"),
])
def test_bad_resets_are_refused(bad, match):
    a, b, _ = inputs(2, 6, 3, False, False, seed=7)
    with pytest.raises((TypeError, ValueError), match=match):
        linear_scan(a, b, resets=bad)
