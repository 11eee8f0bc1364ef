"""Backbones with attention, and attach()/detach() for foreign CNNs.

Light to import: torchvision, timm and safetensors are imported only inside the
functions that need them.
"""

from .attach import (
    IdentityInit,
    InsertionPoint,
    PerStage,
    attach,
    attached,
    detach,
    insertion_points,
    per_stage,
)
from .cifar_resnet import CifarResNet
from .factory import create_model, list_models
from .pairing import separate_rng
from .weights import WeightsReport, load_backbone_weights

__all__ = [
    "CifarResNet",
    "IdentityInit",
    "InsertionPoint",
    "PerStage",
    "WeightsReport",
    "attach",
    "attached",
    "create_model",
    "detach",
    "insertion_points",
    "list_models",
    "load_backbone_weights",
    "per_stage",
    "separate_rng",
]
