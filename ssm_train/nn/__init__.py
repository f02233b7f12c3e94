"""Pure-PyTorch layers: linear recurrences, blocks and backbones. No Lightning in here.

Every module of this package is imported with it, so a layer file that calls `register_layer`
(nn/registry.py) is a valid `model.kind` as soon as it exists: no list of layers to extend.
The kernels they run on are in ``ssm_train.ops``.
"""

# isort: skip_file  (the built-in kinds register in this order: lru, real, s4d, selective, transformer)
import importlib
import pkgutil

from ssm_train.nn.lru import LRU
from ssm_train.nn.s4d import S4D
from ssm_train.nn.selective import SelectiveSSM
from ssm_train.nn.attention import CausalSelfAttention
from ssm_train.nn.backbone import Backbone
from ssm_train.nn.block import Block
from ssm_train.nn.init import INITS, get_init, register_init
from ssm_train.nn.params import param_groups
from ssm_train.nn.registry import LAYERS, get_layer, mixer_factory, register_layer
from ssm_train.ops.scan import linear_scan, reference_scan


def _import_every_layer() -> None:
    """Import each module of ssm_train.nn: the layer files register their kinds on import."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_every_layer()

__all__ = [
    "linear_scan",
    "reference_scan",
    "INITS",
    "get_init",
    "register_init",
    "LAYERS",
    "register_layer",
    "get_layer",
    "mixer_factory",
    "LRU",
    "S4D",
    "SelectiveSSM",
    "CausalSelfAttention",
    "Block",
    "Backbone",
    "param_groups",
]
