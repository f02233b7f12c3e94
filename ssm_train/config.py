"""The run configuration: typed dataclasses, YAML files merged onto them, then dotted overrides.

    cfg = load_config(["configs/experiment/default.yaml"], ["model.n_layers=4"])

Unknown keys, wrong types and shapes, non-finite numbers, out-of-range values and a model too large
for this machine's memory raise :class:`ConfigError` naming the key and what would be valid, before
any work starts (the CLI turns that into exit status 2). A list-valued key (``data.path``) also
takes a single value. Values read from the environment (``${oc.env:VAR}``) are used by the run but
written out (``to_dict``, ``to_yaml``: config.yaml, checkpoints, W&B) as that interpolation, never
as the value, so a secret typed into a config is not logged.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException, ValidationError
from omegaconf.resolvers import oc

from ssm_train.data.config import DataConfig, data_problems
from ssm_train.nn import LAYERS
from ssm_train.nn.init import INITS, init_problems
from ssm_train.nn.registry import LayerContext
from ssm_train.errors import ConfigError  # defined there (it imports nothing); still importable from here

INCLUDE_KEY = "include"  # a YAML file may list other YAML files (relative to itself) merged first


@dataclass
class InitConfig:
    """Eigenvalue initialisation (see ``ssm_train.nn.init``, which validates these).

    Every field is checked whatever the init; the layer gets the fields its init takes."""

    name: str = "ring"
    r_min: float = 0.9  # ring/real: |λ| in [r_min, r_max], 0 <= r_min <= r_max <= 1
    r_max: float = 0.999
    max_phase: float = 2 * math.pi  # ring: arg λ uniform in [0, max_phase]
    dt_min: float = 1e-3  # s4d_* / mamba: Δ log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1


@dataclass
class _ModelFields:
    kind: str = "lru"  # a registered layer kind (ssm_train.nn.LAYERS): lru | real | s4d | selective | transformer | ...
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 64  # state size per layer (transformer: the head dimension)
    init: InitConfig = field(default_factory=InitConfig)
    norm: str = "layer"  # layer | rms | batch
    mlp: str = "glu"  # mlp | glu
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    bidirectional: bool = False
    pooling: str = "mean"  # classification head: mean | last
    tie_weights: bool = False  # LM head shares the embedding
    # truncated BPTT: each layer's last state (detached) starts the same batch row's next window;
    # needs data.window_sampling=contiguous, so that row b of batch k+1 continues row b of batch k
    carry_state: bool = False


# One section per registered layer kind, named by it: model.lru.normalize, model.s4d.mode,
# model.selective.expand, ... (the layer's own config dataclass, in the layer's file). Only the
# section of model.kind is used.
ModelConfig = make_dataclass(
    "ModelConfig",
    [(kind, spec.config_cls, field(default_factory=spec.config_cls)) for kind, spec in LAYERS.items()],
    bases=(_ModelFields,),
)
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = "model.*: the shared keys, then one section per layer kind (ssm_train.nn.registry)."


def layer_config(m: ModelConfig):
    """The config section of the chosen kind (model.<kind>)."""
    return getattr(m, m.kind)


# Keys of model.* before the per-kind sections (checkpoints and config.yaml written until then).
MOVED_MODEL_KEYS = {"normalize": ("lru", "normalize"), "discretization": ("s4d", "discretization"),
                    "s4d_mode": ("s4d", "mode")}


def upgrade_model_keys(d: dict) -> dict:
    """A stored config dict with the old flat keys (model.normalize, model.discretization,
    model.s4d_mode) moved to their sections; model.normalize goes to the section of its kind
    (lru or real). Other dicts are returned unchanged."""
    model = d.get("model") if isinstance(d, dict) else None
    if not isinstance(model, dict) or not any(k in model for k in MOVED_MODEL_KEYS):
        return d
    model = dict(model)
    for old, (section, key) in MOVED_MODEL_KEYS.items():
        if old in model:
            if old == "normalize" and model.get("kind") == "real":
                section = "real"
            model[section] = {**model.get(section, {}), key: model.pop(old)}
    return {**d, "model": model}


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
    gradient_clip_val: float = 1.0  # max gradient norm; 0 = no clipping
    accumulate_grad_batches: int = 1
    val_check_interval: int = 100  # steps between validations
    limit_val_batches: int = 8  # 0 = no validation
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    # none | block (recompute each block in the backward) | chunk (run the stack over time chunks
    # of checkpoint_chunk steps, states passed between them, one chunk's activations alive at a time)
    activation_checkpointing: str = "none"
    checkpoint_chunk: int = 4096
    # split each sequence into this many contiguous slices on as many ranks (context parallelism);
    # world size = data-parallel size x context_parallel, one context group gets the same batches
    context_parallel: int = 1


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
    cfg = _to_config(merged, source="")
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """Plain dict (no OmegaConf objects): what checkpoints store, as ``weights_only`` loading needs.

    Values that came from the environment are given as their ``${oc.env:VAR}`` interpolation, not
    as the value: this dict goes into every checkpoint and the W&B config, and a secret (an API
    key) read from the environment must not be written out. :func:`from_dict` reads it again."""
    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    for path, (text, value) in getattr(cfg, _WRITTEN_AS, {}).items():
        _write_as(d, path, text, value)
    return d


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (for a config read back from a checkpoint or run directory);
    a config stored before the per-layer sections is upgraded first."""
    merged = _merge(OmegaConf.structured(Config), OmegaConf.create(upgrade_model_keys(d)), "stored config")
    return _to_config(merged, source="stored config")


