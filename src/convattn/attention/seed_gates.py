"""A per-position MLP spatial gate, and its parallel fusion with an SE-style channel
gate: Y = A_s * X * A_c, both gates computed from X.

This formulation is not from a published paper (it is the one the essay
"Attention Mechanisms in Convolutional Networks" writes out in its sections 3 and
4); it is registered so that it can be compared with the published modules.

Forward, X of shape (B, C, *S), C1 = C // r::

    spatial   A_s = sigmoid(W2 relu(W1 X + b1) + b2)                  (B, *S)
              W1: C1 x C, W2: 1 x C1, applied at every position
              (two 1x1 convs with bias, computed as matrix products over C)
    channel   A_c = sigmoid(V2 relu(V1 AvgPool(X) + c1) + c2)          (B, C)
              V1: C1 x C, V2: C x C1 (SE-style, biases)
    mlp_spatial      Y = X * A_s
    parallel_gate    Y = A_s * X * A_c     (A_s and A_c both computed from X)

Default r = 16 for both branches. The brief leaves C1 open; 16 matches the
channel gate of the brief's own code (``reduction=16``), SE and CBAM's r, and
BAM's spatial branch, whose first layer is the same C -> C/16 1x1 conv. With
``spatial_reduction`` the spatial branch can be given its own r.

The 1x1 convs are written as batched matrix products over the channel axis, so
one module serves 1, 2 and 3 spatial dims (no ``dims`` argument). The parameters
are stored as Linear layers: ``fc1``/``fc2`` (``mlp_spatial``) and
``spatial_fc1``/``spatial_fc2``, ``channel_fc1``/``channel_fc2``
(``parallel_gate``); a Conv1x1 weight is the Linear weight with trailing 1s.

How it relates to the published modules: Y = X * (A_c (x) A_s) is a separable
3-D gate with both maps computed from X in parallel.

- Closest is BAM (parallel branches, channel MLP on GAP, spatial branch opening
  with a C -> C/r 1x1 conv). This gate drops BAM's two dilated 3x3 convs, all its
  BatchNorm, the shared sigmoid over the merged logits (sigmoid(M_c + M_s) in the
  paper, sigmoid(M_c M_s) in the code; this one multiplies two separate
  sigmoids), and the residual (1 + M).
- scSE also computes both maps from X in parallel, but its sSE is a single
  linear 1x1 conv (no hidden layer, no ReLU), it recalibrates X twice and merges
  the two outputs by sum (paper) or max (code) rather than multiplying the gates,
  and its cSE uses r = 2.
- CBAM also multiplies a channel and a spatial gate, but sequentially: its
  spatial map is computed from X * A_c, from a 7x7 conv + BN over the [max, mean]
  channel-pooled maps, not a per-position MLP of X.
- The per-position gate sigmoid(W2 relu(W1 x)) is structurally the additive
  attention gate of Attention U-Net (Oktay et al. 2018) without its gating signal.

Recorded maps: ``"spatial"`` A_s (B, *S); ``parallel_gate`` also ``"channel"`` A_c (B, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels, unsqueeze_spatial
from ..layers.ops import pointwise_mlp
from ..registry import register

_SEED = dict(
    paper="Attention Mechanisms in Convolutional Networks (project brief)",
    authors="convattn seed",
    venue="brief",
    year=2026,
)


def _spatial_gate(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """A_s = sigmoid(W2 relu(W1 X + b1) + b2), shape (B, *S)."""
    return torch.sigmoid(pointwise_mlp(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)).squeeze(1)


@register(
    "mlp_spatial",
    family="spatial",
    equation="""
        A_s = sigmoid(W2 relu(W1 X + b1) + b2)  per position,  W1: C/r x C, W2: 1 x C/r
        Y = X * A_s
    """,
    notes="The seed's spatial gate (project brief, not a published paper).",
    **_SEED,
)
class MLPSpatial(AttentionModule):
    """Per-position MLP spatial gate: two 1x1 convs C -> C/r -> 1, then a sigmoid.

    Args:
        channels: input channels C.
        reduction: r, hidden width ``C // r`` (default 16).
        hidden: explicit hidden width C1 (overrides ``reduction``).
    """

    def __init__(self, channels: int, reduction: float = 16, hidden: int | None = None) -> None:
        super().__init__(channels)
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.fc1 = nn.Linear(channels, width)
        self.fc2 = nn.Linear(width, 1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """A_s, shape (B, *S)."""
        return _spatial_gate(x, self.fc1, self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = self.gate(x)
        self.record("spatial", s)
        return x * s.unsqueeze(1)


@register(
    "parallel_gate",
    family="combined",
    equation="""
        A_s = sigmoid(W2 relu(W1 X + b1) + b2)  per position  (B, *S)
        A_c = sigmoid(V2 relu(V1 AvgPool(X) + c1) + c2)        (B, C)
        Y = A_s * X * A_c
    """,
    notes=(
        "The seed's fusion (project brief, not a published paper): both gates from X in parallel, "
        "multiplied. Closest published module: BAM; see the module docstring for BAM/scSE/CBAM."
    ),
    **_SEED,
)
class ParallelGate(AttentionModule):
    """Parallel fusion of the MLP spatial gate and an SE channel gate: Y = A_s * X * A_c,
    both gates computed from X.

    Args:
        channels: input channels C.
        reduction: r of both branches, hidden width ``C // r`` (default 16).
        hidden: explicit hidden width of both branches (overrides ``reduction``).
        spatial_reduction: r of the spatial branch only (default: ``reduction``).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        spatial_reduction: float | None = None,
    ) -> None:
        super().__init__(channels)
        owner = self._owner()
        width = hidden_channels(owner, channels, reduction, hidden)
        if spatial_reduction is None:
            s_width = width
        else:
            s_width = hidden_channels(owner, channels, spatial_reduction)
        self.channel_fc1 = nn.Linear(channels, width)
        self.channel_fc2 = nn.Linear(width, channels)
        self.spatial_fc1 = nn.Linear(channels, s_width)
        self.spatial_fc2 = nn.Linear(s_width, 1)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """A_c, shape (B, C)."""
        z = x.mean(tuple(range(2, x.dim())))
        return torch.sigmoid(self.channel_fc2(F.relu(self.channel_fc1(z))))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """A_s, shape (B, *S)."""
        return _spatial_gate(x, self.spatial_fc1, self.spatial_fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        ac = self.channel_gate(x)
        as_ = self.spatial_gate(x)
        self.record("channel", ac)
        self.record("spatial", as_)
        return x * unsqueeze_spatial(ac, x.dim() - 2) * as_.unsqueeze(1)
