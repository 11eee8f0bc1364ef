"""Small shared building blocks for the attention zoo."""

from .base import AttentionModule, check_channels, hidden_channels, make_divisible
from .ops import (
    batch_norm_nd,
    channel_pool,
    conv_nd,
    spatial_amax,
    spatial_mean,
    unsqueeze_spatial,
)

__all__ = [
    "AttentionModule",
    "batch_norm_nd",
    "channel_pool",
    "check_channels",
    "conv_nd",
    "hidden_channels",
    "make_divisible",
    "spatial_amax",
    "spatial_mean",
    "unsqueeze_spatial",
]
