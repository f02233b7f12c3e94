"""Causal multi-head self-attention with rotary positions: the Transformer baseline's mixer.

In a `Block` this mixer takes the place of the recurrence (pre-norm, then the channel MLP), so
`Backbone(kind="transformer")` is a standard pre-norm causal decoder:

    q, k, v  = split_heads(W_qkv x)                       x ∈ R^{L×H}, n_heads = H / head_dim
    q, k     = RoPE(q, pos), RoPE(k, pos)                  rotary positions (Su et al. 2021)
    y        = W_o merge_heads(softmax(q kᵀ/√head_dim + causal mask) v)

`d_state` is the head dimension (so `d_state` still sizes "the memory per channel group", and
the block signature stays that of the recurrences); it must divide `d_model` and be even.
Attention runs through `F.scaled_dot_product_attention(is_causal=True)` (flash / memory-
efficient kernels where available), in whatever precision autocast gives it.

RoPE rotates pairs (i, i + head_dim/2) of q and k by angles pos·θ_i with θ_i = base^(-2i/head_dim),
so q_s·k_t depends on s - t only and a cached key never needs recomputing.

`step(x_t, state)` decodes one token with a KV cache: state = (keys, values), each
[B, n_heads, t, head_dim] with rotary positions 0..t-1 already applied, and equals `forward` on
the prefix. The cache grows by concatenation (O(t) copy per step): a baseline, not a server.

`reverse=True` (the backward half of a bidirectional Block) is anti-causal attention: position t
attends to t..L-1, computed as causal attention on the time-flipped sequence. A bidirectional
Block sums the causal and anti-causal mixers, so every position sees the whole sequence; such a
Block has no step(). There are no eigenvalues: `Backbone.eigenvalues()` returns {} for a
Transformer, and the spectrum plot is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssm_train.nn.registry import LayerConfig, LayerContext, register_layer
from ssm_train.ops.scan import flip_resets

KVCache = tuple[Tensor, Tensor]  # (keys, values), each [B, n_heads, t, head_dim]


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate pairs (i, i + d/2) of the last axis of x [..., T, d] by positions[T] · base^(-2i/d).

    Angles are computed in float32 (float64 for float64 x), never in half precision: at
    position p a half-precision angle would be off by ~p·1e-3 rad. The rotation runs in x's dtype.
    """
    d = x.shape[-1]
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=wide) / d)  # [d/2]
    angles = positions.to(wide)[:, None] * inv_freq  # [T, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def document_mask(resets: Tensor) -> Tensor:
    """[B, 1, L, L] bool: query s may attend to key t iff t <= s and no document starts in (t, s]."""
    doc = resets.to(torch.int64).cumsum(1)  # document index of each position
    L = resets.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=resets.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions (the Transformer baseline)."""

    recurrent_params = ()  # nothing recurrent: every parameter is an ordinary weight
    carries_state = False  # no finite state to carry across windows (model.carry_state refuses it)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        rope_base: float = 10000.0,
        bias: bool = False,
        reverse: bool = False,
        init: str | None = None,
        init_params: dict | None = None,
    ):
        """d_state = head dimension. `init`/`init_params` are accepted so that the layer
        arguments every mixer receives from the config work here too; attention has no
        eigenvalues to initialise, so they are ignored."""
        super().__init__()
        H, hd = d_model, d_state
        if H < 1 or hd < 1 or H % hd or hd % 2:
            raise ValueError(
                f"attention uses d_state as the head dimension: it must be even and divide d_model, "
                f"got d_model={H}, d_state={hd} (e.g. d_state=16 gives {max(1, H // 16)} heads)"
            )
        if rope_base <= 1:
            raise ValueError(f"rope_base must be > 1, got {rope_base}")
        self.d_model, self.head_dim, self.n_heads = H, hd, H // hd
        self.rope_base, self.reverse = rope_base, reverse
        self.qkv = nn.Linear(H, 3 * H, bias=bias)
        self.out = nn.Linear(H, H, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, reverse={self.reverse}"

    def _heads(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, H] -> q, k (rotated), v, each [B, n_heads, T, head_dim]."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return rotary(q, positions, self.rope_base), rotary(k, positions, self.rope_base), v

    def _merge(self, y: Tensor) -> Tensor:
        """[B, n_heads, T, head_dim] -> W_o [B, T, H]."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, self.d_model))

    # -- sequence and step ---------------------------------------------------------------------------

    def forward(self, x: Tensor, resets: Tensor | None = None, state: KVCache | None = None,
                return_state: bool = False) -> Tensor:
        """x: [B, L, H] -> [B, L, H]; position t attends to 0..t (to t..L-1 if reverse).

        ``resets`` [B, L] bool (a document starts at t) makes the mask block-diagonal: t attends
        only within its document (RoPE is relative, so positions need no restart). Attention has
        no finite state to carry from one window to the next: ``state``/``return_state`` are
        refused rather than silently ignored.
        """
        if state is not None or return_state:
            raise ValueError("attention carries no state across windows (model.carry_state needs a recurrent kind)")
        if self.reverse:
            return self._causal(x.flip(1), None if resets is None else flip_resets(resets)).flip(1)
        return self._causal(x, resets)

    def _causal(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        q, k, v = self._heads(x, positions)
        if resets is None:
            return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask(resets)))

    def step(self, x_t: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """One token: x_t [B, H], the KV cache of the previous tokens (None = empty) -> (y_t, cache)."""
        if self.reverse:
            raise RuntimeError("CausalSelfAttention(reverse=True) attends to the future and has no step()")
        t = 0 if state is None else state[0].shape[2]
        q, k, v = self._heads(x_t[:, None, :], torch.tensor([t], device=x_t.device))
        if state is not None:
            k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v)  # the one query sees every cached key
        return self._merge(y)[:, 0], (k, v)


# -- registration: model.kind = transformer --------------------------------------------------------


@dataclass
class TransformerConfig(LayerConfig):
    """model.transformer.* (model.d_state is the head dimension)"""

    rope_base: float = 10000.0  # RoPE: θ_i = rope_base^(-2i/head_dim)
    bias: bool = False  # biases in W_qkv and W_o

    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        if not (ctx.d_state % 2 == 0 and ctx.d_model % ctx.d_state == 0):
            yield "d_state", (f"for kind={ctx.kind} it is the head dimension: even and dividing "
                              f"d_model={ctx.d_model}, got {ctx.d_state}")
        if not self.rope_base > 1:
            yield f"{ctx.kind}.rope_base", f"must be > 1, got {self.rope_base}"

    def min_params(self, d_model: int, d_state: int) -> int:
        return 4 * d_model * d_model  # W_qkv and W_o


register_layer("transformer", CausalSelfAttention, TransformerConfig, recurrent=False,
               doc="causal self-attention with rotary positions, the baseline (d_state = head dimension)")
