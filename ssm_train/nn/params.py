"""Optimizer parameter groups.

    recurrent   parameters a layer lists in its `recurrent_params` class attribute (nu_log,
                theta_log, gamma_log, B_re, B_im; log_dt, A_log_re, A_im; A_log, dt_proj.bias):
                lr · recurrent_lr_factor and no weight decay, as in the LRU paper
    no_decay    every other parameter with fewer than 2 dimensions (norm weights and biases, all
                biases, skip vectors D): lr, no weight decay
    decay       the rest (weight matrices, embeddings, conv kernels): lr and weight_decay

Layers mark their own recurrent parameters, so no global name matching is needed. Every
parameter lands in exactly one group; empty groups are left out; each group has a "name".
"""

from __future__ import annotations

from torch import nn


def recurrent_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters named by any submodule's `recurrent_params` (dotted names allowed)."""
    ids = set()
    for module in model.modules():
        for name in getattr(module, "recurrent_params", ()):
            try:
                ids.add(id(module.get_parameter(name)))
            except AttributeError:  # e.g. theta_log on a real LRU, gamma_log without normalize
                pass
    return ids


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, recurrent_lr_factor: float = 1.0
) -> list[dict]:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got lr={lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got weight_decay={weight_decay}")
    if not recurrent_lr_factor > 0:
        raise ValueError(f"recurrent_lr_factor must be > 0, got recurrent_lr_factor={recurrent_lr_factor}")
    recurrent = recurrent_parameter_ids(model)
    groups = {
        "recurrent": {"name": "recurrent", "params": [], "lr": lr * recurrent_lr_factor, "weight_decay": 0.0},
        "no_decay": {"name": "no_decay", "params": [], "lr": lr, "weight_decay": 0.0},
        "decay": {"name": "decay", "params": [], "lr": lr, "weight_decay": weight_decay},
    }
    for p in model.parameters():  # deduplicates shared (tied) parameters; frozen ones included
        key = "recurrent" if id(p) in recurrent else "no_decay" if p.dim() < 2 else "decay"
        groups[key]["params"].append(p)
    return [g for g in groups.values() if g["params"]]
