"""Fast path of SimAM: each (b, c) row is read once forward (mean, variance and the
gate from the cached row) and once backward (dY and X).

The sigmoid is computed as 1 / (1 + 2^(-e log2 e)); in float32, 2^t comes from a
32-entry table and a degree-2 polynomial on CPUs with AVX-512 (largest relative
error of Y against float64 measured 1.4e-7), from a degree-5 polynomial elsewhere
(2.4e-7).
"""

from __future__ import annotations

import math

import torch

from ..attention import simam as _simam
from ..attention.simam import SimAM
from . import native, plans
from .select import register


class _SimAMFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, e_lambda: float):  # type: ignore[override]
        y, a = native.simam_forward(x, e_lambda, want_a=True)
        ctx.save_for_backward(x, a)
        ctx.e_lambda = e_lambda
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, a = ctx.saved_tensors
        return native.simam_backward(g, x, ctx.e_lambda, a), None


@register(
    SimAM,
    declares="SimAM: X * sigmoid(d / (4 (v + lambda)) + 0.5), d = (X - mean_S X)^2, v = sum_S d / (N - 1)",
    mirrors={
        "forward": "d72d2160d97a",
        (_simam, "simam_gate"): "fde6ab577a17",
        (_simam, "_n_minus_one"): "81decd624705",
    },
)
def simam(m: SimAM, x: torch.Tensor):
    if math.prod(x.shape[2:]) < 2:
        return "a single position per channel"
    if torch.is_grad_enabled() and x.requires_grad:
        return _SimAMFn.apply(x, m.e_lambda)
    return native.simam_forward(x, m.e_lambda, out=x if plans.may_overwrite(m, x) else None)[0]
