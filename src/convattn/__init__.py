"""convattn: verified attention mechanisms for convolutional networks."""

from .layers.base import AttentionModule
from .maps import AttentionMaps, capture_maps
from .models import (
    CifarResNet,
    IdentityInit,
    InsertionPoint,
    PerStage,
    WeightsReport,
    attach,
    attached,
    create_model,
    detach,
    insertion_points,
    list_models,
    load_backbone_weights,
    per_stage,
)
from .registry import (
    AttentionSpec,
    create_attention,
    describe,
    get_spec,
    list_attention,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionMaps",
    "AttentionModule",
    "AttentionSpec",
    "CifarResNet",
    "IdentityInit",
    "InsertionPoint",
    "PerStage",
    "WeightsReport",
    "attach",
    "attached",
    "capture_maps",
    "compare",
    "create_attention",
    "create_model",
    "describe",
    "detach",
    "fast",
    "get_spec",
    "insertion_points",
    "list_attention",
    "list_models",
    "load_backbone_weights",
    "per_stage",
    "register",
    "__version__",
]

from . import attention as _attention  # noqa: E402,F401  (registers the zoo)
from . import fast  # noqa: E402  (registers the fast paths and installs their selector)


def compare(*args, **kwargs):
    """Compare attention variants over paired seeds; see :func:`convattn.engine.jobs.compare`."""
    from .engine.jobs import compare as _compare  # the job's dependencies load only when it runs

    return _compare(*args, **kwargs)