def to_yaml(cfg: Config) -> str:
    """The config as YAML (config.yaml, ``ssm-train config``), with environment values as in :func:`to_dict`."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


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
    if not isinstance(includes, ListConfig | list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: key '{INCLUDE_KEY}': must be a file name or a list of file names, "
                          f"got {_describe(includes)}")
    node = _conform(node, str(path))
    merged = OmegaConf.create()
    try:
        for inc in includes:
            merged = OmegaConf.merge(merged, _read_yaml(path.parent / inc, _seen + (path.resolve(),)))
        return OmegaConf.merge(merged, node)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_first_line(e)}") from None


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override '{o}' is not of the form key.sub=value")
    try:
        return OmegaConf.from_dotlist([o.removeprefix("--") for o in overrides])
    except OmegaConfBaseException as e:
        raise ConfigError(f"command line: {e}") from None


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    other = _conform(other, source)
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        raise ConfigError(f"{source}: {_unknown_key_message(e)}") from None
    except ValidationError as e:
        where = f"key '{e.full_key}': " if e.full_key else ""
        raise ConfigError(f"{source}: {where}{_first_line(e)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_first_line(e)}") from None


def _first_line(e: OmegaConfBaseException) -> str:
    """OmegaConf's message without its 'full_key: ...' trailer (``e.msg`` is None for some errors)."""
    text = getattr(e, "msg", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


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


# ------------------------------------------------------------------------ shapes: mapping, list


def _conform(node: DictConfig, source: str) -> DictConfig:
    """``node`` with each value shaped as the schema expects, before OmegaConf merges it.

    A section given as a list or a scalar (``model: [1, 2]``) is an error naming the key (the
    merge itself would fail without one). A list-valued key given one value (``data.path=x.txt``,
    as everyone writes a single file) becomes a one-element list; ``null`` becomes the empty list."""
    raw = OmegaConf.to_container(node, resolve=False)
    return OmegaConf.create(_conform_mapping(_schema(), raw, "", source))


def _schema() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(Config))


_REFERENCE = re.compile(r"^\$\{[\w.\[\]]+\}$")  # ${other.key}: may stand for a whole list or section


