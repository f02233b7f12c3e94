"""Context parallelism on the model side: one sequence split over the ranks of a group.

A layer that can run on a slice of the sequence sets the class attribute
``context_parallel = True`` and reads ``self.context`` (a `ContextGroup`, None when the whole
sequence is local); `set_context_parallel` sets it on a model's layers and refuses layers
that cannot. Inside a layer, the recurrence goes through `sequence_scan` (which is
`linear_scan` or `cp_linear_scan`) and a causal convolution reads the K-1 inputs before its
slice through `slice_tail`; S4D's convolution and the selective scan call the cp_ ops of
ssm_train/ops/context.py directly. Position-wise MLPs and norms need nothing.

What is refused under context parallelism, with the reason: a state passed in or returned
(truncated BPTT carries the last rank's state into the first rank's next window: not
implemented), and layers that reverse time by flipping the slice (SelectiveSSM, RG-LRU with
reverse=True: the flipped slice is another rank's).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor, nn

from ssm_train.ops.context import ContextGroup, GroupLike, cp_linear_scan, halo
from ssm_train.ops.scan import linear_scan


def active(layer: nn.Module) -> ContextGroup | None:
    """The layer's context group if the sequence is split (size > 1), else None."""
    cg = getattr(layer, "context", None)
    return cg if cg is not None and cg.size > 1 else None


def sequence_scan(layer: nn.Module, local: Callable[..., Tensor] = linear_scan) -> Callable[..., Tensor]:
    """``local`` (the layer module's `linear_scan`), or `cp_linear_scan` over the layer's group
    (same arguments)."""
    cg = active(layer)
    return local if cg is None else functools.partial(cp_linear_scan, group=cg)


def refuse_state(layer: nn.Module, state: object, return_state: bool) -> None:
    if active(layer) is not None and (state is not None or return_state):
        raise ValueError(f"{type(layer).__name__}: a carried state (model.carry_state, trainer.activation_"
                         "checkpointing=chunk) is not supported with trainer.context_parallel > 1")


def slice_tail(x: Tensor, width: int, resets: Tensor | None, group: ContextGroup) -> Tensor:
    """[B, E, width]: the ``width`` inputs before this rank's slice of x [B, Lr, E] (zeros on the
    first rank), as `causal_depthwise_conv`'s ``tail``. Each rank sends only inputs of its slice's
    last document, so a document that starts inside the previous slice's last ``width`` steps
    never reads the one before it; a reset at this slice's first step drops the tail in the conv."""
    if resets is not None:
        seg = resets.to(torch.int64).cumsum(1)
        x = x * (seg == seg[:, -1:]).unsqueeze(-1).to(x.dtype)
    return halo(x, width, group).transpose(1, 2)


def set_context_parallel(mixers: list[nn.Module], group: GroupLike) -> None:
    """Run each sequence mixer on this rank's slice of a sequence split over ``group`` (None: the
    default group; a ContextGroup of size 1 undoes it). Raises ValueError naming a layer that cannot."""
    cg = ContextGroup.of(group)
    for m in mixers:
        if not getattr(m, "context_parallel", False):
            raise ValueError(f"{type(m).__name__} cannot split a sequence over ranks (trainer.context_parallel); "
                             "use model.kind lru, s4d, selective or rglru")
        if getattr(m, "reverse", False) and getattr(m, "flips_time", False):
            raise ValueError(f"{type(m).__name__}(reverse=True) reverses time by flipping its slice, which "
                             "under trainer.context_parallel is another rank's: use a causal model or lru/s4d")
    for m in mixers:
        m.context = cg
