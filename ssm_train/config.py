"""The run configuration: typed dataclasses, YAML files merged onto them, then dotted overrides.

    cfg = load_config(["configs/experiment/default.yaml"], ["model.n_layers=4"])

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key and
what would be valid, before any work starts (the CLI turns that into exit status 2).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ssm_train.data.config import DataConfig

INCLUDE_KEY = "include"  # a YAML file may list other YAML files (relative to itself) merged first


class ConfigError(ValueError):
    """A configuration problem, with the key (and file) it concerns in the message."""


@dataclass
class InitConfig:
    """Eigenvalue initialisation (see ``ssm_train.nn.init``); only the fields the init uses matter."""

    name: str = "ring"
    r_min: float = 0.9  # ring/real: |λ| in [r_min, r_max]
    r_max: float = 0.999
    max_phase: float = 2 * math.pi  # ring: arg λ uniform in [0, max_phase]
    dt_min: float = 1e-3  # s4d_* / mamba: Δ log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1


@dataclass
class ModelConfig:
    kind: str = "lru"  # lru | real | s4d | selective | transformer (d_state = head dimension)
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 64
    init: InitConfig = field(default_factory=InitConfig)
    normalize: bool = True  # LRU: input normalisation exp(gamma_log)
    discretization: str = "zoh"  # S4D: zoh | bilinear
    s4d_mode: str = "conv"  # S4D: conv (FFT convolution) | scan (the recurrence); same outputs, conv is faster
    norm: str = "layer"  # layer | rms | batch
    mlp: str = "glu"  # mlp | glu
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: str = "mean"  # classification head: mean | last
    tie_weights: bool = False  # LM head shares the embedding


@dataclass
class TaskConfig:
    kind: str = "auto"  # auto (from the data) | lm | classify | regress


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    recurrent_lr_factor: float = 0.5  # LRU paper: recurrent parameters learn slower, no decay
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at trainer.max_steps


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # "auto", a count, or a list of indices
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | hsdp | deepspeed_stage_{1,2,3}[_offload]
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    val_check_interval: int = 100  # steps between validations
    limit_val_batches: int = 8
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True


@dataclass
class WandbConfig:
    project: str = "ssm-train"
    entity: str | None = None
    mode: str = "auto"  # auto (online if an API key is set, else offline) | online | offline | disabled
    tags: list[str] = field(default_factory=list)
    group: str | None = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True
    # shorthand kept stable for scripts and sweeps: logger.mode=disabled == logger.wandb.mode
    mode: str | None = None


@dataclass
class CheckpointConfig:
    dir: str | None = None  # default: runs/<name>/checkpoints
    every_n_steps: int = 100
    keep: int = 1  # best checkpoints kept (by validation loss), besides last.ckpt
    resume: str = "auto"  # auto (last checkpoint of this run, if any) | none | a path


@dataclass
class Config:
    name: str = "default"  # the run directory is <runs_dir>/<name>/
    seed: int = 0
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


# --------------------------------------------------------------------------------------- loading


def load_config(files: list[str | Path] = (), overrides: list[str] = ()) -> Config:
    """Schema defaults <- each YAML file in order <- dotted ``key=value`` overrides; validated."""
    merged = OmegaConf.structured(Config)
    for path in files:
        merged = _merge(merged, _read_yaml(Path(path)), source=str(path))
    merged = _merge(merged, _parse_overrides(overrides), source="command line")
    cfg: Config = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain dict (no OmegaConf objects): what checkpoints store, as ``weights_only`` loading needs."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (for a config read back from a checkpoint or run directory)."""
    return OmegaConf.to_object(_merge(OmegaConf.structured(Config), OmegaConf.create(d), "stored config"))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: '{INCLUDE_KEY}' cycle through {[str(p) for p in _seen]}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError carries the line number in its message
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(node).__name__}")
    includes = node.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    merged = OmegaConf.create()
    for inc in includes:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / inc, _seen + (path.resolve(),)))
    return OmegaConf.merge(merged, node)


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override '{o}' is not of the form key.sub=value")
    try:
        return OmegaConf.from_dotlist([o.removeprefix("--") for o in overrides])
    except OmegaConfBaseException as e:
        raise ConfigError(f"command line: {e}") from None


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        raise ConfigError(f"{source}: {_unknown_key_message(e)}") from None
    except ValidationError as e:
        raise ConfigError(f"{source}: key '{e.full_key}': {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {str(e).splitlines()[0]}") from None


