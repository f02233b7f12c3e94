"""Print the docs' table of layer kinds and their config keys, read from the registry.

    python scripts/layer_table.py            # the markdown table (docs/models.md holds it verbatim)

tests/nn/test_registry.py checks that docs/models.md contains exactly this output, so a new layer
file that registers itself shows up in the docs by re-running this script.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssm_train.nn import LAYERS  # noqa: E402

BEGIN, END = "<!-- layer-table: scripts/layer_table.py -->", "<!-- /layer-table -->"


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def table() -> str:
    rows = [BEGIN, "| `model.kind` | layer | keys (`model.<kind>.<key>`: default) |", "|---|---|---|"]
    for kind, spec in LAYERS.items():
        keys = ", ".join(f"`{f.name}`: {_default(f)}" for f in dataclasses.fields(spec.config_cls)) or "none"
        rows.append(f"| `{kind}` | {spec.doc} (`{spec.module.removeprefix('ssm_train.')}`) | {keys} |")
    rows.append(END)
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