def _conform_mapping(schema: dict, node: dict, prefix: str, source: str) -> dict:
    out = {}
    for key, value in node.items():
        dotted, expected = f"{prefix}{key}", schema.get(key, _NO_KEY) if isinstance(key, str) else _NO_KEY
        reference = isinstance(value, str) and _REFERENCE.match(value.strip())
        if isinstance(expected, dict) and isinstance(value, dict):
            value = _conform_mapping(expected, value, dotted + ".", source)
        elif isinstance(expected, dict) and not reference:
            raise ConfigError(f"{source}: key '{dotted}': must be a mapping of keys "
                              f"({', '.join(sorted(expected))}), got {_describe(value)}")
        elif isinstance(expected, list) and isinstance(value, dict):
            raise ConfigError(f"{source}: key '{dotted}': must be a list (or a single value), "
                              f"got a mapping {_short(value)}")
        elif isinstance(expected, list) and value is None:
            value = []
        elif isinstance(expected, list) and not isinstance(value, list) and not reference:
            value = [value]
        out[key] = value  # unknown keys pass through: the merge names them, with a suggestion
    return out


_NO_KEY = object()


def _describe(value: Any) -> str:
    kind = {list: "a list", ListConfig: "a list", dict: "a mapping", DictConfig: "a mapping"}.get(type(value))
    return f"{kind} {_short(value)}" if kind else f"the value {_short(value)}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------- environment values: used, not written


_WRITTEN_AS = "_written_as"  # on a Config: {leaf path: (text written out, value used)}
_ENV_MARK = "__ssm_train_env__"
_MARKED = re.compile(re.escape(_ENV_MARK) + r"(.*?)" + re.escape(_ENV_MARK))


def _to_config(merged: DictConfig, source: str) -> Config:
    """The typed config (interpolations resolved), remembering which values came from the environment."""
    prefix = f"{source}: " if source else ""
    try:
        cfg: Config = OmegaConf.to_object(merged)
    except InterpolationResolutionError as e:
        unset = re.search(r"Environment variable '(.+?)' not found", str(e))
        problem = (f"environment variable {unset.group(1)} not found (it is not set); set it, or give a "
                   f"default: ${{oc.env:{unset.group(1)},default}}") if unset else _first_line(e)
        raise ConfigError(f"{prefix}key '{e.full_key}': {problem}") from None
    except OmegaConfBaseException as e:
        where = f"key '{e.full_key}': " if getattr(e, "full_key", None) else ""
        raise ConfigError(f"{prefix}{where}{_first_line(e)}") from None
    written = _environment_values(merged, OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    if written:
        object.__setattr__(cfg, _WRITTEN_AS, written)  # not a field: equality and the schema ignore it
    return cfg


def _environment_values(merged: DictConfig, resolved: dict) -> dict[tuple, tuple[str, Any]]:
    """Leaves whose value depends on ``${oc.env:...}`` (directly or through other interpolations):
    path -> (the value with each variable written as ``${oc.env:VAR}``, the value in use)."""
    raw = OmegaConf.to_container(merged, resolve=False)
    if "oc.env" not in repr(raw):
        return {}
    OmegaConf.register_resolver("oc.env", _env_marker, replace=True, annotation_validation="off")
    try:  # resolve once more, each variable read as a marker instead of its value
        view = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException:
        view = raw  # an interpolation the marker cannot pass through: keep every one unresolved
    finally:
        OmegaConf.register_resolver("oc.env", oc.env, replace=True, annotation_validation="off")
    out: dict[tuple, tuple[str, Any]] = {}
    for path, shown in _leaves(view):
        if isinstance(shown, str) and (_ENV_MARK in shown or "${" in shown):
            value, typed = _leaf(resolved, path), _leaf(raw, path)
            if shown != value:  # as typed if the interpolation is there (defaults kept), else rebuilt
                text = typed if isinstance(typed, str) and "oc.env" in typed else _MARKED.sub(_unmark, shown)
                out[path] = (text, value)
    return out


_NO_DEFAULT = object()
_DEFAULT_SEP = "__default__"


def _env_marker(key: str, default: Any = _NO_DEFAULT) -> str:
    """What ``${oc.env:KEY[,default]}`` resolves to while looking for environment values."""
    tail = "" if default is _NO_DEFAULT else _DEFAULT_SEP + ("null" if default is None else repr(str(default)))
    return f"{_ENV_MARK}{key}{tail}{_ENV_MARK}"


def _unmark(match: re.Match) -> str:
    key, _, default = match.group(1).partition(_DEFAULT_SEP)
    return "${oc.env:" + key + ("," + default if default else "") + "}"


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*path, i))]
    return [(path, node)]


