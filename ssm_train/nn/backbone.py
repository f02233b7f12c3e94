"""The whole model: encoder -> n_layers × Block -> final norm -> head.

    encoder   token embedding (vocab_size) or linear map (d_input) to d_model
    blocks    pre-norm residual blocks (block.py), each mixer made by `mixer(d_model, reverse)`
              (registry.py: mixer_factory(kind, d_state, config); default: an LRU, d_state = 64)
    head      lm        logits over the vocabulary per step (optionally tied to the embedding)
              classify  pooling over time (mean, optionally masked, or last) then a linear map
              regress   a linear map per step to d_output

Initialisation: the embedding is N(0, 0.02²) (so tied logits start small, as in GPT-2/nanoGPT);
the recurrences use their own eigenvalue inits; every other layer keeps PyTorch's default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ssm_train.nn.block import NORMS, Block, _lookup
from ssm_train.nn.context import set_context_parallel
from ssm_train.nn.registry import MixerFactory
from ssm_train.nn.state import zero_rows
from ssm_train.ops.context import GroupLike

HEADS = ("lm", "classify", "regress")
POOLINGS = ("mean", "last")
# activation checkpointing: none; block (keep each block's input, recompute the block in the
# backward: the activations of one block alive instead of n_layers); chunk (run the stack and the
# final norm over time chunks of checkpoint_chunk steps, passing the recurrent states between them,
# and recompute one chunk at a time: activation memory of one chunk, whatever the sequence length;
# forward(targets=, loss_fn=) does the same for the head and the loss: the logits are never whole)
CHECKPOINTING = ("none", "block", "chunk")


class Backbone(nn.Module):
    def __init__(
        self,
        vocab_size: int | None = None,
        d_input: int | None = None,
        d_model: int = 128,
        n_layers: int = 4,
        mixer: MixerFactory | None = None,
        norm: str = "layer",
        mlp: str = "glu",
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        bidirectional: bool = False,
        head: str = "lm",
        d_output: int | None = None,
        pooling: str = "mean",
        tie_weights: bool = False,
        merge: str = "sum",
        checkpointing: str = "none",
        checkpoint_chunk: int = 4096,
    ):
        super().__init__()
        if (vocab_size is None) == (d_input is None):
            raise ValueError(
                f"give exactly one of vocab_size (tokens) or d_input (features), got {vocab_size=}, {d_input=}"
            )
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got head={head!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got pooling={pooling!r}")
        if head == "lm":
            if vocab_size is None:
                raise ValueError("head='lm' needs vocab_size (token input); use head='regress' for features")
            d_output = vocab_size if d_output is None else d_output
        elif d_output is None:
            raise ValueError(f"head={head!r} needs d_output (number of classes or targets)")
        if tie_weights and not (head == "lm" and d_output == vocab_size):
            raise ValueError("tie_weights=True needs head='lm' with d_output == vocab_size")
        if checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {CHECKPOINTING}, got {checkpointing!r}")
        self.head_kind, self.pooling, self.d_output = head, pooling, d_output
        if checkpoint_chunk < 1:
            raise ValueError(f"checkpoint_chunk must be >= 1 time steps, got {checkpoint_chunk}")
        self.checkpointing, self.checkpoint_chunk = checkpointing, checkpoint_chunk
        self.vocab_size, self.d_input = vocab_size, d_input

        if vocab_size is not None:
            self.encoder = nn.Embedding(vocab_size, d_model)
            nn.init.normal_(self.encoder.weight, std=0.02)
        else:
            self.encoder = nn.Linear(d_input, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, mixer, norm, mlp, mlp_ratio, dropout, bidirectional, merge)
            for _ in range(n_layers)
        )
        if checkpointing == "chunk" and (bidirectional or not all(getattr(b.mixer, "carries_state", True)
                                                                  for b in self.blocks)):
            raise ValueError("checkpointing='chunk' passes recurrent states between time chunks: it needs a "
                             "causal recurrent model (not bidirectional, not attention); use 'block'")
        self.norm_f = _lookup(NORMS, norm, "norm")(d_model)
        self.head = nn.Linear(d_model, d_output, bias=head != "lm")
        if tie_weights:
            self.head.weight = self.encoder.weight

    # -- parallelism ------------------------------------------------------------------------------

    def set_context_parallel(self, group: GroupLike) -> None:
        """Split every sequence over the ranks of ``group`` from now on: each rank passes its
        slice of every batch along time (nn/context.py). Refuses chunk checkpointing, which
        passes states between time chunks of one rank."""
        if self.checkpointing == "chunk":
            raise ValueError("checkpointing='chunk' passes states between time chunks and cannot split a sequence "
                             "over ranks: use checkpointing='block' with context parallelism")
        mixers = [m for b in self.blocks for m in (b.mixer, getattr(b, "mixer_bwd", None)) if m is not None]
        set_context_parallel(mixers, group)

    # -- sequence ---------------------------------------------------------------------------------

    def features(self, x: Tensor, resets: Tensor | None = None, state: list | None = None,
                 return_state: bool = False) -> Tensor | tuple[Tensor, list]:
        """x: [B, L] ids or [B, L, d_input] -> final-normalised features [B, L, d_model].

        ``resets`` [B, L] bool: a document starts at t (every layer's state is zero before t);
        ``state``: one entry per block from a previous window (None = zeros), dropped for rows
        with resets[:, 0]; ``return_state``: also return the states after the last step.
        """
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state must be a list of {len(self.blocks)} entries (one per block), got {len(state)}")
        if state is not None and resets is not None:
            state = [zero_rows(s, resets[:, 0]) for s in state]
        h = self.dropout(self.encoder(x))
        if self._chunked():
            h, states = self._chunked_blocks(h, resets, state)
        else:
            h, states = self._blocks(h, resets, state, return_state, self.checkpointing == "block")
            h = self.norm_f(h)
        return (h, states) if return_state else h

    def _chunked(self) -> bool:
        return self.checkpointing == "chunk" and torch.is_grad_enabled()

    def _blocks(self, h: Tensor, resets: Tensor | None, state: list | None, return_state: bool = True,
                block_checkpoint: bool = False) -> tuple[Tensor, list]:
        """Every block on h, each from its entry of ``state``; returns h and (if asked) the last states."""
        states = []
        for i, block in enumerate(self.blocks):
            args = (h, resets, None if state is None else state[i], return_state)
            recompute = block_checkpoint and torch.is_grad_enabled()
            out = checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)
            h, s = out if return_state else (out, None)
            states.append(s)
        return h, states

    def _chunked_blocks(self, h: Tensor, resets: Tensor | None, state: list | None) -> tuple[Tensor, list]:
        """The stack over consecutive time chunks, each recomputed in the backward from its input
        and the states the chunk before left: activations of one chunk are alive at a time, and
        the states between chunks (not detached) carry the gradient across them exactly."""
        C = self.checkpoint_chunk
        outs = []
        for s in range(0, h.shape[1], C):
            r = None if resets is None else resets[:, s:s + C]
            y, state = checkpoint(self._normed_blocks, h[:, s:s + C], r, state, use_reentrant=False)
            outs.append(y)
        return torch.cat(outs, 1), state

    def _normed_blocks(self, h: Tensor, resets: Tensor | None, state: list | None) -> tuple[Tensor, list]:
        h, state = self._blocks(h, resets, state)
        return self.norm_f(h), state

    def _head_loss(self, h: Tensor, targets: Tensor | None, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """``loss_fn(head(h), targets)`` for a per-position head (lm, regress), ``loss_fn`` a sum
        over positions. With checkpointing='chunk' (and gradients on) it is the sum over time
        chunks, each recomputed in the backward, so that the [B, L, d_output] outputs and their
        gradient are never whole: at L = 65536 with a 50k vocabulary they would be 13 GB each."""
        if self.head_kind == "classify" or targets is None or targets.shape[:2] != h.shape[:2]:
            raise ValueError(f"loss_fn needs a per-position head (lm or regress), got {self.head_kind!r}, and "
                             f"targets [B, L, ...] = {tuple(h.shape[:2])}, got "
                             f"{None if targets is None else tuple(targets.shape)}")
        if not self._chunked():
            return self._chunk_loss(h, targets, loss_fn)
        C = self.checkpoint_chunk
        parts = [checkpoint(self._chunk_loss, h[:, s:s + C], targets[:, s:s + C], loss_fn, use_reentrant=False)
                 for s in range(0, h.shape[1], C)]
        return torch.stack(parts).sum()

    def _chunk_loss(self, h: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        return loss_fn(self.head(h), targets)

    def forward(self, x: Tensor, mask: Tensor | None = None, resets: Tensor | None = None,
                state: list | None = None, return_state: bool = False, targets: Tensor | None = None,
                loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor | tuple[Tensor, list]:
        """lm: [B, L, vocab]; regress: [B, L, d_output]; classify: [B, d_output].

        mask [B, L] (bool, True = real token) only affects classify pooling; each row needs one
        True. With pooling='last' the last True position is used. ``resets``, ``state`` and
        ``return_state`` as in `features` (sequence heads only). With ``loss_fn`` (a sum over
        positions) and ``targets``: ``loss_fn(outputs, targets)`` instead of the outputs, see
        `_head_loss` (a call of the module, so that FSDP2's hooks on it run).
        """
        out = self.features(x, resets, state, return_state)
        h, state = out if return_state else (out, None)
        if loss_fn is not None:
            y = self._head_loss(h, targets, loss_fn)
        else:
            y = self.head(h) if self.head_kind != "classify" else self.head(self.pool(h, mask))
        return (y, state) if return_state else y

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, L, H] -> [B, H] by mean or last position (respecting mask)."""
        if mask is None:
            return h.mean(1) if self.pooling == "mean" else h[:, -1]
        if mask.shape != h.shape[:2]:
            raise ValueError(f"mask must have shape [B, L] = {tuple(h.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.bool()
        if not mask.any(1).all():
            raise ValueError("every row of mask needs at least one True position")
        if self.pooling == "mean":
            m = mask[..., None].to(h.dtype)
            return (h * m).sum(1) / m.sum(1)
        last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # index of the last True
        return h[torch.arange(h.shape[0], device=h.device), last]

    # -- step ---------------------------------------------------------------------------------------

    def step(self, x_t: Tensor, state: list | None = None, reset: Tensor | None = None) -> tuple[Tensor, list]:
        """One token: x_t [B] ids or [B, d_input] -> (output [B, d_output], state).

        state is a list with one entry per block; for head='classify' with mean pooling one more
        entry, (running sum of features, count), so that the output at step t is the
        classification of the prefix x[:, :t+1] (equal to forward on that prefix). ``reset`` [B]
        bool zeroes the state of those rows first (a document starts at this token), as
        ``resets`` does in `forward`.
        """
        n = len(self.blocks)
        if reset is not None and state is not None and bool(reset.any()):
            if bool(reset.all()):
                state = None
            elif not all(getattr(b.mixer, "carries_state", True) for b in self.blocks):
                raise ValueError("a KV cache cannot be reset for some rows only; reset every row or none")
            else:
                state = [zero_rows(s, reset) for s in state[:n]] + list(state[n:])
        running_mean = self.head_kind == "classify" and self.pooling == "mean"
        state = [None] * (n + running_mean) if state is None else list(state)
        if len(state) != n + running_mean:
            raise ValueError(f"state must be a list of {n + running_mean} entries, got {len(state)}")
        h = self.dropout(self.encoder(x_t))
        for i, block in enumerate(self.blocks):
            h, state[i] = block.step(h, state[i])
        h = self.norm_f(h)
        if running_mean:
            total, count = state[n] if state[n] is not None else (torch.zeros_like(h), 0)
            state[n] = (total + h, count + 1)
            h = state[n][0] / state[n][1]
        return self.head(h), state

    def eigenvalues(self) -> dict[str, Tensor]:
        """{module name: complex discrete-time Λ} for every recurrent layer."""
        return {n: m.eigenvalues() for n, m in self.named_modules() if m is not self and hasattr(m, "eigenvalues")}
