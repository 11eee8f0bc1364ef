"""sSE and scSE: spatial and concurrent spatial-channel squeeze & excitation.

Roy, Navab, Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in
Fully Convolutional Networks", MICCAI 2018; journal version "Recalibrating Fully
Convolutional Networks with Spatial and Channel 'Squeeze & Excitation' Blocks",
IEEE TMI 2019. Official code: ai-med/squeeze_and_excitation
(``squeeze_and_excitation/squeeze_and_excitation.py``).

Forward, X of shape (B, C, *S)::

    sSE:  q = sigmoid(w . X + b)                 (B, *S),  w: C, b: 1
          (a 1x1 conv C -> 1 with bias: one linear map over channels)
          Y_sSE = X * q                          (q broadcast over C)

    cSE:  z = GAP(X)                             (B, C)
          s = sigmoid(W2 relu(W1 z + b1) + b2)   (B, C),  W1: C/r x C, W2: C x C/r
          Y_cSE = X * s                          (s broadcast over S)

    scSE: Y = max(Y_cSE, Y_sSE)   (merge="max", element-wise; the default)
          Y = Y_cSE + Y_sSE       (merge="sum", the MICCAI paper's equation)

Defaults as the official code: r = 2, hidden width ``C // r``, biases everywhere,
no BatchNorm, element-wise max merge. The MICCAI paper writes the merge as a sum;
the official ``ChannelSpatialSELayer`` takes ``torch.max`` of the two outputs in
every commit and the TMI journal version compared aggregations (max-out, addition,
multiplication, concatenation) and found max-out best (repository issues #3, #10).
We therefore default to ``merge="max"`` and offer the paper's ``"sum"``. A product
merge is not in the official code and is not offered.

Deviation: the official sSE is a ``Conv2d``/``Conv3d``; we apply the same 1x1
conv as a matrix product over channels so that one module serves 1, 2 and 3
spatial dims (same maths, weight stored as ``proj.weight`` of shape (1, C)).

The max merge is written ``where(X s >= X q, X s, max(X s, X q))``: at a tie (X = 0,
common after a ReLU, or s = q) the gradient takes the cSE branch, a valid
subgradient (the official ``torch.max`` splits it in halves between the branches);
a NaN propagates as in ``torch.max``.

Recorded maps: ``"channel"`` (B, C) = s, ``"spatial"`` (B, *S) = q.

A fast CPU implementation of both modules is registered in :mod:`convattn.fast.scse`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..registry import register

MERGES = ("max", "sum")


def sse_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q = sigmoid(w . x + b): a 1x1 conv C -> 1 as a matrix product, (B, *S)."""
    B, C = x.shape[:2]
    flat = x.flatten(2)
    # bmm with the (1, C) weight expanded over the batch: one read of x (a
    # broadcasting matmul would copy x first)
    w = weight.view(1, 1, C).to(x.dtype).expand(B, 1, C)
    logits = torch.baddbmm(bias.to(x.dtype).view(1, 1, 1), w, flat)
    return torch.sigmoid(logits.view((B,) + x.shape[2:]))


def _bcast_channel(s: torch.Tensor, nd: int) -> torch.Tensor:
    return s.view(s.shape + (1,) * nd)


@register(
    "sse",
    family="spatial",
    paper="Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
    authors="Roy, Navab, Wachinger",
    venue="MICCAI",
    year=2018,
    equation="""
        q = sigmoid(Conv1x1_{C->1}(X)) in R^{B x 1 x S}
        Y = X * q
    """,
    url="https://arxiv.org/abs/1803.02579",
)
class SSE(AttentionModule):
    """Spatial squeeze & channel excitation (sSE) gate.

    Args:
        channels: input channels C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.proj = nn.Linear(channels, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map q, shape (B, *S)."""
        return sse_gate(x, self.proj.weight, self.proj.bias)

    def gate_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """q from the bias-free logits w . X, (B, *S)."""
        return torch.sigmoid(logits + self.proj.bias.to(logits.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        q = self.gate(x)
        self.record("spatial", q)
        return x * q.unsqueeze(1)


@register(
    "scse",
    family="combined",
    paper="Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
    authors="Roy, Navab, Wachinger",
    venue="MICCAI",
    year=2018,
    equation="""
        s = sigmoid(W2 relu(W1 GAP(X) + b1) + b2)  (B, C),  W1: C/r x C
        q = sigmoid(Conv1x1_{C->1}(X))              (B, 1, *S)
        Y = max(X * s, X * q)   (merge="max", official code; default)
        Y = X * s + X * q       (merge="sum", MICCAI paper)
    """,
    url="https://arxiv.org/abs/1803.02579",
    notes="The paper sums the two branches; the official code (and the TMI journal "
    "version's best setting) takes the element-wise max: merge='max' is the default.",
)
class SCSE(AttentionModule):
    """Concurrent spatial and channel squeeze & excitation (scSE).

    Args:
        channels: input channels C.
        reduction: r of the cSE bottleneck, hidden width ``C // r`` (default 2,
            the official code's).
        hidden: explicit cSE hidden width (overrides ``reduction``).
        merge: ``"max"`` (official code, default) or ``"sum"`` (MICCAI paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 2,
        hidden: int | None = None,
        merge: str = "max",
    ) -> None:
        super().__init__(channels)
        if merge not in MERGES:
            raise ValueError(f"{self._owner()}: merge must be one of {', '.join(map(repr, MERGES))}, got {merge!r}")
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.merge = merge
        self.fc1 = nn.Linear(channels, width)
        self.fc2 = nn.Linear(width, channels)
        self.proj = nn.Linear(channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, q): the channel weights (B, C) and the spatial map (B, *S)."""
        dims = tuple(range(2, x.dim()))
        s = self.channel_gate_from_mean(x.mean(dims))
        q = sse_gate(x, self.proj.weight, self.proj.bias)
        return s, q

    def channel_gate_from_mean(self, z: torch.Tensor, _unused: torch.Tensor | None = None) -> torch.Tensor:
        """s from z = GAP(X), (B, C)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))

    def spatial_gate_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """q from the bias-free logits w . X, (B, *S)."""
        return torch.sigmoid(logits + self.proj.bias.to(logits.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s, q = self.gates(x)
        self.record("channel", s)
        self.record("spatial", q)
        sb = _bcast_channel(s, x.dim() - 2)
        qb = q.unsqueeze(1)
        if self.merge == "sum":
            return x * (sb + qb)
        ys, yq = x * sb, x * qb
        # max(ys, yq): a tie takes the cSE branch (where), a NaN propagates (maximum)
        return torch.where(ys >= yq, ys, torch.maximum(ys, yq))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.fc1.out_features}, merge={self.merge!r}"
