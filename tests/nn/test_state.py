"""Long sequences in the model: document resets and carried state, for every registered layer kind.

* resets: a packed window of 3 documents gives the outputs, and every parameter the gradient, of
  running each document alone from a zero state (float64, 1e-10); without the resets it does not;
* carried state: windows 1..k, each started from the previous window's last state, give one
  forward over their concatenation, values and gradients through the state;
* activation checkpointing recomputes exactly; `step(reset=...)` equals forward with resets.
"""

import pytest
import torch

from ssm_train.nn import LAYERS, Backbone, mixer_factory
from ssm_train.nn.registry import get_layer
from ssm_train.generate import sample
from ssm_train.nn.state import detach_state, zero_rows

V, H, N, B = 13, 8, 4, 2
KINDS = list(LAYERS)  # every registered kind, the Transformer baseline included (resets only)
RECURRENT = [k for k in KINDS if getattr(LAYERS[k].layer_cls, "carries_state", True)]
# S4D runs its convolution unless a window holds a boundary: test the recurrence mode as well
VARIANTS = {k: (k, None) for k in KINDS} | {"s4d_scan": ("s4d", {"mode": "scan"})}
RECURRENT_VARIANTS = [v for v, (k, _) in VARIANTS.items() if k in RECURRENT]
DOCS = [[0, 7, 18], [0, 5, 11]]  # document starts per row: 3 documents in a window of 24
L = 24


def model(variant: str, *, bidirectional: bool = False, seed: int = 0, **kw) -> Backbone:
    kind, fields = VARIANTS[variant]
    config = get_layer(kind).config_cls(**fields) if fields else None
    torch.manual_seed(seed)
    m = Backbone(vocab_size=V, d_model=H, n_layers=2, mixer=mixer_factory(kind, N, config),
                 bidirectional=bidirectional, **kw)
    return m.to(torch.float64).train()  # train mode: the gradients are what training sees


def tokens(length: int = L, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, length), generator=torch.Generator().manual_seed(seed))


def resets_of(starts: list[list[int]], length: int = L) -> torch.Tensor:
    r = torch.zeros(B, length, dtype=torch.bool)
    for b, row in enumerate(starts):
        r[b, row] = True
    return r


