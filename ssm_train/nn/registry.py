"""The sequence mixers by `model.kind`: each layer registers itself, with its own config, in its file.

    @dataclass
    class S4DConfig(LayerConfig):          # the kind's own keys: model.s4d.discretization, model.s4d.mode
        discretization: str = "zoh"
        mode: str = "conv"

    register_layer("s4d", S4D, S4DConfig)  # in nn/s4d.py, below the class

A registered kind is then a valid `model.kind`, has its section `model.<kind>` in the config
schema (ssm_train/config.py builds ModelConfig from `LAYERS`), is validated by its config's
`problems`, is built by `tasks/base.py::build_backbone`, counted by `config.estimate_memory`, and
listed in the docs' key table (scripts/layer_table.py). Nothing else needs editing: the modules of
``ssm_train.nn`` are imported, and so registered, when the package is (nn/__init__.py).

A layer class is called as

    layer_cls(d_model=H, d_state=N, reverse=..., init=name, init_params={...}, **fields of its config)

and provides forward(u [B, L, H]) -> [B, L, H], step(u_t [B, H], state) -> (y_t, state), and the
class attribute `recurrent_params` (names of the parameters that `param_groups` gives the
recurrent learning rate; empty for attention). Layers that do not use d_state or the eigenvalue
init accept and ignore them (attention: d_state is the head dimension).

`Block` and `Backbone` never see kinds: they take a mixer factory, `factory(d_model, reverse) ->
nn.Module`, which `mixer_factory(kind, d_state, config, init=..., init_params=...)` makes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from torch import nn

__all__ = [
    "LayerConfig", "LayerContext", "LayerSpec", "LAYERS", "MixerFactory", "register_layer", "get_layer",
    "mixer_factory",
]


class MixerFactory(Protocol):
    def __call__(self, d_model: int, reverse: bool = False) -> nn.Module: ...


@dataclass(frozen=True)
class LayerContext:
    """What a layer config's validation may look at besides its own fields (keys relative to `model.`)."""

    kind: str  # the registered kind, also the name of the config section: model.<kind>.<field>
    d_model: int
    d_state: int
    init: str  # model.init.name


@dataclass
class LayerConfig:
    """Base of every layer's config dataclass: its fields are the layer's keyword arguments."""

    def problems(self, ctx: LayerContext) -> Iterator[tuple[str, str]]:
        """(key relative to `model.`, what is wrong) for each invalid value; none by default."""
        return iter(())

    def min_params(self, d_model: int, d_state: int) -> int:
        """A lower bound on the layer's parameter count (for the memory check before a run).
        Default d_model·d_state, which every layer sized by d_state has; override otherwise."""
        return d_model * d_state

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class LayerSpec:
    kind: str
    layer_cls: Callable[..., nn.Module]
    config_cls: type[LayerConfig]
    module: str  # where the layer's code lives (its kernels are looked up there, e.g. by tests)
    recurrent: bool  # a diagonal linear recurrence with eigenvalues() (attention: False)
    doc: str  # one line for the key table

    def build(self, d_model: int, d_state: int, config: LayerConfig | None = None, *, reverse: bool = False,
              init: str | None = None, init_params: dict | None = None) -> nn.Module:
        config = self.config_cls() if config is None else config
        if not isinstance(config, self.config_cls):
            raise TypeError(f"kind {self.kind!r} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        init_kwargs = {} if init is None else {"init": init}
        if init_params is not None:
            init_kwargs["init_params"] = dict(init_params)
        return self.layer_cls(d_model=d_model, d_state=d_state, reverse=reverse, **init_kwargs, **config.kwargs())


LAYERS: dict[str, LayerSpec] = {}


def register_layer(kind: str, layer_cls: Callable[..., nn.Module], config_cls: type[LayerConfig], *,
                   recurrent: bool = True, doc: str | None = None) -> LayerSpec:
    """Make `kind` a valid model.kind, built as `layer_cls(..., **config_cls fields)`."""
    if kind in LAYERS:
        raise ValueError(f"layer kind {kind!r} is already registered (by {LAYERS[kind].module})")
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, LayerConfig)):
        raise TypeError(f"register_layer({kind!r}): config_cls must be a LayerConfig dataclass, got {config_cls!r}")
    cls = layer_cls.func if isinstance(layer_cls, functools.partial) else layer_cls
    if not isinstance(getattr(cls, "recurrent_params", None), tuple):
        raise TypeError(f"register_layer({kind!r}): {cls.__name__} must declare recurrent_params (a tuple, may be empty)")
    for f in dataclasses.fields(config_cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"register_layer({kind!r}): {config_cls.__name__}.{f.name} needs a default")
    summary = doc if doc is not None else (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    spec = LayerSpec(kind, layer_cls, config_cls, cls.__module__, recurrent, summary)
    LAYERS[kind] = spec
    return spec


def get_layer(kind: str) -> LayerSpec:
    try:
        return LAYERS[kind]
    except KeyError:
        raise ValueError(f"unknown mixer kind {kind!r}; valid: {', '.join(LAYERS)}") from None


def mixer_factory(kind: str, d_state: int = 64, config: LayerConfig | None = None, *, init: str | None = None,
                  init_params: dict | None = None) -> MixerFactory:
    """factory(d_model, reverse=False) -> a new `kind` layer, for Block and Backbone."""
    spec = get_layer(kind)

    def factory(d_model: int, reverse: bool = False) -> nn.Module:
        return spec.build(d_model, d_state, config, reverse=reverse, init=init, init_params=init_params)

    factory.kind = kind  # type: ignore[attr-defined]  (for repr and error messages)
    return factory
