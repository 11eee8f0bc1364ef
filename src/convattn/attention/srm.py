"""Style-based Recalibration Module (SRM).

Lee, Kim, Nam, "SRM: A Style-based Recalibration Module for Convolutional Neural
Networks", ICCV 2019. Official code: hyunjaelee410/style-based-recalibration-module
(``models/recalibration_modules.py``).

Forward, X of shape (B, C, *S) with N = prod(S) positions::

    style pooling:      mu_c    = 1/N sum_S x_c                              (B, C)
                        sigma_c = sqrt(1/(N-1) sum_S (x_c - mu_c)^2 + eps)    (B, C)
                        t_c     = [mu_c, sigma_c]                            (B, C, 2)
    style integration:  z_c     = w_c . t_c = w_c0 mu_c + w_c1 sigma_c       (B, C),  W in R^{C x 2}
                        g       = sigmoid(BN(z))                             (B, C),  BatchNorm over C
    Y = X * g                                                                (B, C, *S)

Defaults as the official code: the channel-wise fully connected weights W
(``cfc``) start at 0 (so the gate is sigmoid(BN bias) = 0.5 at init), the BN is a
standard BatchNorm (weight 1, bias 0, momentum 0.1, eps 1e-5), the variance is
unbiased (torch ``.std()``). The paper trains the SRM parameters without weight
decay; that is the optimiser's business, not this module's.

eps: the reference notes give sigma = sqrt(var + 1e-5) (the default here); the
version of the official code we read computes ``x.std()`` with no epsilon. Pass
``eps=0`` for that. A small eps keeps the gradient finite for a constant channel.

Deviations: the official BatchNorm2d runs on (B, C, 1, 1); our BatchNorm1d on
(B, C) computes the same statistics and has the same parameter names
(``bn.weight``, ``bn.bias``, ``bn.running_mean``, ...), so official state dicts
load unchanged. Pooling is over every spatial dim, so 1D and 3D inputs work. An
input with a single spatial position has no unbiased variance: we raise a
ValueError rather than return NaN as the official code would.

Implementation: in eval mode the BatchNorm is applied as its affine map from the
running statistics (the same maths as ``self.bn`` in eval). The variance is computed in two passes (the mean, then the norm
of the centred values), which is as stable as torch's ``var`` and several times
faster on CPU than ``torch.var_mean``; it costs one temporary of the input's size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import AttentionModule, unsqueeze_spatial
from ..registry import register


@register(
    "srm",
    family="channel",
    paper="SRM: A Style-based Recalibration Module for Convolutional Neural Networks",
    authors="Lee, Kim, Nam",
    venue="ICCV",
    year=2019,
    equation="""
        t = [mean_HW(X), sqrt(var_HW(X) + eps)] in R^{B x C x 2}   (unbiased var)
        z_c = w_c . t_c,  W in R^{C x 2}
        Y = X * sigmoid(BN(z))
    """,
    url="https://arxiv.org/abs/1903.10829",
    notes="W initialised to 0 as the official code; needs >= 2 spatial positions.",
)
class SRM(AttentionModule):
    """Style-based recalibration: channel-wise FC over (mean, std), BN, sigmoid.

    Args:
        channels: input channels C.
        eps: added to the unbiased variance before the square root (default 1e-5).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"{self._owner()}: eps must be a number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = nn.BatchNorm1d(channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights g, shape (B, C)."""
        n = math.prod(x.shape[2:])
        if not torch.jit.is_tracing() and n < 2:
            raise ValueError(
                f"{self._owner()}: needs at least 2 spatial positions for the unbiased "
                f"standard deviation; got shape {tuple(x.shape)}"
            )
        # two-pass variance: mean, then the norm of the centred values. torch.var_mean
        # (Welford) is ~20x slower than a mean on CPU; the one-pass sum-of-squares formula
        # loses precision when |mean| >> std.
        flat = x.flatten(2)
        mean = flat.mean(-1, keepdim=True)
        ss = torch.linalg.vector_norm(flat - mean, 2, dim=-1)
        var = ss * ss / (n - 1)
        mean = mean.squeeze(-1)
        std = torch.sqrt(var + self.eps) if self.eps else torch.sqrt(var)
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]
        bn = self.bn
        if bn.training:
            z = bn(z)
        else:
            # eval BatchNorm as its affine map: same maths as F.batch_norm, but on CPU that
            # kernel opens a parallel region even for a (B, C) input, which stalls on a busy machine
            z = (z - bn.running_mean) * (bn.weight * torch.rsqrt(bn.running_var + bn.eps)) + bn.bias
        return torch.sigmoid(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g = self.gate(x)
        self.record("channel", g)
        return x * unsqueeze_spatial(g, x.dim() - 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"