def weights(shape, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def grads(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def separate_documents(m: Backbone, x: torch.Tensor, starts: list[list[int]], w: torch.Tensor):
    """Oracle: each document of each row alone, from a zero state; outputs and Σ w·y gradients."""
    m.zero_grad()
    out = torch.empty(B, x.shape[1], V, dtype=torch.float64)
    for b, row in enumerate(starts):
        for s, e in zip(row, row[1:] + [x.shape[1]]):
            y = m(x[b : b + 1, s:e])
            (y * w[b : b + 1, s:e]).sum().backward()
            out[b, s:e] = y[0].detach()
    return out, grads(m)


def packed(m: Backbone, x: torch.Tensor, resets: torch.Tensor | None, w: torch.Tensor):
    m.zero_grad()
    y = m(x, resets=resets)
    (y * w).sum().backward()
    return y.detach(), grads(m)


def assert_close(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=tol, atol=tol, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_documents_equal_each_document_alone(variant, bidirectional):
    m, x, w = model(variant, bidirectional=bidirectional), tokens(), weights((B, L, V))
    want_y, want_g = separate_documents(m, x, DOCS, w)
    got_y, got_g = packed(m, x, resets_of(DOCS), w)
    torch.testing.assert_close(got_y, want_y, rtol=1e-10, atol=1e-10)
    assert_close(got_g, want_g)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_without_resets_documents_leak(variant):
    """The check above bites: skip the resets and the packed window no longer equals the oracle."""
    m, x, w = model(variant), tokens(), weights((B, L, V))
    want_y, want_g = separate_documents(m, x, DOCS, w)
    got_y, got_g = packed(m, x, None, w)
    assert (got_y - want_y).abs().max() > 1e-4
    assert max((got_g[n] - want_g[n]).abs().max() for n in want_g) > 1e-4


@pytest.mark.parametrize("with_resets", [False, True], ids=["one-document", "documents-cross-windows"])
@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_carried_state_equals_one_forward_over_the_concatenation(variant, with_resets):
    """Windows of 8, 5, 11 steps, each from the last state of the one before (not detached):
    the outputs and gradients of one forward over all 24 steps."""
    m, x, w = model(variant), tokens(), weights((B, L, V))
    resets = resets_of(DOCS) if with_resets else None
    m.zero_grad()
    y = m(x, resets=resets)
    (y * w).sum().backward()
    want_y, want_g = y.detach(), grads(m)

    m.zero_grad()
    state, outs = None, []
    for s, e in [(0, 8), (8, 13), (13, 24)]:
        r = None if resets is None else resets[:, s:e]
        y, state = m(x[:, s:e], resets=r, state=state, return_state=True)
        (y * w[:, s:e]).sum().backward(retain_graph=True)
        outs.append(y.detach())
    torch.testing.assert_close(torch.cat(outs, 1), want_y, rtol=1e-10, atol=1e-10)
    assert_close(grads(m), want_g)


@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_a_reset_at_a_window_start_drops_the_carried_state(variant):
    """Row 0 starts a new stream (resets[0, 0]): it equals a fresh start; row 1 continues."""
    m, x = model(variant).eval(), tokens()
    _, state = m(x[:, :10], return_state=True)
    r = torch.zeros(B, L - 10, dtype=torch.bool)
    r[0, 0] = True
    got = m(x[:, 10:], resets=r, state=state)
    torch.testing.assert_close(got[0], m(x[:1, 10:])[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], m(x[:, 10:], state=state)[1], rtol=1e-10, atol=1e-10)
    assert (got[1] - m(x[1:, 10:])[0]).abs().max() > 1e-6  # the carried state matters


@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_forward_state_is_the_step_state(variant):
    m, x = model(variant).eval(), tokens(length=9)
    _, state = m(x, return_state=True)
    step_state = None
    for t in range(x.shape[1]):
        _, step_state = m.step(x[:, t], step_state)
    flat = lambda s: [t for t in torch.utils._pytree.tree_leaves(s)]  # noqa: E731
    for a, b in zip(flat(state), flat(step_state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_step_with_reset_equals_forward_with_resets(variant):
    m, x, r = model(variant).eval(), tokens(), resets_of(DOCS)
    want = m(x, resets=r)
    state, outs = None, []
    with torch.no_grad():
        for t in range(L):
            y, state = m.step(x[:, t], state, reset=r[:, t])
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), want.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["lru", "s4d", "selective", "transformer"])
def test_block_checkpointing_recomputes_exactly(variant):
    x, w, r = tokens(), weights((B, L, V)), resets_of(DOCS)
    results = []
    for policy in ("none", "block"):
        m = model(variant, checkpointing=policy)
        results.append(packed(m, x, r, w))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    assert_close(results[1][1], results[0][1], tol=0)


def test_checkpointing_with_carried_state():
    x, w = tokens(), weights((B, L, V))
    runs = []
    for policy in ("none", "block"):
        m = model("lru", checkpointing=policy)
        state = None
        for s, e in [(0, 12), (12, 24)]:
            y, state = m(x[:, s:e], state=state, return_state=True)
            (y * w[:, s:e]).sum().backward()
            state = detach_state(state)
        runs.append(grads(m))
    assert_close(runs[1], runs[0], tol=0)


def test_bad_checkpointing_and_state_arguments():
    with pytest.raises(ValueError, match="checkpointing must be one of"):
        model("lru", checkpointing="layer")
    with pytest.raises(ValueError, match="state must be a list of 2"):
        model("lru")(tokens(), state=[None])
    with pytest.raises(ValueError, match="bidirectional Block carries no state"):
        model("lru", bidirectional=True)(tokens(), return_state=True)
    with pytest.raises(ValueError, match="attention carries no state"):
        model("transformer")(tokens(), return_state=True)


def test_zero_rows_zeroes_only_those_rows_of_every_tensor():
    state = (torch.ones(2, 3), [torch.ones(2, 4, 5, dtype=torch.complex64)])
    out = zero_rows(state, torch.tensor([True, False]))
    assert out[0][0].abs().sum() == 0 and out[0][1].abs().sum() == 3
    assert out[1][0][0].abs().sum() == 0 and out[1][0][1].abs().sum() == 20


@pytest.mark.parametrize("with_state", [False, True], ids=["from-zero", "carried"])
@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_time_chunked_checkpointing_equals_the_whole_sequence(variant, with_state):
    """checkpointing='chunk' (chunks of 5 steps over 24, documents crossing chunks): the same
    outputs and gradients as no checkpointing, also from a carried state."""
    x, w, r = tokens(), weights((B, L, V)), resets_of(DOCS)
    results = []
    for policy in ("none", "chunk"):
        m = model(variant, checkpointing=policy, checkpoint_chunk=5)
        state = m(tokens(seed=5), return_state=True)[1] if with_state else None
        m.zero_grad()
        y = m(x, resets=r, state=detach_state(state))
        (y * w).sum().backward()
        results.append((y.detach(), grads(m)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-10)
    assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize("policy", ["none", "block", "chunk"])
def test_a_loss_in_the_forward_is_the_loss_of_the_outputs_chunked_or_not(policy):
    """forward(targets=, loss_fn=) (what training calls): under chunk checkpointing the head and
    the loss run per time chunk (5 steps over 24, an ignored target in some chunks), with the
    same loss, gradients and carried state as the loss of the whole outputs without checkpointing."""
    x, r = tokens(), resets_of(DOCS)
    y = tokens(seed=3)
    y[0, 2] = y[1, 20] = -100

    def loss_fn(logits, targets):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")

    m = model("lru", checkpointing=policy, checkpoint_chunk=5)
    got, got_state = m(x, resets=r, return_state=True, targets=y, loss_fn=loss_fn)
    got.backward()
    got_g = grads(m)
    ref = model("lru")
    logits, want_state = ref(x, resets=r, return_state=True)
    want = loss_fn(logits, y)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert_close(got_g, grads(ref))
    torch.testing.assert_close(detach_state(got_state), detach_state(want_state), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="targets"):
        m(x, loss_fn=loss_fn)


def test_chunk_checkpointing_refuses_models_without_a_carried_state():
    for kw in ({"variant": "transformer"}, {"variant": "lru", "bidirectional": True}):
        with pytest.raises(ValueError, match="needs a causal recurrent model"):
            model(**kw, checkpointing="chunk")


@pytest.mark.parametrize("variant", RECURRENT_VARIANTS)
def test_sampling_restarts_at_eos_as_training_does(variant):
    """With eos_id the state is zeroed before each <eos> is fed: what follows an <eos> in the
    prompt is sampled as if the prompt had started there."""
    m = model(variant).eval()
    eos = 3
    long = torch.tensor([5, 1, 4, eos, 2, 6])
    short = torch.tensor([eos, 2, 6])
    want = sample(m, short, 8, temperature=0.0, eos_id=eos)
    assert torch.equal(sample(m, long, 8, temperature=0.0, eos_id=eos), want)
    free = [sample(model(variant, seed=s).eval(), long, 8, temperature=0.0) for s in range(3)]
    wants = [sample(model(variant, seed=s).eval(), short, 8, temperature=0.0, eos_id=eos) for s in range(3)]
    assert any(not torch.equal(f, w) for f, w in zip(free, wants)), "guard: without eos_id the prefix must matter"
