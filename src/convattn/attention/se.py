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

Speed: on contiguous float32/float64 CPU tensors the pooling and the product run
in the native kernels of :mod:`convattn.layers.native` (one pass each; in
training one autograd function whose backward is one more pass, the MLP in
PyTorch; in eval without autograd the whole module is one kernel call,
:func:`~convattn.layers.plans.gate_plan`). Traced, compiled and exported
graphs, map captures and other tensors use the plain ops above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    AttentionModule,
    hidden_channels,
    plans,
    spatial_mean,
    unsqueeze_spatial,
)
from ..layers.gated import GateSpec, fast_ok, gated, wants_grad
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
        if fast_ok(self, x):
            return self._forward_native(x)
        s = self.gate(x)
        self.record("channel", s)
        return x * unsqueeze_spatial(s, x.dim() - 2)

    def _forward_native(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # (the parameter tuple costs more than the eval call's setup)
            params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            if wants_grad(x, params):
                return gated(x, GateSpec(channel=self.gate_from_mean), params)
        return plans.run(plans.eval_plan(self, x, self._plan), x, self)

    def _plan(self, dtype: torch.dtype) -> plans.Plan:
        return plans.gate_plan(dtype, mlp=(self.fc1, self.fc2))
