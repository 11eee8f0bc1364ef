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

Speed: the forward reads X for the mean, forms X - mu once and then updates that
buffer in place (scale, square, +0.5, sigmoid, * X) when no gradient is needed.
With autograd a custom backward recomputes from X and the saved gate, so the
graph holds only two full-size tensors (X and the gate).
"""

from __future__ import annotations

import math

import torch

from ..layers import AttentionModule, native, plans
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


def _gate_inplace(x: torch.Tensor, e_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, a = 1/(4(v+lambda))) with a single new full-size buffer. No autograd."""
    dims = tuple(range(2, x.dim()))
    t = x - x.mean(dims, keepdim=True)
    v = torch.linalg.vector_norm(t, dim=dims, keepdim=True).square_().div_(_n_minus_one(x))
    a = (v + e_lambda).mul_(4).reciprocal_()
    # t <- sigmoid(a t^2 + 0.5) in place: (t sqrt(a))^2 = a t^2
    t.mul_(a.sqrt()).square_().add_(0.5).sigmoid_()
    return t, a


class _SimAMFunction(torch.autograd.Function):
    """Y = X * sigmoid(E_inv) with a hand-written backward.

    With q = dL/dE_inv = g X s (1 - s), c = X - mu, a = 1 / (4 (v + lambda))::

        dL/dX = g s + 2 c (a q + K) - (2 a / N) sum_S(c q),
        K = -4 a^2 sum_S(q c^2) / n

    (the two last terms are the paths through v and mu).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, e_lambda: float):  # type: ignore[override]
        s, a = _gate_inplace(x, e_lambda)
        ctx.save_for_backward(x, s, a)
        return x * s

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, s, a = ctx.saved_tensors
        dims = tuple(range(2, x.dim()))
        n_pos = math.prod(x.shape[2:])
        gs = g * s
        # q = g x s (1 - s) = gs * x - gs * x * s
        q = gs * x
        q.addcmul_(q, s, value=-1.0)
        c = x - x.mean(dims, keepdim=True)
        qc = q * c
        sum_qc = qc.sum(dims, keepdim=True)
        sum_qcc = (qc * c).sum(dims, keepdim=True)
        k = sum_qcc.mul_(a.square()).mul_(-4.0 / _n_minus_one(x))
        # dx = gs + 2 c (a q + K) - (2 a / N) sum(c q) = gs + 2 a qc + 2 K c - const
        dx = torch.addcmul(gs, qc, a, value=2.0)
        dx.addcmul_(c, k, value=2.0)
        dx.sub_(sum_qc.mul_(a).mul_(2.0 / n_pos))
        return dx, None


class _SimAMNative(torch.autograd.Function):
    """The same function and gradient in the native kernels: each (b, c) row is
    read once forward (mean, variance and the gate from the cached row) and once
    backward (dy and x). The sigmoid is computed as 1 / (1 + 2^(-e log2 e)); in
    float32, 2^t comes from a 32-entry table and a degree-2 polynomial on CPUs with
    AVX-512 (largest relative error of y against float64 measured 1.4e-7), from a
    degree-5 polynomial elsewhere (2.4e-7)."""

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
        plain = (
            self._map_sink is not None
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or torch.compiler.is_compiling()
        )
        if plain:
            # plain differentiable ops: traceable/exportable, and the recorded map
            # stays in the graph under capture_maps(detach=False)
            s = simam_gate(x, self.e_lambda)
            self.record("spatial", s.mean(1))
            return x * s
        if math.prod(x.shape[2:]) > 1 and native.usable(x):
            if torch.is_grad_enabled() and x.requires_grad:
                return _SimAMNative.apply(x, self.e_lambda)
            return native.simam_forward(x, self.e_lambda, out=x if plans.may_overwrite(self, x) else None)[0]
        if torch.is_grad_enabled() and x.requires_grad:
            return _SimAMFunction.apply(x, self.e_lambda)
        return _gate_inplace(x, self.e_lambda)[0].mul_(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda}"
