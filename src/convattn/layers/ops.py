"""Dimension-agnostic tensor helpers: pooling over all spatial dims, ConvNd/BNNd."""

from __future__ import annotations

import torch
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv{dims}d(*args, **kwargs)``."""
    return _CONV[dims](*args, **kwargs)


def batch_norm_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.BatchNorm{dims}d(*args, **kwargs)``."""
    return _BN[dims](*args, **kwargs)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Global average pool over every spatial dim: (B, C, *S) -> (B, C)."""
    return x.flatten(2).mean(-1)


def spatial_amax(x: torch.Tensor) -> torch.Tensor:
    """Global max pool over every spatial dim: (B, C, *S) -> (B, C)."""
    return x.flatten(2).amax(-1)


def unsqueeze_spatial(v: torch.Tensor, nd: int) -> torch.Tensor:
    """(B, C) -> (B, C, 1, ..., 1) with ``nd`` trailing singleton dims."""
    return v.view(v.shape + (1,) * nd)


def channel_pool(x: torch.Tensor, max_first: bool = True) -> torch.Tensor:
    """CBAM's channel pooling: (B, C, *S) -> (B, 2, *S) = cat[max_c, mean_c].

    ``max_first`` follows the official code; the paper writes [avg; max].
    """
    mx = x.amax(1, keepdim=True)
    mean = x.mean(1, keepdim=True)
    return torch.cat((mx, mean) if max_first else (mean, mx), dim=1)


def pointwise_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """The per-position MLP ``W2 relu(W1 x + b1) + b2`` over channels.

    x (B, C, *S); w1 (H, C), b1 (H,), w2 (O, H), b2 (O,). This is a 1x1 conv
    C -> H -> O written as two batched matrix products, so it works for any number
    of spatial dims without a ConvNd. Returns (B, O, *S).
    """
    B, C = x.shape[:2]
    flat = x.flatten(2)
    h = torch.baddbmm(b1.view(1, -1, 1), w1.unsqueeze(0).expand(B, -1, -1), flat)
    h = torch.relu(h)
    out = torch.baddbmm(b2.view(1, -1, 1), w2.unsqueeze(0).expand(B, -1, -1), h)
    return out.view((B, out.shape[1]) + x.shape[2:])


def recording_graph() -> bool:
    """Whether a graph is being recorded: ``torch.jit`` trace or script (which the
    TorchScript-based ONNX exporter uses), or dynamo (``torch.compile``, ``torch.export``,
    the dynamo ONNX exporter). Code that takes a shortcut through non-standard ops or
    Python control flow on values takes its standard-op form then."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
