"""Strip attention and simplified coordinate attention: timm's strip-pooling gates.

Two lightweight relatives of coordinate attention that timm ships without a
paper (``timm/layers/coord_attn.py``: ``StripAttn``, key ``strip``, and
``SimpleCoordAttn``, key ``scoord``). Both pool X along W and along H and gate X
with the sigmoid of a *sum* of the two strip responses (coordinate attention
multiplies two sigmoids). X of shape (B, C, H, W), 2-D only::

    z^h = mean_W X (B, C, H),   z^w = mean_H X (B, C, W)

    strip:   g = sigmoid(DW_h(z^h)[..., :, None] + DW_w(z^w)[..., None, :])
             DW: a depthwise 1-D conv along the strip (k = 3, zero padding k // 2,
             no bias); ``refine=False`` leaves the strips as they are
    scoord:  u^h = silu(W1 z^h + b1),  u^w = silu(W1 z^w + b1)   (shared, over channels)
             g = sigmoid((W_h u^h + b_h)[..., :, None] + (W_w u^w + b_w)[..., None, :])
             W1: m x C, W_h, W_w: C x m, m = make_divisible(C / 4 * 2/3, 8)

    Y = X * g                                                (B, C, H, W)

Defaults are timm's (without its ``has_skip`` residual, off by default there).
Parameters: strip 2 C k; scoord C m + m + 2 (m C + C).

Recorded maps: ``"spatial"`` (B, H, W) = mean_C g.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels, make_divisible
from ..registry import register

_TIMM = dict(
    authors="Wightman (timm)",
    venue="timm",
    year=2025,
    dims=(2,),
    url="https://github.com/huggingface/pytorch-image-models/blob/main/timm/layers/coord_attn.py",
)


class _StripGate(AttentionModule):
    """Y = X * g with g = ``self.gate(x)`` (B, C, H, W), the subclass's gate of the strips."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g = self.gate(x)
        if self._map_sink is not None:
            self.record("spatial", g.mean(1))
        return x * g


def _depthwise_1d(channels: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)


@register(
    "strip",
    family="combined",
    paper="Strip attention (timm's StripAttn; no paper)",
    equation="""
        z^h = mean_W X,  z^w = mean_H X
        g = sigmoid(DWConv1d_k(z^h) (+) DWConv1d_k(z^w)),  k = 3, no bias  (broadcast sum over H x W)
        Y = X * g
    """,
    notes="timm's StripAttn with its defaults (use_conv=True, kernel_size=3, no bias).",
    **_TIMM,
)
class StripAttention(_StripGate):
    """Strip attention (2-D).

    Args:
        channels: input channels C.
        kernel_size: k of the depthwise 1-D convs (odd, default 3, timm's).
        refine: apply the depthwise convs (default True; timm's ``use_conv``).
    """

    def __init__(self, channels: int, kernel_size: int = 3, refine: bool = True) -> None:
        super().__init__(channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self._owner()}: kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(refine, bool):
            raise ValueError(f"{self._owner()}: refine must be True or False, got {refine!r}")
        self.kernel_size = kernel_size
        self.conv_h = _depthwise_1d(channels, kernel_size) if refine else None
        self.conv_w = _depthwise_1d(channels, kernel_size) if refine else None

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """g, shape (B, C, H, W)."""
        z_h, z_w = x.mean(3), x.mean(2)
        if self.conv_h is not None:
            z_h, z_w = self.conv_h(z_h), self.conv_w(z_w)
        return torch.sigmoid(z_h.unsqueeze(3) + z_w.unsqueeze(2))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, refine={self.conv_h is not None}"


@register(
    "scoord",
    family="combined",
    paper="Simplified coordinate attention (timm's SimpleCoordAttn; no paper)",
    equation="""
        u^h = silu(W1 mean_W X + b1),  u^w = silu(W1 mean_H X + b1)   (W1: m x C, shared)
        g = sigmoid((W_h u^h + b_h) (+) (W_w u^w + b_w)),  m = make_divisible(C / 4 * 2/3, 8)
        Y = X * g
    """,
    notes="timm's SimpleCoordAttn with its defaults (rd_ratio 1/4, se_factor 2/3, divisor 8, bias, SiLU).",
    **_TIMM,
)
class SimpleCoordAttention(_StripGate):
    """Simplified coordinate attention (2-D).

    Args:
        channels: input channels C.
        rd_ratio, se_factor: hidden width ``make_divisible(C * rd_ratio * se_factor, 8)``
            (timm's names and defaults, 1/4 and 2/3, computed in timm's order).
        hidden: explicit hidden width m (overrides both).
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25, se_factor: float = 2 / 3,
                 hidden: int | None = None) -> None:
        super().__init__(channels)
        if hidden is None:
            for name, v in (("rd_ratio", rd_ratio), ("se_factor", se_factor)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise ValueError(f"{self._owner()}: {name} must be a positive number, got {v!r}")
            hidden = make_divisible(channels * rd_ratio * se_factor, 8, round_limit=0.0)
        width = hidden_channels(self._owner(), channels, None, hidden)
        self.fc1 = nn.Linear(channels, width)
        self.fc_h = nn.Linear(width, channels)
        self.fc_w = nn.Linear(width, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """g, shape (B, C, H, W)."""
        u_h = F.silu(self.fc1(x.mean(3).transpose(1, 2)))  # (B, H, m)
        u_w = F.silu(self.fc1(x.mean(2).transpose(1, 2)))  # (B, W, m)
        a_h = self.fc_h(u_h).transpose(1, 2)  # (B, C, H)
        a_w = self.fc_w(u_w).transpose(1, 2)  # (B, C, W)
        return torch.sigmoid(a_h.unsqueeze(3) + a_w.unsqueeze(2))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.fc1.out_features}"
