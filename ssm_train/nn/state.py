"""The recurrent state a layer carries from one window of a long sequence to the next.

Every recurrent layer's ``forward(u, resets=None, state=None, return_state=False)`` starts from
``state`` (None = zeros) and, with ``return_state``, also returns the state after its last step,
in the same form as its ``step()`` state, so that

    forward(u[:, :k], return_state=True) -> (y1, s);  forward(u[:, k:], state=s) -> y2

gives the outputs of one forward over u (tests/nn/test_state.py). A state is a tensor, a tuple of
tensors (a convolution tail and a recurrence state) or None; batch rows are the first axis.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

State = Any  # Tensor | tuple[State, ...] | list[State] | None


def last_state(x: Tensor, state: Tensor | None, reverse: bool = False) -> Tensor:
    """The state after the last step of a scan's states x [B, L, ...] (x[:, 0] when ``reverse``);
    the initial state (or zeros) for an empty sequence."""
    if x.shape[1] == 0:
        return torch.zeros_like(x[:, :1]).squeeze(1) if state is None else state
    return x[:, 0] if reverse else x[:, -1]


def map_state(state: State, fn) -> State:
    """Apply ``fn`` to every tensor of a (nested) state."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(s, fn) for s in state)
    raise TypeError(f"a recurrent state is a tensor, a tuple/list of them or None, got {type(state).__name__}")


def detach_state(state: State) -> State:
    """The state with no history: truncated backpropagation through time stops here."""
    return map_state(state, Tensor.detach)


def zero_rows(state: State, rows: Tensor) -> State:
    """The state with the batch rows where ``rows`` [B] is True set to zero (a new stream)."""
    keep = ~rows.bool()
    return map_state(state, lambda s: s * keep.view(-1, *([1] * (s.dim() - 1))).to(s.dtype))
