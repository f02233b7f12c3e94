"""``ssm-train``: build objects from configs and hand them to Lightning's Trainer.

    ssm-train fit      [-c FILE ...] [key.sub=value ...]   train (default: configs/experiment/default.yaml)
    ssm-train validate [-c FILE ...] [--ckpt PATH] [...]   evaluate a checkpoint on the validation data
    ssm-train test     [-c FILE ...] [--ckpt PATH] [...]   evaluate a checkpoint on the test data
    ssm-train config   [-c FILE ...] [key.sub=value ...]   print the resolved config, run nothing
    ssm-train generate --ckpt PATH --prompt TEXT           sample from a language model
    ssm-train export   CKPT OUT                            one consolidated checkpoint (ssm_train/export.py)
    ssm-train sweep    FILE [--local | --slurm] [...]      run a W&B-format sweep (ssm_train/sweeps/)
    ssm-train reproduce NAME [--quick] [--out DIR]         regenerate a paper result (ssm_train/reproduce.py)

Exit status: 0 done, 1 training failed (e.g. a non-finite loss), 2 bad config or arguments.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: threads that sleep instead of spinning at each barrier. When the CPU is
# shared (other jobs, DDP ranks, data workers), spinning threads made a 2-thread training step 25-60x
# slower here (1.4-3.3 s instead of 45 ms); with PASSIVE the same step took 44 ms under that load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import math
import sys
import warnings
from pathlib import Path

from ssm_train import export, reproduce
from ssm_train.config import Config, load_config, to_yaml
from ssm_train.errors import CheckpointWriteError, ConfigError, NonFiniteLossError
from ssm_train.paths import project_file
from ssm_train.sweeps import cli as sweep

DEFAULT_EXPERIMENT = Path("configs/experiment/default.yaml")


def default_experiment() -> list[Path]:
    """``configs/experiment/default.yaml`` of the working directory, else of the source checkout."""
    path = project_file(DEFAULT_EXPERIMENT)
    return [path] if path else []


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that takes ``key=value`` overrides before, between or after options
    (``fit -c a.yaml x=1 --ckpt c y=2``, ``sweep FILE --local k=v``): plain argparse fills a
    ``nargs="*"`` positional once, at its first run of words, and rejects the words after an option."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_inner", False):  # parse_known_intermixed_args calls back into this
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssm-train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=IntermixedParser)
    for name, help_ in [("fit", "train a model"), ("validate", "evaluate on validation data"),
                        ("test", "evaluate on test data"), ("config", "print the resolved config")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("-c", "--config", action="append", default=[], metavar="FILE",
                       help="YAML file merged onto the schema (repeatable; later files win)")
        s.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides")
        if name in ("validate", "test"):
            s.add_argument("--ckpt", help="checkpoint (default: the run's last.ckpt)")
    g = sub.add_parser("generate", help="sample from a trained language model")
    g.add_argument("--ckpt", required=True)
    g.add_argument("--prompt", required=True, help="text (or space-separated ids without tokenizer)")
    g.add_argument("--max-new-tokens", type=_at_least(int, 1), default=200, help="at least 1")
    g.add_argument("--temperature", type=_at_least(float, 0), default=0.8, help=">= 0; 0 is greedy decoding")
    g.add_argument("--top-k", type=_at_least(int, 0), default=0, help="keep the k most likely tokens; 0 keeps all")
    g.add_argument("--seed", type=int, default=0)
    sweep.add_parser(sub)
    export.add_parser(sub)
    reproduce.add_parser(sub)
    return p


def _at_least(cast: type, least: float):
    """An argparse type: a finite ``cast`` (int or float) >= ``least``; argparse names the option
    and exits 2 otherwise."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if cast is int else 'a number'}") from None
        if not math.isfinite(value) or value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {text}")
        return value
    return parse


