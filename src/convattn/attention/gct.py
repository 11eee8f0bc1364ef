"""Gated Channel Transformation (GCT).

Yang, Zhu, Wu, Yang, "Gated Channel Transformation for Visual Recognition",
CVPR 2020. Official code: z-x-yang/GCT (``PyTorch/GCT.py``).

Forward, X of shape (B, C, *S), per-channel parameters alpha, gamma, beta (C,)::

    l2 mode (default, the paper's):
        s_c   = alpha_c * sqrt(sum_S x_c^2 + eps)               (B, C)  global context embedding
        s^_c  = gamma_c * s_c / sqrt(mean_C s^2 + eps)          (B, C)  channel normalisation
        Y     = X * (1 + tanh(s^ + beta))                       (B, C, *S)

    l1 mode (the official code's alternative):
        s_c   = alpha_c * sum_S |x_c|
        s^_c  = gamma_c * s_c / (mean_C |s| + eps)
        Y     = X * (1 + tanh(s^ + beta))

Defaults as the official code: alpha = 1, gamma = 0, beta = 0 at init, so the
gate is exactly 1 and the module is the identity at init; eps = 1e-5; mode l2.
The official paper places GCT before every convolution (including the stem and
the downsample convs) and exempts beta from weight decay; placement is up to the
model, not this module.

Deviations: the official l1 mode has an ``after_relu`` flag that sums x instead
of |x| (the same thing for non-negative inputs, a cheaper kernel); we always use
|x|, which equals the official result whenever the flag would be correct. Pooling
is over every spatial dim, so 1D and 3D inputs work too. Parameters are stored
with shape (C,) instead of the official (1, C, 1, 1).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, unsqueeze_spatial
from ..registry import register

_MODES = ("l2", "l1")


@register(
    "gct",
    family="channel",
    paper="Gated Channel Transformation for Visual Recognition",
    authors="Yang, Zhu, Wu, Yang",
    venue="CVPR",
    year=2020,
    equation="""
        s = alpha * sqrt(sum_HW x^2 + eps)            in R^{B x C}
        s_hat = gamma * s / sqrt(mean_C s^2 + eps)
        Y = X * (1 + tanh(s_hat + beta))
    """,
    url="https://arxiv.org/abs/1909.11519",
    notes="alpha=1, gamma=0, beta=0 at init: identity. mode='l1' is the official code's alternative.",
)
class GCT(AttentionModule):
    """Gated Channel Transformation: embedding, channel normalisation, tanh gate.

    Args:
        channels: input channels C.
        mode: ``"l2"`` (default) or ``"l1"`` embedding/normalisation.
        eps: epsilon inside the square roots (l2) or the denominator (l1); 1e-5.
    """

    def __init__(self, channels: int, mode: str = "l2", eps: float = 1e-5) -> None:
        super().__init__(channels)
        if mode not in _MODES:
            raise ValueError(f"{self._owner()}: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{self._owner()}: eps must be a positive number, got {eps!r}")
        self.mode = mode
        self.eps = float(eps)
        self.alpha = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate 1 + tanh(s^ + beta), shape (B, C)."""
        flat = x.flatten(2)
        if self.mode == "l2":
            # ||x_c||_2 in one reduction pass (no x^2 temporary); sqrt(n^2 + eps) as the paper
            n = torch.linalg.vector_norm(flat, 2, dim=-1)
            s = self.alpha * torch.sqrt(n * n + self.eps)
            norm = self.gamma * torch.rsqrt(s.pow(2).mean(1, keepdim=True) + self.eps)
        else:
            s = self.alpha * flat.abs().sum(-1)  # faster on CPU than vector_norm(ord=1)
            norm = self.gamma / (s.abs().mean(1, keepdim=True) + self.eps)
        return 1.0 + torch.tanh(s * norm + self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g = self.gate(x)
        self.record("channel", g)
        return x * unsqueeze_spatial(g, x.dim() - 2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}, eps={self.eps:g}"
