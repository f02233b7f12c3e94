"""The contract between data modules and tasks.

Every data module (a ``LightningDataModule``) exposes ``spec: DataSpec`` once constructed, so the
model can be sized before training starts. Batches are dicts:

- ``inputs``:  ``[B, L]`` int64 token ids, or ``[B, L, d_input]`` float32 features;
- ``targets``: ``[B, L]`` int64 (language modelling), ``[B]`` int64 (classification) or
  ``[B, L, d_output]`` float32 (per-step regression);
- ``mask`` (optional): ``[B, L]`` bool, True where ``inputs`` is real data (padding is False);
- ``resets`` (packed LM windows: text, FASTA): ``[B, L]`` bool, True before a step where the model
  must zero its recurrent state (column 0 of a window that continues no other; document starts);
- ``offset`` (``data.window_sampling=contiguous`` only): ``[B]`` int64, the window's first input's
  position in its row's stream (row ``b`` of batch ``k + 1`` continues row ``b`` of batch ``k``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TaskKind = Literal["lm", "classify", "regress"]


@dataclass
class DataSpec:
    task: TaskKind
    vocab_size: int | None = None  # token inputs: embedding size (and LM output size)
    d_input: int | None = None  # float inputs: feature size
    d_output: int | None = None  # classes (classify) or features per step (regress)
    class_names: list[str] | None = None
    ignore_index: int = -100  # target value that LM / classification losses skip
    tokenizer: Any = None  # has encode/decode/state_dict when the inputs are text or DNA
    extra: dict = field(default_factory=dict)