def _config(args: argparse.Namespace) -> Config:
    files = args.config or default_experiment()
    return load_config(files, args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    print(to_yaml(_config(args)), end="")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ssm_train.run import fit, is_rank_zero

    result = fit(_config(args))
    if is_rank_zero():
        print(f"final {result.metric}={result.value:.6g} at step {result.step} (run dir {result.run_dir})",
              flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ssm_train.run import evaluate, is_rank_zero

    metrics = evaluate(_config(args), args.command, args.ckpt)
    if is_rank_zero():
        for k, v in sorted(metrics.items()):
            print(f"{k}={v:.6g}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ssm_train.generate import load_backbone, sample

    if not Path(args.ckpt).exists():
        raise ConfigError(f"--ckpt: '{args.ckpt}' does not exist")
    if not args.prompt:
        raise ConfigError("--prompt: empty; generation starts from at least one character (or token id)")
    model, config, spec = load_backbone(args.ckpt)
    if spec["task"] != "lm":
        raise ConfigError(f"--ckpt: '{args.ckpt}' is a '{spec['task']}' model; generate needs a language model")
    tokenizer = None
    if spec.get("tokenizer"):
        from ssm_train.data.tokenizers import tokenizer_from_state

        tokenizer = tokenizer_from_state(spec["tokenizer"])
        prompt = torch.as_tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    else:
        try:
            prompt = torch.tensor([int(t) for t in args.prompt.split()], dtype=torch.long)
        except ValueError:
            raise ConfigError("--prompt: this model has no tokenizer; give space-separated token ids") from None
    vocab = spec["vocab_size"]
    if prompt.numel() == 0 or not bool(((prompt >= 0) & (prompt < vocab)).all()):
        raise ConfigError(f"--prompt: {args.prompt!r} gives no usable tokens; this model reads token ids "
                          f"0..{vocab - 1}" + (" (through its tokenizer)" if tokenizer else ""))
    generator = torch.Generator().manual_seed(args.seed)
    # a model trained with document resets starts each document from a zero state: so does sampling
    eos_id = tokenizer.eos_id if tokenizer and config.get("data", {}).get("reset_at_documents", False) else None
    out = sample(model, prompt, args.max_new_tokens, args.temperature, args.top_k, generator, eos_id=eos_id)
    print(args.prompt + tokenizer.decode(out.numpy(), skip_special=True) if tokenizer else " ".join(map(str, out.tolist())))
    return 0


COMMANDS = {"fit": cmd_fit, "validate": cmd_evaluate, "test": cmd_evaluate, "config": cmd_config,
            "generate": cmd_generate, "sweep": sweep.cmd_sweep, "reproduce": reproduce.cmd_reproduce,
            "export": export.cmd_export}


# Third-party notices that say nothing to a user of this tool (kept out of the console).
QUIET = [
    ".*'set_vital' is deprecated.*",  # torchdata's StatefulDataLoader on torch >= 2.9
    ".*isinstance\\(treespec, LeafSpec\\).*",  # Lightning's pytree shim on torch >= 2.10
    ".*you need to define a `flops_per_batch`.*",  # ThroughputMonitor: we log tokens/s, not MFU
    ".*The `srun` command is available on your system but is not used.*",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; overrides may come anywhere after the subcommand (IntermixedParser)."""
    return _parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for pattern in QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"ssm-train {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, CheckpointWriteError) as e:
        print(f"ssm-train {args.command}: training stopped: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a lost rank: name it and the checkpoint to resume from (exit 1), else re-raise
        from ssm_train.faults import lost_rank_exit

        if (status := lost_rank_exit(e, args.command)) is None:
            raise
        return status
    finally:
        release_process_group()


def release_process_group() -> None:
    """Destroy the default process group once the command is done (it owns the process).

    A gloo process group left alive at exit can abort the process in its destructor ("terminate
    called without an active exception": its worker threads outlive the interpreter; PyTorch asks
    for destroy_process_group before exit). Under srun one rank aborting that way failed a finished
    job with status 143 (seen once in four CI runs of the SLURM pre-emption test)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