def _leaf(node: Any, path: tuple) -> Any:
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _NO_KEY
    return node


def _write_as(d: dict, path: tuple, text: str, value: Any) -> None:
    """Put ``text`` where ``value`` is (or, if code changed the value since, where it is quoted)."""
    parent = _leaf(d, path[:-1])
    if parent is _NO_KEY or _leaf(d, path) is _NO_KEY:
        return
    current = parent[path[-1]]
    if current == value:
        parent[path[-1]] = text
    elif isinstance(current, str) and isinstance(value, str) and value and value in current:
        parent[path[-1]] = current.replace(value, text)  # e.g. a sweep trial's name-<run id>


# ------------------------------------------------------------------------------------ validation

CHOICES: dict[str, tuple[str, ...]] = {
    "model.kind": tuple(LAYERS),
    "model.norm": ("layer", "rms", "batch"),
    "model.mlp": ("mlp", "glu"),
    "model.pooling": ("mean", "last"),
    "trainer.activation_checkpointing": ("none", "block", "chunk"),
    "task.kind": ("auto", "lm", "classify", "regress"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
}


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express; raise ConfigError naming the key."""
    if cfg.logger.mode is not None:  # the shorthand wins and is folded into its long form
        cfg.logger.wandb.mode = cfg.logger.mode
    _check_finite(cfg)  # first: 'nan must be positive' would say the wrong thing
    for key, valid in {**CHOICES, **_lightning_choices()}.items():
        _check(_get(cfg, key) in valid, key, f"must be one of {', '.join(valid)}, got {_get(cfg, key)!r}")
    _check_model(cfg.model)
    from ssm_train.data.kinds import data_kinds  # the registry, with every built-in kind registered
    _check(cfg.model.init.name in INITS, "model.init.name", f"must be one of {', '.join(sorted(INITS))}")
    _check(cfg.data.kind in data_kinds(), "data.kind", f"must be one of {', '.join(data_kinds())}")
    for key in ("data.seq_len", "data.batch_size", "trainer.max_steps", "trainer.val_check_interval",
                "trainer.accumulate_grad_batches", "trainer.num_nodes", "checkpoint.every_n_steps",
                "trainer.checkpoint_chunk", "trainer.context_parallel"):
        _check(_get(cfg, key) > 0, key, f"must be positive, got {_get(cfg, key)}")
    _check(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    for key, problem in data_problems(cfg.data):
        _check(False, f"data.{key}", problem)
    _check(cfg.trainer.activation_checkpointing != "chunk" or (
        not cfg.model.bidirectional and _layer_attr(cfg.model.kind, "carries_state", True)),
        "trainer.activation_checkpointing", "chunk passes recurrent states between time chunks: it needs a "
        "causal recurrent model (not bidirectional, not attention); use block")
    _check(not cfg.model.carry_state or cfg.data.window_sampling == "contiguous", "model.carry_state",
           "needs data.window_sampling=contiguous (each batch row must continue the previous batch's row), "
           f"got data.window_sampling={cfg.data.window_sampling!r}")
    if cfg.trainer.context_parallel > 1:
        _check_context_parallel(cfg)
    _check_optim(cfg.optim)
    _check_trainer(cfg.trainer)
    _check(bool(cfg.name) and "/" not in cfg.name and cfg.name not in (".", ".."), "name",
           "must be a non-empty directory name without '/'")
    for key in ("data.path", "data.val_path"):
        for pattern in _get(cfg, key):
            _check(_exists(pattern), key, f"'{pattern}' does not exist (no file matches{_relative_to(pattern)})")
    _check(cfg.checkpoint.keep >= -1, "checkpoint.keep",
           f"must be >= -1 (-1 keeps every checkpoint, 0 none), got {cfg.checkpoint.keep}")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none"):
        _check(Path(resume).exists(), "checkpoint.resume",  # a file, or a DeepSpeed checkpoint folder
               f"'{resume}' is not a file (nor a DeepSpeed checkpoint folder); use auto, none or a checkpoint path")
    _check_memory(cfg)


def _check_finite(cfg: Any, prefix: str = "") -> None:
    """Every float in the config is finite: ``inf > 0`` would pass a range check (``optim.lr=inf``)."""
    for f in fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            _check_finite(value, key + ".")
        for v in value if isinstance(value, list | ListConfig) else [value]:
            if isinstance(v, float):
                _check(math.isfinite(v), key, f"must be a finite number, got {v}")


def _lightning_choices() -> dict[str, tuple[str, ...]]:
    """What Lightning's Trainer accepts for precision and accelerator (else it raises mid-start)."""
    try:
        from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
        from lightning.pytorch.accelerators import AcceleratorRegistry
    except ImportError:  # another Lightning version: the Trainer checks them itself
        return {}
    precisions = (*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS))
    return {"trainer.precision": precisions,
            "trainer.accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))}


def _check_model(m: ModelConfig) -> None:
    for key in ("d_model", "n_layers", "d_state"):
        _check(getattr(m, key) > 0, f"model.{key}", f"must be positive, got {getattr(m, key)}")
    _check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", f"must be positive, got {m.mlp_ratio}")
    for key, problem in init_problems({k: v for k, v in vars(m.init).items() if k != "name"}, prefix="model.init."):
        _check(False, key, problem)  # nn/init.py owns these rules (the inits raise the same)
    if m.carry_state:
        _check(not m.bidirectional, "model.carry_state",
               "a bidirectional model carries no state across windows (its backward half reads the future)")
        _check(_layer_attr(m.kind, "carries_state", True), "model.carry_state",
               f"kind={m.kind} has no finite state to carry across windows; use a recurrent kind")
    context = LayerContext(kind=m.kind, d_model=m.d_model, d_state=m.d_state, init=m.init.name)
    for key, problem in layer_config(m).problems(context):  # the layer's own rules, in its file
        _check(False, f"model.{key}", problem)


def _layer_attr(kind: str, name: str, default: Any) -> Any:
    """A class attribute of the layer registered as ``kind`` (a registered partial: of its class)."""
    cls = LAYERS[kind].layer_cls
    return getattr(getattr(cls, "func", cls), name, default)


def _check_context_parallel(cfg: Config) -> None:
    """What splitting a sequence over trainer.context_parallel ranks needs (the layers raise the same)."""
    m, t, n = cfg.model, cfg.trainer, cfg.trainer.context_parallel
    key = "trainer.context_parallel"
    _check(_layer_attr(m.kind, "context_parallel", False), key,
           f"model.kind={m.kind} cannot split a sequence over ranks; use one of "
           f"{', '.join(k for k in LAYERS if _layer_attr(k, 'context_parallel', False))}")
    _check(not (m.bidirectional and _layer_attr(m.kind, "flips_time", False)), key,
           f"a bidirectional {m.kind} reverses time by flipping its slice, which is another rank's; "
           "use a causal model or model.kind lru/s4d")
    _check(cfg.data.seq_len % n == 0, key,
           f"data.seq_len={cfg.data.seq_len} does not divide into {n} equal slices")
    _check(not m.carry_state, key, "model.carry_state is not supported with context parallelism yet "
           "(the last rank's state would have to reach the first rank's next window)")
    _check(t.activation_checkpointing != "chunk", key,
           "trainer.activation_checkpointing=chunk runs time chunks on one rank; use block")
    _check(t.strategy in ("auto", "ddp", "fsdp"), key,
           f"composes with trainer.strategy auto, ddp or fsdp, got {t.strategy!r}")
    _check(cfg.task.kind in ("auto", "lm", "regress"), key,
           f"needs a loss per position (task.kind lm or regress), got task.kind={cfg.task.kind}")
    devices = t.devices if isinstance(t.devices, int) and not isinstance(t.devices, bool) else None
    if devices is not None and devices > 0:
        world = devices * t.num_nodes
        _check(world % n == 0, key, f"{n} does not divide the world size trainer.devices x trainer.num_nodes "
               f"= {devices} x {t.num_nodes} = {world}")


def _check_optim(o: OptimConfig) -> None:
    _check(o.lr > 0, "optim.lr", f"must be positive, got {o.lr}")
    _check(o.eps > 0, "optim.eps", f"must be positive (AdamW divides by sqrt(v) + eps), got {o.eps}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.recurrent_lr_factor > 0, "optim.recurrent_lr_factor", f"must be positive, got {o.recurrent_lr_factor}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
           "optim.betas", f"must be two numbers in [0, 1), got {list(o.betas)}")


def _check_trainer(t: TrainerConfig) -> None:
    # a negative max_norm makes clip_grad_norm_ multiply every gradient by a negative factor:
    # training then climbs the loss and still exits 0
    _check(t.gradient_clip_val >= 0, "trainer.gradient_clip_val",
           f"must be >= 0 (a maximum gradient norm; 0 = no clipping), got {t.gradient_clip_val}")
    _check(t.limit_val_batches >= 0, "trainer.limit_val_batches",
           f"must be >= 0 (batches per validation; 0 = no validation), got {t.limit_val_batches}")
    _check(t.log_every_n_steps >= 0, "trainer.log_every_n_steps", f"must be >= 0, got {t.log_every_n_steps}")
    _check(_valid_devices(t.devices), "trainer.devices",
           f"must be auto, a positive count, -1 (all), or a non-empty list of distinct device indices "
           f"(e.g. [0, 1]), got {t.devices!r}")


def _valid_devices(d: Any) -> bool:
    """Lightning's forms: ``auto``, a count >= 1, -1 (all), "0,1", or a list of indices."""
    if isinstance(d, ListConfig | list | tuple):
        return (len(d) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in d)
                and len(set(d)) == len(d))
    if isinstance(d, str):
        s = d.strip()
        if s in ("auto", "-1"):
            return True
        if "," in s:
            return _valid_devices([int(p) if p.strip().isdigit() else -2 for p in s.split(",") if p.strip()])
        return s.isdigit() and int(s) >= 1
    return isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)


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


