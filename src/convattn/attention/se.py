"""Squeeze-and-Excitation (SE).

Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2020.
Official code: hujie-frank/SENet (``SE-ResNet-50.prototxt``).

Forward, X of shape (B, C, *S)::

    z = GAP(X)                              (B, C)
    s = sigmoid(W2 relu(W1 z + b1) + b2)    (B, C),  W1: C/r x C, W2: C x C/r
    Y = X * s                               (B, C, *S), s broadcast over S

Defaults as the official code: r = 16, hidden width ``C // r`` (no rounding),
biases on both layers, no BatchNorm. Placement in a ResNet: after the last BN of
the residual branch, before the identity add.

A fast CPU implementation of this maths is registered in :mod:`convattn.fast.channel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels, spatial_mean, unsqueeze_spatial
from ..registry import register


@register(
    "se",
    family="channel",
    paper="Squeeze-and-Excitation Networks",
    authors="Hu, Shen, Sun",
    venue="CVPR",
    year=2018,
    equation="""
        z = GAP(X) in R^{B x C}
        s = sigmoid(W2 relu(W1 z + b1) + b2),  W1: C/r x C, W2: C x C/r
        Y = X * s
    """,
    url="https://arxiv.org/abs/1709.01507",
)
class SE(AttentionModule):
    """Squeeze-and-Excitation channel gate.

    Args:
        channels: input channels C.
        reduction: r, hidden width ``C // r`` (default 16, the paper's).
        hidden: explicit hidden width (overrides ``reduction``).
    """

    def __init__(self, channels: int, reduction: float = 16, hidden: int | None = None) -> None:
        super().__init__(channels)
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.fc1 = nn.Linear(channels, width)
        self.fc2 = nn.Linear(width, channels)

    def gate_from_mean(self, z: torch.Tensor, _unused: torch.Tensor | None = None) -> torch.Tensor:
        """s from the pooled vector z = GAP(X), (B, C)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights s, shape (B, C)."""
        return self.gate_from_mean(spatial_mean(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = self.gate(x)
        self.record("channel", s)
        return x * unsqueeze_spatial(s, x.dim() - 2)
