"""Shuffle Attention (SA-Net).

Zhang, Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
ICASSP 2021. Official code: wofmanaf/SA-Net (``models/sa_resnet.py``, ``sa_layer``).

Forward, X of shape (B, C, *S) (S = (L,), (H, W) or (D, H, W)), G groups of 2m
channels (m = C / (2G)); each group X_g (2m, *S) is split in half, X_g = [U; V],
U and V (m, *S)::

    channel branch  U' = U * sigmoid(c_w * mean_S U + c_b)                (m, *S)
    spatial branch  V' = V * sigmoid(s_w * GN(V) + s_b)                   (m, *S)
                    GN: GroupNorm with m groups on m channels (each channel
                    normalised over S, biased variance, eps 1e-5), affine gamma, beta
    Z = [U'_1; V'_1; ...; U'_G; V'_G]                                     (B, C, *S)
    Y = shuffle_2(Z): Y[2k + i] = Z[i C/2 + k],  i in {0, 1}, k < C/2       (B, C, *S)

c_w, c_b, s_w, s_b, gamma, beta are (m,) vectors shared by every group.
Defaults as the official code: G = 64, c_w = s_w = 0 and c_b = s_b = 1 at init
(GN gamma = 1, beta = 0). C must be a multiple of 2G. Parameters: 6m = 3C / G
(24 at C = 512 with the official G = 64; 192 at C = 512 with G = 8).

Deviations from the official code:

- a width that is not a multiple of 2G is a clear error (the official code fails
  inside a reshape, or builds zero-width parameters when C < 2G);
- c_w, c_b, s_w, s_b have shape (m,) (official (1, m, 1, 1)), so one module serves
  1, 2 and 3 spatial dims; an official state dict loads after ``view(-1)``;
- the official layer is 2-D; the maths (pooling, GroupNorm, shuffle) is the same
  over any set of positions.

Recorded maps: ``"spatial"`` (B, *S) = mean over the spatial-branch channels of
their gate; ``"channel_branch"`` (B, C / 2) = the channel-branch gates, group g's
j-th gated channel at index g m + j (the other half of the channels has no
channel gate).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..registry import register


@register(
    "sa",
    family="combined",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
    authors="Zhang, Yang",
    venue="ICASSP",
    year=2021,
    equation="""
        per group [U; V] of 2m channels, m = C / (2G), G = 64:
        U' = U * sigmoid(c_w * GAP U + c_b)
        V' = V * sigmoid(s_w * GN(V) + s_b),  GN with m groups (per channel), affine
        Y = channel_shuffle_2([U'_1; V'_1; ...; U'_G; V'_G])
    """,
    url="https://arxiv.org/abs/2102.00240",
    notes="groups = 64 (official); C must be a multiple of 2 * groups; 3C/G parameters.",
)
class ShuffleAttention(AttentionModule):
    """Shuffle attention.

    Args:
        channels: input channels C, a multiple of ``2 * groups``.
        groups: G, the number of channel groups (default 64, the official value).
    """

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__(channels)
        owner = self._owner()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{owner}: groups must be a positive int, got {groups!r}")
        if channels % (2 * groups):
            valid = [g for g in range(1, min(channels // 2, 64) + 1) if channels % (2 * g) == 0]
            hint = ", ".join(map(str, valid)) if valid else "none (channels must be even)"
            raise ValueError(
                f"{owner}: channels={channels} is not a multiple of 2 * groups={2 * groups}; "
                f"valid groups for {channels} channels: {hint}"
            )
        self.groups = groups
        m = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(m))
        self.cbias = nn.Parameter(torch.ones(m))
        self.sweight = nn.Parameter(torch.zeros(m))
        self.sbias = nn.Parameter(torch.ones(m))
        self.gn = nn.GroupNorm(m, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        nd = x.dim() - 2
        m = self.channels // (2 * self.groups)
        xg = x.unflatten(1, (self.groups, 2 * m))  # (B, G, 2m, *S)
        u, v = xg[:, :, :m], xg[:, :, m:]
        per_channel = (1, 1, m) + (1,) * nd
        a_c = torch.sigmoid(self.cweight.view(per_channel) * u.mean(tuple(range(3, 3 + nd)), keepdim=True)
                            + self.cbias.view(per_channel))  # (B, G, m, 1..1)
        n = self.gn(v.flatten(0, 1)).view_as(v)
        a_s = torch.sigmoid(self.sweight.view(per_channel) * n + self.sbias.view(per_channel))  # (B, G, m, *S)
        if self._map_sink is not None:
            self.record("spatial", a_s.flatten(1, 2).mean(1))
            self.record("channel_branch", a_c.flatten(1))
        z = torch.cat((u * a_c, v * a_s), 2).flatten(1, 2)  # (B, C, *S)
        return z.unflatten(1, (2, self.channels // 2)).transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