def _relative_to(pattern: str) -> str:
    return "" if Path(pattern).is_absolute() else f", relative to the working directory {Path.cwd()}"


# ------------------------------------------------------------------------ memory, before any work

GiB = 1 << 30


@dataclass
class MemoryEstimate:
    """A lower bound on the host memory a run needs (fp32; what is certain, not what is likely).

    Every rank builds the whole model on the CPU before any strategy moves or shards it, so the
    weights count once per rank on this machine. Training on the CPU adds the gradients and the
    two AdamW moments (once in all, however sharded) and each rank's activations. On an accelerator
    those live in device memory, which is not checked here."""

    params: int
    embedding_params: int  # of params: embedding and LM head (vocabulary x d_model)
    ranks: int
    on_cpu: bool
    activation_bytes: int  # per rank, training on the CPU only

    @property
    def weight_bytes(self) -> int:
        return 4 * self.params * self.ranks

    @property
    def optimizer_bytes(self) -> int:
        return 12 * self.params if self.on_cpu else 0

    @property
    def total(self) -> int:
        return self.weight_bytes + self.optimizer_bytes + self.activation_bytes * self.ranks


def estimate_memory(cfg: Config) -> MemoryEstimate:
    """Count the parameters that the model has at least (an MLP per block, the mixer's lower bound from
    its layer config, ``min_params``: d_model x d_state unless the layer says otherwise), the embedding
    where the vocabulary is known before the data is read, and the MLP input and hidden activations
    that backward keeps per token and layer."""
    m, d = cfg.model, cfg.data
    hidden = max(1, round(m.mlp_ratio * m.d_model))
    mlp = (3 if m.mlp == "glu" else 2) * m.d_model * hidden
    mixer = layer_config(m).min_params(m.d_model, m.d_state) * (2 if m.bidirectional else 1)
    vocab = _vocab_lower_bound(d)
    embedding = vocab * m.d_model * (1 if m.tie_weights else 2)
    params = m.n_layers * (mlp + mixer) + embedding
    on_cpu = _trains_on_cpu(cfg.trainer.accelerator)
    tokens = d.batch_size * d.seq_len
    activations = 4 * tokens * m.n_layers * (hidden + m.d_model) if on_cpu else 0
    devices = cfg.trainer.devices
    ranks = devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1
    return MemoryEstimate(params, embedding, ranks, on_cpu, activations)


