"""``ssm-train export CKPT OUT``: one consolidated checkpoint for inference on one device.

    CKPT a file     (auto, ddp, fsdp, hsdp: full state in one file)   the optimizer and loop state are dropped
    CKPT a folder   (deepspeed_*: ZeRO shards, Lightning's layout  ``CKPT/latest`` naming the tag,
                    ``CKPT/<tag>/*_model_states.pt`` and ``*_optim_states.pt``)
                    the fp32 weights are rebuilt from the shards with DeepSpeed's zero_to_fp32

The output is a Lightning-style checkpoint that ``torch.load(..., weights_only=True)`` reads:
``hyper_parameters`` {config, spec}, ``state_dict`` (float32, keys ``model.…``), ``global_step``
and ``epoch``. It is checked by loading it into a fresh backbone before it is written, so whatever
export writes, ``ssm-train generate --ckpt OUT`` (and ``validate``/``test``) can load.

Reading ZeRO shards unpickles them (DeepSpeed loads them with ``weights_only=False``): export
only checkpoints you trust. The file it writes needs no such trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssm_train.errors import ConfigError

KEPT = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters")
WRAPPER_PREFIX = "_forward_module."  # Lightning < 2.1 wrapped the module that DeepSpeed saw


class ExportError(ConfigError):
    """CKPT is not a checkpoint that export understands; the message says what was found."""


def export_checkpoint(ckpt: str | Path, out: str | Path) -> dict:
    """Write the consolidated checkpoint of ``ckpt`` to ``out``; returns what was written."""
    from ssm_train import checkpoint  # Lightning: imported when used, not at the CLI's start-up

    ckpt, out = Path(ckpt), Path(out)
    if ckpt.is_dir():
        state = _read_zero(ckpt)
    elif ckpt.is_file():
        try:
            state = checkpoint.load(ckpt)
        except checkpoint.CheckpointError as e:  # truncated, not a torch file, or not loadable safely
            raise ExportError(str(e)) from None
    else:
        raise ExportError(f"{ckpt}: no such file or directory")
    exported = consolidated(state, source=ckpt)
    _check_loads(exported, ckpt)
    checkpoint.save_file(exported, out)  # a reader never sees half a file
    return exported


def consolidated(state: dict, source: Path | str = "checkpoint") -> dict:
    """The kept keys of a full Lightning checkpoint, weights as compact float32 CPU tensors."""
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ExportError(f"{source}: not a Lightning checkpoint (no 'state_dict')")
    hp = state.get("hyper_parameters") or {}
    if "config" not in hp or "spec" not in hp:
        raise ExportError(f"{source}: not an ssm-train checkpoint (no hyper_parameters.config/spec)")
    weights = {}
    for key, value in state["state_dict"].items():
        key = key.removeprefix(WRAPPER_PREFIX)
        value = value.detach().to("cpu")
        weights[key] = value.float().clone() if value.is_floating_point() else value.clone()
    return {**{k: state[k] for k in KEPT if k in state}, "state_dict": weights}


def _read_zero(ckpt_dir: Path) -> dict:
    """A Lightning DeepSpeed checkpoint folder -> {Lightning state..., state_dict: fp32 weights}."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        raise ExportError(f"{ckpt_dir}: a directory but not a DeepSpeed checkpoint (no 'latest' file naming the tag)")
    tag = latest.read_text().strip()
    shards = ckpt_dir / tag
    model_states = sorted(shards.glob("*model_states.pt"))  # stage 1-2: mp_rank_00_…; stage 3: one per rank
    if not model_states:
        raise ExportError(f"{shards}: no *_model_states.pt files (incomplete DeepSpeed checkpoint?)")
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    # The Lightning state (hyper-parameters, step) is DeepSpeed's client state, kept in every model
    # states file; rank zero's is read.
    rank0 = next((p for p in model_states if p.name.startswith(("mp_rank_00", "zero_pp_rank_0_"))), model_states[0])
    client = torch.load(rank0, map_location="cpu", weights_only=True)
    return {**{k: client[k] for k in KEPT if k in client}, "state_dict": weights}


def _check_loads(exported: dict, source: Path) -> None:
    from ssm_train import checkpoint
    from ssm_train.config import from_dict
    from ssm_train.tasks.base import build_backbone

    hp = exported["hyper_parameters"]
    model = build_backbone(from_dict(hp["config"]), hp["spec"])
    weights = {k.removeprefix("model."): v for k, v in exported["state_dict"].items() if k.startswith("model.")}
    try:
        checkpoint.check_fits(source, weights, model.state_dict())
    except checkpoint.CheckpointError as e:
        raise ExportError(f"{e} (its weights do not fit the model of its own config)") from None
    model.load_state_dict(weights)


# ----------------------------------------------------------------------------------------- CLI


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="one consolidated checkpoint for one device (from ZeRO shards, "
                                      "or without the optimizer state)")
    e.add_argument("ckpt", metavar="CKPT", help="a checkpoint file, or a DeepSpeed checkpoint folder")
    e.add_argument("out", metavar="OUT", help="the file to write")


def cmd_export(args: argparse.Namespace) -> int:
    exported = export_checkpoint(args.ckpt, args.out)
    n = sum(v.numel() for k, v in exported["state_dict"].items() if k.startswith("model."))
    print(f"exported {args.ckpt} (step {exported.get('global_step', '?')}, {n} model values) to {args.out}")
    return 0
