"""Coordinate Attention (CA).

Hou, Zhou, Feng, "Coordinate Attention for Efficient Mobile Network Design",
CVPR 2021. Official code: houqb/CoordAttention (``coordatt.py``).

Forward, X of shape (B, C, H, W) (2-D only: the two strip poolings are the H and
W axes)::

    z^h = mean_W X                              (B, C, H, 1)
    z^w = mean_H X, transposed                  (B, C, W, 1)
    f = h_swish(BN(Conv1x1_{C->m}([z^h; z^w]))) (B, m, H + W, 1)  (BN over the concatenation)
    f^h, f^w = split(f, [H, W])                 (B, m, H, 1), (B, m, W, 1)
    g^h = sigmoid(Conv1x1_{m->C}(f^h))          (B, C, H, 1)
    g^w = sigmoid(Conv1x1_{m->C}(f^w))^T        (B, C, 1, W)
    Y = X * g^h * g^w                           (B, C, H, W)

with h_swish(t) = t * relu6(t + 3) / 6 (``nn.Hardswish``).

Defaults as the official code: ``reduction = 32`` and ``m = max(8, C // 32)``
(``min_hidden = 8``), all three 1x1 convs with bias, BatchNorm2d with PyTorch's
default momentum and eps, h_swish, sigmoid gates. The paper's figure writes the
output channels of the gate convs as C (the official class allows ``oup != inp``;
as an attention drop-in, ours keeps C).

timm's ``CoordAttn`` has the same graph but different defaults (hidden width
``make_divisible(C / 16 * 2/3, 8)``, convs without bias); with ``rd_channels=m``
and ``bias=True`` it computes exactly this module.

Recorded maps: ``"height"`` (B, C, H) = g^h, ``"width"`` (B, C, W) = g^w and
``"spatial"`` (B, H, W) = mean_C (g^h ⊗ g^w), the channel mean of the separable
per-element gate (a summary for display; the real gate is per channel).

A fast CPU implementation of this maths is registered in :mod:`convattn.fast.coord`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..registry import register


@register(
    "coord",
    family="combined",
    paper="Coordinate Attention for Efficient Mobile Network Design",
    authors="Hou, Zhou, Feng",
    venue="CVPR",
    year=2021,
    dims=(2,),
    equation="""
        z^h = mean_W X (B, C, H), z^w = mean_H X (B, C, W)
        f = h_swish(BN(Conv1x1_{C->m}([z^h; z^w]))),  m = max(8, C // 32)
        g^h = sigmoid(Conv1x1_{m->C}(f^h)),  g^w = sigmoid(Conv1x1_{m->C}(f^w))
        Y = X * g^h * g^w
    """,
    url="https://arxiv.org/abs/2103.02907",
)
class CoordAttention(AttentionModule):
    """Coordinate Attention (2-D).

    Args:
        channels: input channels C.
        reduction: hidden width ``max(min_hidden, C // reduction)`` (default 32,
            the official code's).
        hidden: explicit hidden width m (overrides ``reduction``/``min_hidden``).
        min_hidden: lower bound of the hidden width (default 8, official).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 32,
        hidden: int | None = None,
        min_hidden: int = 8,
    ) -> None:
        super().__init__(channels)
        if isinstance(min_hidden, bool) or not isinstance(min_hidden, int) or min_hidden < 1:
            raise ValueError(f"{self._owner()}: min_hidden must be a positive int, got {min_hidden!r}")
        if hidden is None:
            if reduction is None or isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
                raise ValueError(f"{self._owner()}: reduction must be a positive number, got {reduction!r}")
            width = max(min_hidden, int(channels // reduction))
        else:
            width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(width, channels, 1)
        self.conv_w = nn.Conv2d(width, channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g^h, g^w) with shapes (B, C, H, 1) and (B, C, 1, W)."""
        H, W = x.shape[2:]
        z_h, z_w = x.mean(3), x.mean(2)  # (B, C, H), (B, C, W)
        f = self.act(self.bn1(self.conv1(torch.cat((z_h, z_w), dim=2).unsqueeze(3))))
        f_h, f_w = torch.split(f, [H, W], dim=2)
        g_h = torch.sigmoid(self.conv_h(f_h))
        g_w = torch.sigmoid(self.conv_w(f_w)).transpose(2, 3)
        return g_h, g_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g_h, g_w = self.gates(x)
        if self._map_sink is not None:
            self.record("height", g_h.squeeze(3))
            self.record("width", g_w.squeeze(2))
            # mean_C(g^h g^w)[b, i, j] = sum_c g^h[b, c, i] g^w[b, c, j] / C
            self.record("spatial", torch.matmul(g_h.squeeze(3).transpose(1, 2), g_w.squeeze(2)) / self.channels)
        return x * g_h * g_w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.conv1.out_channels}"