def _vocab_lower_bound(d: DataConfig) -> int:
    """The vocabulary where it follows from the config alone; else 0 (the embedding is left out)."""
    if d.kind == "recall":
        return d.vocab_size
    if d.tokenizer == "nucleotide" and d.kind in ("fasta", "labelled"):
        return 4 ** min(max(d.kmer, 1), 8)
    if d.tokenizer == "byte" and d.kind in ("text", "labelled"):
        return 256
    return 0


def _trains_on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    try:  # Lightning's count is fork-safe (NVML), unlike initialising CUDA here
        from lightning.fabric.accelerators.cuda import num_cuda_devices

        return num_cuda_devices() == 0
    except Exception:  # no usable CUDA stack: auto picks the CPU (or MPS: a lower bound still)
        return True


def available_memory() -> int | None:
    """Bytes this machine can give a new process now (MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(cfg: Config) -> None:
    """A model that cannot fit stops here, naming the keys, instead of as a raw allocator error."""
    available = available_memory()
    if available is None:
        return
    e = estimate_memory(cfg)
    if e.total <= available:
        return
    key, keys = _memory_culprit(cfg, e)
    parts = [f"{e.params:.3g} parameters: {e.weight_bytes / GiB:.3g} GiB of weights"
             + (f" on {e.ranks} ranks" if e.ranks > 1 else "")]
    if e.on_cpu:
        parts.append(f"{e.optimizer_bytes / GiB:.3g} GiB of gradients and AdamW state")
        parts.append(f"{e.activation_bytes * e.ranks / GiB:.3g} GiB of activations")
    _check(False, key, f"this run needs at least {e.total / GiB:.3g} GiB of memory ({'; '.join(parts)}), but "
                       f"{available / GiB:.3g} GiB is available on this machine; lower {keys}")


def _memory_culprit(cfg: Config, e: MemoryEstimate) -> tuple[str, str]:
    """The key to name (the largest term's) and the settings that make that term."""
    m, d = cfg.model, cfg.data
    if e.activation_bytes * e.ranks > e.weight_bytes + e.optimizer_bytes:
        return "data.batch_size", (f"data.batch_size={d.batch_size} x data.seq_len={d.seq_len} tokens, "
                                   f"model.n_layers={m.n_layers}, model.d_model={m.d_model}")
    if e.embedding_params > e.params - e.embedding_params:
        key = ("data.vocab_size" if d.kind == "recall"
               else "data.kmer" if d.tokenizer == "nucleotide" else "data.tokenizer")
        return key, f"{key}={_get(cfg, key)} (vocabulary) x model.d_model={m.d_model}"
    return "model.d_model", (f"model.d_model={m.d_model}, model.n_layers={m.n_layers}, "
                             f"model.mlp_ratio={m.mlp_ratio}, model.d_state={m.d_state}")
