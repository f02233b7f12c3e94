"""Pure-PyTorch layers: linear recurrences, blocks and backbones. No Lightning in here."""

from ssm_train.nn.attention import CausalSelfAttention
from ssm_train.nn.backbone import Backbone
from ssm_train.nn.block import MIXERS, Block
from ssm_train.nn.init import INITS, get_init, register_init
from ssm_train.nn.lru import LRU
from ssm_train.nn.params import param_groups
from ssm_train.nn.s4d import S4D
from ssm_train.nn.scan import linear_scan, reference_scan
from ssm_train.nn.selective import SelectiveSSM

__all__ = [
    "linear_scan",
    "reference_scan",
    "INITS",
    "get_init",
    "register_init",
    "LRU",
    "S4D",
    "SelectiveSSM",
    "CausalSelfAttention",
    "Block",
    "MIXERS",
    "Backbone",
    "param_groups",
]