def _unknown_key_message(e: ConfigKeyError) -> str:
    full_key = e.full_key or str(e.key)
    parent, _, leaf = full_key.rpartition(".")
    node = OmegaConf.structured(Config)
    for part in parent.split(".") if parent else []:
        node = node[part]
    valid = sorted(node.keys())
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"did you mean '{(parent + '.' if parent else '') + close[0]}'? " if close else ""
    return f"unknown key '{full_key}': {hint}valid keys here: {', '.join(valid)}"


# ------------------------------------------------------------------------------------ validation

CHOICES: dict[str, tuple[str, ...]] = {
    "model.kind": ("lru", "real", "s4d", "selective", "transformer"),
    "model.norm": ("layer", "rms", "batch"),
    "model.mlp": ("mlp", "glu"),
    "model.pooling": ("mean", "last"),
    "model.discretization": ("zoh", "bilinear"),
    "model.s4d_mode": ("conv", "scan"),
    "task.kind": ("auto", "lm", "classify", "regress"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
}


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; raise ConfigError naming the key."""
    if cfg.logger.mode is not None:  # the shorthand wins and is folded into its long form
        cfg.logger.wandb.mode = cfg.logger.mode
    for key, valid in CHOICES.items():
        _check(_get(cfg, key) in valid, key, f"must be one of {', '.join(valid)}")
    _check_model(cfg.model)
    from ssm_train.data.registry import data_kinds
    from ssm_train.nn.init import INITS

    _check(cfg.model.init.name in INITS, "model.init.name", f"must be one of {', '.join(sorted(INITS))}")
    _check(cfg.data.kind in data_kinds(), "data.kind", f"must be one of {', '.join(data_kinds())}")
    for key in ("data.seq_len", "data.batch_size", "trainer.max_steps", "trainer.val_check_interval",
                "trainer.accumulate_grad_batches", "trainer.num_nodes", "checkpoint.every_n_steps"):
        _check(_get(cfg, key) > 0, key, "must be positive")
    _check(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(cfg.optim.lr > 0, "optim.lr", "must be positive")
    _check(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(cfg.optim.recurrent_lr_factor > 0, "optim.recurrent_lr_factor", "must be positive")
    _check(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _check(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    _check(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
           "optim.betas", "must be two numbers in [0, 1)")
    _check(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."), "name",
           "must be a non-empty directory name without '/'")
    for key in ("data.path", "data.val_path"):
        for pattern in _get(cfg, key):
            _check(_exists(pattern), key, f"'{pattern}' does not exist (no file matches)")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none"):
        _check(Path(resume).exists(), "checkpoint.resume",  # a file, or a DeepSpeed checkpoint folder
               f"'{resume}' is not a file (nor a DeepSpeed checkpoint folder); use auto, none or a checkpoint path")


def _check_model(m: ModelConfig) -> None:
    for key in ("d_model", "n_layers", "d_state"):
        _check(getattr(m, key) > 0, f"model.{key}", f"must be positive, got {getattr(m, key)}")
    _check(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", "must be positive")
    if m.kind == "real":  # the real arm: phase fixed at 0, so the init must give positive real λ
        _check(m.init.name in ("real", "s4d_real", "mamba"), "model.init.name",
               f"kind=real needs a real init (real, s4d_real, mamba), got '{m.init.name}'")
    if m.kind == "transformer":  # d_state is the attention head dimension
        _check(m.d_state % 2 == 0 and m.d_model % m.d_state == 0, "model.d_state",
               f"for kind=transformer it is the head dimension: even and dividing d_model={m.d_model}, "
               f"got {m.d_state}")
    i = m.init
    _check(0 <= i.r_min, "model.init.r_min", f"must be >= 0, got {i.r_min}")
    _check(i.r_max < 1, "model.init.r_max", f"must be < 1 for a stable recurrence, got {i.r_max}")
    _check(i.r_min <= i.r_max, "model.init.r_min",
           f"must be <= model.init.r_max, got r_min={i.r_min} > r_max={i.r_max}")
    _check(i.max_phase >= 0, "model.init.max_phase", "must be >= 0")
    _check(0 < i.dt_min <= i.dt_max, "model.init.dt_min", "must satisfy 0 < dt_min <= dt_max")


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {problem}")


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, ListConfig) else node


def _exists(pattern: str) -> bool:
    import glob

    return Path(pattern).exists() or bool(glob.glob(pattern, recursive=True))
