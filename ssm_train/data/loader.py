"""The data loader every data module serves: torchdata's StatefulDataLoader, made exact under Lightning.

Lightning's training loop fetches one batch ahead (to know whether the current one is the last),
so when it checkpoints after step k the loader has already produced batch k+1: a run resumed from
``StatefulDataLoader.state_dict()`` would skip one batch. This loader reports the state it had just
before its most recent fetch, which is exactly "every batch trained on so far, nothing more".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader


class ResumableDataLoader(StatefulDataLoader):
    _state_before_fetch: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        while True:
            self._state_before_fetch = super().state_dict()
            try:
                batch = next(it)
            except StopIteration:
                self._state_before_fetch = None  # exhausted: the loader's own end-of-epoch state is right
                return
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self._state_before_fetch if self._state_before_fetch is not None else super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state_before_fetch = None
        super().load_state_dict(state_dict)
