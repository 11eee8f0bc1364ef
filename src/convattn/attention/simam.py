"""SimAM: a parameter-free, energy-based 3-D attention.

Yang, Zhang, Li, Xie, "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021 (PMLR 139).
Official code: ZjjConan/SimAM (``networks/attentions/simam_module.py``).

Forward, X of shape (B, C, *S), N = prod(S) positions per channel::

    mu = mean_S X                           (B, C, 1..1)
    d = (X - mu)^2                          (B, C, *S)
    v = sum_S d / n,  n = N - 1             (B, C, 1..1)
    E_inv = d / (4 (v + lambda)) + 0.5      (B, C, *S)   inverse minimal energy
    Y = X * sigmoid(E_inv)                  (B, C, *S)   a full 3-D (per element) gate

Defaults as the official module: ``e_lambda = 1e-4``. Note that the README's
example training commands pass ``--attention_param 0.1`` (lambda = 0.1); pass
``e_lambda=0.1`` to reproduce those runs. No parameters. Works on 1, 2 or 3
spatial dims (the official code is 2-D only; the maths is the same over any set
of positions).

Deviations from the official code:

- with a single spatial position (N = 1) the official ``n = N - 1 = 0`` gives
  0/0 = NaN; we use ``n = max(N - 1, 1)``, so d = v = 0 and Y = sigmoid(0.5) X.
  Identical for every N > 1.

Recorded maps: ``"spatial"`` (B, *S) = the channel mean of sigmoid(E_inv) (the
real gate is per element; the mean summarises it as one map per image).

A fast CPU implementation of this maths is registered in :mod:`convattn.fast.simam`.
"""

from __future__ import annotations

import math

import torch

from ..layers import AttentionModule
from ..registry import register


def _n_minus_one(x: torch.Tensor) -> int:
    return max(math.prod(x.shape[2:]) - 1, 1)


def simam_gate(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """sigmoid(E_inv), the per-element gate (B, C, *S), written with plain ops."""
    dims = tuple(range(2, x.dim()))
    t = x - x.mean(dims, keepdim=True)
    d = t * t
    v = d.sum(dims, keepdim=True) / _n_minus_one(x)
    return torch.sigmoid(d / (4 * (v + e_lambda)) + 0.5)


@register(
    "simam",
    family="spatial",
    paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks",
    authors="Yang, Zhang, Li, Xie",
    venue="ICML",
    year=2021,
    equation="""
        d = (X - mean_S X)^2,  v = sum_S d / (N - 1)
        E_inv = d / (4 (v + lambda)) + 0.5
        Y = X * sigmoid(E_inv)
    """,
    url="https://proceedings.mlr.press/v139/yang21o.html",
    notes="lambda = 1e-4 (official module default); the README examples train with 0.1.",
)
class SimAM(AttentionModule):
    """SimAM parameter-free attention.

    Args:
        channels: input channels C (checked; SimAM has no parameters).
        e_lambda: lambda, the energy regulariser (default 1e-4, the official
            module's; the README's example commands use 0.1).
    """

    def __init__(self, channels: int, e_lambda: float = 1e-4) -> None:
        super().__init__(channels)
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)) or not e_lambda > 0:
            raise ValueError(f"{self._owner()}: e_lambda must be a positive number, got {e_lambda!r}")
        self.e_lambda = float(e_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = simam_gate(x, self.e_lambda)
        self.record("spatial", s.mean(1))
        return x * s

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda}"
