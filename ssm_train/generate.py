"""Sample from a trained language model with the recurrent ``step`` path: constant memory per token."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ssm_train import checkpoint
from ssm_train.config import from_dict
from ssm_train.nn import Backbone
from ssm_train.tasks.base import build_backbone


def load_backbone(ckpt_path: str | Path) -> tuple[Backbone, dict, dict]:
    """(model in eval mode, config dict, data spec dict) from a Lightning checkpoint, safely loaded.

    A damaged, foreign or mismatched checkpoint is a CheckpointError saying what is wrong with it."""
    ckpt = checkpoint.load(ckpt_path)
    hp = checkpoint.hyper_parameters(ckpt, ckpt_path)
    model = build_backbone(from_dict(hp["config"]), hp["spec"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    checkpoint.check_fits(ckpt_path, state, model.state_dict())
    model.load_state_dict(state)
    return model.eval(), hp["config"], hp["spec"]


@torch.no_grad()
def sample(model: Backbone, prompt: Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 0, generator: torch.Generator | None = None, eos_id: int | None = None) -> Tensor:
    """Feed ``prompt`` ([T] ids, T >= 1) through ``step``, then draw ``max_new_tokens`` tokens.

    ``temperature=0`` is greedy decoding; ``top_k > 0`` keeps only the k most likely tokens.
    With ``eos_id`` (a model trained with document resets) the state is zeroed before each
    ``<eos>`` is fed, as training zeroed it at each document start.
    """
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError("prompt must be a non-empty 1-D tensor of token ids")
    state = None

    def feed(token: int):
        reset = None if eos_id is None else torch.tensor([token == eos_id])
        return model.step(torch.tensor([token]), state, reset=reset)

    for token in prompt.tolist():
        logits, state = feed(token)
    out = []
    for _ in range(max_new_tokens):
        next_id = _draw(logits[0].float(), temperature, top_k, generator)
        out.append(next_id)
        logits, state = feed(next_id)
    return torch.tensor(out, dtype=torch.long)


def _draw(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
