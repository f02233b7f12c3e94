"""Optimizer groups: a partition of the parameters, with the LRU paper's treatment of recurrent ones."""

import pytest
import torch

from ssm_train.nn import LRU, S4D, Backbone, SelectiveSSM, mixer_factory, param_groups
from ssm_train.nn.params import recurrent_parameter_ids

RECURRENT = {  # written out per layer kind, independent of the layers' `recurrent_params`
    "lru": {"nu_log", "theta_log", "gamma_log", "B_re", "B_im"},
    "real": {"nu_log", "gamma_log", "B_re"},
    "s4d": {"log_dt", "A_log_re", "A_im", "B_re", "B_im"},
    "selective": {"A_log", "dt_proj.bias"},
    "rglru": {"Lambda"},
}


def backbone(kind: str, **kw) -> Backbone:
    return Backbone(vocab_size=13, d_model=8, n_layers=2, mixer=mixer_factory(kind, 4), **kw)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", list(RECURRENT))
def test_groups_partition_the_parameters(kind, bidirectional):
    m = backbone(kind, bidirectional=bidirectional, norm="rms", mlp="mlp")
    groups = param_groups(m, lr=1e-3, weight_decay=0.1, recurrent_lr_factor=0.25)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in m.parameters()}, "a parameter is in no group"
    assert [g["name"] for g in groups] == ["recurrent", "no_decay", "decay"]
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in m.named_parameters()}

    recurrent = {names[id(p)].split("mixer.")[-1].split("mixer_bwd.")[-1] for p in by_name["recurrent"]["params"]}
    assert recurrent == RECURRENT[kind]
    assert by_name["recurrent"]["lr"] == pytest.approx(0.25e-3) and by_name["recurrent"]["weight_decay"] == 0
    assert by_name["no_decay"]["lr"] == 1e-3 and by_name["no_decay"]["weight_decay"] == 0
    assert by_name["decay"]["lr"] == 1e-3 and by_name["decay"]["weight_decay"] == 0.1

    no_decay = {names[id(p)] for p in by_name["no_decay"]["params"]}
    decay = {names[id(p)] for p in by_name["decay"]["params"]}
    assert all(n in no_decay for n in names.values() if "norm" in n or n.endswith("bias") and "dt_proj" not in n)
    assert "encoder.weight" in decay and "head.weight" in decay
    assert all(p.dim() >= 2 for p in by_name["decay"]["params"])


def test_tied_weights_appear_once():
    m = backbone("lru", tie_weights=True)
    groups = param_groups(m, lr=1.0, weight_decay=0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert ids.count(id(m.encoder.weight)) == 1 and len(ids) == len(set(ids))


@pytest.mark.parametrize("layer", [LRU(4, 3), LRU(4, 3, complex=False, normalize=False), S4D(4, 3), SelectiveSSM(4, 3)])
def test_layers_mark_their_recurrent_parameters(layer):
    marked = recurrent_parameter_ids(layer)
    named = {n for n, p in layer.named_parameters() if id(p) in marked}
    assert named and named <= set(type(layer).recurrent_params)


def test_groups_drive_an_optimizer():
    m = backbone("s4d")
    opt = torch.optim.AdamW(param_groups(m, lr=1e-2, weight_decay=0.5, recurrent_lr_factor=0.1))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m(torch.randint(0, 13, (2, 5))).logsumexp(-1).mean().backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"recurrent_lr_factor": 0.0}, "recurrent_lr_factor"),
    ],
)
def test_bad_arguments(kwargs, word):
    args = {"lr": 1e-3, "weight_decay": 0.1, **kwargs}
    with pytest.raises(ValueError, match=word):
        param_groups(LRU(4, 3), **args)
