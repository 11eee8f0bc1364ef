"""Few-pass tensor helpers for the gating modules (CBAM, BAM, seed gates).

These are plain eager PyTorch (no compilation): they only choose the order of
operations so that a gate touches the full-size activation as few times as
possible. Every helper is dimension agnostic (1, 2 or 3 spatial dims) and memory
format agnostic (contiguous or channels-last).
"""

from __future__ import annotations

import torch


def spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial dims of a (B, C, *S) tensor: ``(2, ..., x.dim() - 1)``."""
    return tuple(range(2, x.dim()))


def spatial_mean_amax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global average and max pool over every spatial dim: two (B, C) tensors.

    Reduces over a dims tuple instead of ``flatten(2)`` so that a channels-last
    input is not copied first.
    """
    dims = spatial_dims(x)
    return x.mean(dims), x.amax(dims)


def channel_weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mean_c(x * w)`` for x (B, C, *S) and w (B, C), without forming ``x * w``.

    A batched matrix product (B, 1, C) @ (B, C, S): one read of x.
    Returns (B, *S).
    """
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    out = torch.bmm((w / C).unsqueeze(1).to(x.dtype), flat)
    return out.view((B,) + x.shape[2:])


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
    flat = x.reshape(B, C, -1)
    h = torch.baddbmm(b1.view(1, -1, 1), w1.unsqueeze(0).expand(B, -1, -1), flat)
    h = torch.relu(h)
    out = torch.baddbmm(b2.view(1, -1, 1), w2.unsqueeze(0).expand(B, -1, -1), h)
    return out.view((B, out.shape[1]) + x.shape[2:])
