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

import torch
from torch import Tensor, nn

from ssm_train.nn.block import NORMS, Block, _lookup
from ssm_train.nn.registry import MixerFactory

HEADS = ("lm", "classify", "regress")
POOLINGS = ("mean", "last")


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
        self.head_kind, self.pooling, self.d_output = head, pooling, d_output
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
        self.norm_f = _lookup(NORMS, norm, "norm")(d_model)
        self.head = nn.Linear(d_model, d_output, bias=head != "lm")
        if tie_weights:
            self.head.weight = self.encoder.weight

    # -- sequence ---------------------------------------------------------------------------------

    def features(self, x: Tensor) -> Tensor:
        """x: [B, L] ids or [B, L, d_input] -> final-normalised features [B, L, d_model]."""
        h = self.dropout(self.encoder(x))
        for block in self.blocks:
            h = block(h)
        return self.norm_f(h)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """lm: [B, L, vocab]; regress: [B, L, d_output]; classify: [B, d_output].

        mask [B, L] (bool, True = real token) only affects classify pooling; each row needs one
        True. With pooling='last' the last True position is used.
        """
        h = self.features(x)
        if self.head_kind != "classify":
            return self.head(h)
        return self.head(self.pool(h, mask))

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

    def step(self, x_t: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """One token: x_t [B] ids or [B, d_input] -> (output [B, d_output], state).

        state is a list with one entry per block; for head='classify' with mean pooling one more
        entry, (running sum of features, count), so that the output at step t is the
        classification of the prefix x[:, :t+1] (equal to forward on that prefix).
        """
        n = len(self.blocks)
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
