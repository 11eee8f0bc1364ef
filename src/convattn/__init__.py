"""convattn: verified attention mechanisms for convolutional networks."""

from .layers.base import AttentionModule
from .maps import AttentionMaps, capture_maps
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
    "capture_maps",
    "create_attention",
    "describe",
    "get_spec",
    "list_attention",
    "register",
    "__version__",
]

from . import attention as _attention  # noqa: E402,F401  (registers the zoo)
