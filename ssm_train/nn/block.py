"""Pre-norm residual block: a sequence mixer (the recurrence), then a channel MLP.

    x = x + dropout(mixer(norm1(x)))
    x = x + dropout(mlp(norm2(x)))

The mixer comes from a factory, `mixer(d_model, reverse) -> nn.Module` (nn/registry.py makes one
per registered kind: `mixer_factory("lru", d_state=64)`), so the block knows no layer by name. A
bidirectional block runs a forward and a reversed mixer on the same normalised input and sums their
outputs (merge="sum") or concatenates and projects them (merge="concat"); it has no step(), since
the backward recurrence needs the future.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_train.nn.registry import MixerFactory, mixer_factory


def _lookup(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}") from None


# -- norms over the channel axis of [B, L, H] (and of [B, H] in step) --------------------------------


class ChannelBatchNorm(nn.BatchNorm1d):
    """BatchNorm over channels for [B, L, H] (statistics over batch and time) or [B, H] inputs.

    In eval mode both use the running statistics, so step() equals forward(); in training mode a
    step normalises with the statistics of one time step and does not match.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "layer": nn.LayerNorm,
    "rms": nn.RMSNorm,
    "batch": ChannelBatchNorm,
}


# -- channel MLPs ---------------------------------------------------------------------------------


class MLP(nn.Module):
    """W2 GELU(W1 x), hidden width mlp_ratio·H."""

    def __init__(self, d_model: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, round(mlp_ratio * d_model))
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.dropout(F.gelu(self.fc(x))))


class GLU(nn.Module):
    """W_o (W_a x ⊙ σ(W_g x)) (Dauphin et al. 2017), hidden width mlp_ratio·H."""

    def __init__(self, d_model: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, round(mlp_ratio * d_model))
        self.fc = nn.Linear(d_model, 2 * hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.fc(x).chunk(2, dim=-1)
        return self.proj(self.dropout(a * torch.sigmoid(g)))


MLPS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "glu": GLU}


def mixer_kwargs(resets: Tensor | None, state: Any, return_state: bool) -> dict[str, Any]:
    """Only the keywords in use, so that a mixer without resets or state support still runs
    plain windows (a new layer starts with forward(u) and adds them when it needs them)."""
    kw: dict[str, Any] = {}
    if resets is not None:
        kw["resets"] = resets
    if state is not None:
        kw["state"] = state
    if return_state:
        kw["return_state"] = True
    return kw


# -- the block ------------------------------------------------------------------------------------


class Block(nn.Module):
    """x + dropout(mixer(norm1(x))), then x + dropout(mlp(norm2(x))); mixer = mixer(d_model, reverse)."""

    def __init__(
        self,
        d_model: int,
        mixer: MixerFactory | None = None,
        norm: str = "layer",
        mlp: str = "glu",
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        bidirectional: bool = False,
        merge: str = "sum",
    ):
        super().__init__()
        make_mixer = mixer if mixer is not None else mixer_factory("lru")
        make_norm = _lookup(NORMS, norm, "norm")
        make_mlp = _lookup(MLPS, mlp, "mlp")
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat', got merge={merge!r}")
        self.bidirectional, self.merge = bidirectional, merge

        self.norm1 = make_norm(d_model)
        self.mixer = make_mixer(d_model, reverse=False)
        if bidirectional:
            self.mixer_bwd = make_mixer(d_model, reverse=True)
            if merge == "concat":
                self.merge_proj = nn.Linear(2 * d_model, d_model)
        self.norm2 = make_norm(d_model)
        self.mlp = make_mlp(d_model, mlp_ratio, dropout)
        self.dropout = nn.Dropout(dropout)

    def mix(self, x: Tensor, resets: Tensor | None = None, state: Any = None,
            return_state: bool = False) -> Tensor | tuple[Tensor, Any]:
        kw = mixer_kwargs(resets, state, return_state)
        out = self.mixer(x, **kw)
        y, state = out if return_state else (out, None)
        if self.bidirectional:
            y_bwd = self.mixer_bwd(x, **mixer_kwargs(resets, None, False))
            y = y + y_bwd if self.merge == "sum" else self.merge_proj(torch.cat([y, y_bwd], dim=-1))
        return (y, state) if return_state else y

    def forward(self, x: Tensor, resets: Tensor | None = None, state: Any = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, Any]:
        """x: [B, L, H] -> [B, L, H]; ``resets``, ``state``, ``return_state`` go to the mixer
        (nn/state.py); a bidirectional block carries no state (its backward half reads the future)."""
        if self.bidirectional and (state is not None or return_state):
            raise ValueError("a bidirectional Block carries no state across windows: its backward mixer reads the future")
        out = self.mix(self.norm1(x), resets, state, return_state)
        y, state = out if return_state else (out, None)
        x = x + self.dropout(y)
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return (x, state) if return_state else x

    def step(self, x_t: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One step: x_t [B, H], the mixer's state (None = zeros) -> (y_t [B, H], state)."""
        if self.bidirectional:
            raise RuntimeError("a bidirectional Block has no step(): its backward recurrence needs the future")
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + self.dropout(y)
        return x_t + self.dropout(self.mlp(self.norm2(x_t))), state
