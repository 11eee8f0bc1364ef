"""Efficient Multi-scale Attention (EMA) with cross-spatial learning.

Ouyang, He, Zhang, Luo, Guo, Zhan, Huang, "Efficient Multi-Scale Attention Module
with Cross-Spatial Learning", ICASSP 2023. Official code:
YOLOonMe/EMA-attention-module (``EMA_attention_module``).

Forward, X of shape (B, C, H, W) (2-D only), G channel groups of m = C / G channels,
each group X_g (m, H, W) handled alone (the batch is B G groups)::

    1x1 branch:  z^h = mean_W X_g (m, H),  z^w = mean_H X_g (m, W)
                 [u^h; u^w] = Conv1x1_{m->m}([z^h; z^w])            (m, H + W), with bias
                 X1 = GN(X_g * sigmoid(u^h)[:, :, None] * sigmoid(u^w)[:, None, :])
                 GN: GroupNorm with m groups (each channel over H x W), affine
    3x3 branch:  X2 = Conv3x3_{m->m}(X_g), padding 1, with bias
    cross-spatial: s1 = softmax_m(GAP X1),  s2 = softmax_m(GAP X2)   (1, m)
                 W = s1 X2 + s2 X1                                    (1, H W)
    Y_g = X_g * sigmoid(W)                                            (m, H, W)

Defaults as the official code: G = 32 (``factor``; here ``groups``). C must be a
multiple of G (the official code's assertion ``C // G > 0`` lets other widths
through to a reshape error; here a clear error says which groups fit).
Parameters: GN 2m + 1x1 conv m^2 + m + 3x3 conv 9 m^2 + m.

Recorded maps: ``"spatial"`` (B, H, W) = mean over the groups of sigmoid(W).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..layers.base import check_groups
from ..registry import register


@register(
    "ema",
    family="combined",
    paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning",
    authors="Ouyang, He, Zhang, Luo, Guo, Zhan, Huang",
    venue="ICASSP",
    year=2023,
    dims=(2,),
    equation="""
        per group X_g of m = C/G channels (G = 32):
        X1 = GN(X_g * sigmoid(u^h) * sigmoid(u^w)),  [u^h; u^w] = Conv1x1([mean_W X_g; mean_H X_g])
        X2 = Conv3x3(X_g)
        W = softmax(GAP X1) X2 + softmax(GAP X2) X1    (1 x HW)
        Y_g = X_g * sigmoid(W)
    """,
    url="https://arxiv.org/abs/2305.13563",
    notes="groups = 32 (the official factor); C must be a multiple of groups.",
)
class EMA(AttentionModule):
    """Efficient multi-scale attention (2-D).

    Args:
        channels: input channels C, a multiple of ``groups``.
        groups: G, the number of channel groups (default 32, the official ``factor``).
    """

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__(channels)
        owner = self._owner()
        check_groups(owner, channels, groups)
        self.groups = groups
        m = channels // groups
        self.gn = nn.GroupNorm(m, m)
        self.conv1x1 = nn.Conv2d(m, m, 1)
        self.conv3x3 = nn.Conv2d(m, m, 3, padding=1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(W) per group, shape (B G, 1, H, W)."""
        B, C, H, W = x.shape
        xg = x.reshape(B * self.groups, C // self.groups, H, W)
        z = torch.cat((xg.mean(3), xg.mean(2)), 2).unsqueeze(3)  # (BG, m, H + W, 1)
        u_h, u_w = torch.split(self.conv1x1(z).squeeze(3), [H, W], 2)
        x1 = self.gn(xg * torch.sigmoid(u_h).unsqueeze(3) * torch.sigmoid(u_w).unsqueeze(2))
        x2 = self.conv3x3(xg)
        s1 = torch.softmax(x1.mean((2, 3)), -1).unsqueeze(1)  # (BG, 1, m)
        s2 = torch.softmax(x2.mean((2, 3)), -1).unsqueeze(1)
        w = torch.bmm(s1, x2.flatten(2)) + torch.bmm(s2, x1.flatten(2))  # (BG, 1, HW)
        return torch.sigmoid(w).view(B * self.groups, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        a = self.weights(x)
        if self._map_sink is not None:
            self.record("spatial", a.view(B, self.groups, H, W).mean(1))
        return (x.reshape(B * self.groups, C // self.groups, H, W) * a).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
