"""Coordinate Attention (CA).

Hou, Zhou, Feng, "Coordinate Attention for Efficient Mobile Network Design",
CVPR 2021. Official code: houqb/CoordAttention (``coordatt.py``).

Forward, X of shape (B, C, H, W) (2-D only: the two strip poolings are the H and
W axes)::

    z^h = mean_W X                              (B, C, H, 1)
    z^w = mean_H X, transposed                  (B, C, W, 1)
    f = h_swish(BN(Conv1x1_{C->m}([z^h; z^w]))) (B, m, H + W, 1)  (BN over the concatenation)
    f^h, f^w = split(f, [H, W])                 (B, m, H, 1), (B, m, W, 1)
    g^h = sigmoid(Conv1x1_{m->C}(f^h))          (B, C, H, 1)
    g^w = sigmoid(Conv1x1_{m->C}(f^w))^T        (B, C, 1, W)
    Y = X * g^h * g^w                           (B, C, H, W)

with h_swish(t) = t * relu6(t + 3) / 6 (``nn.Hardswish``).

Defaults as the official code: ``reduction = 32`` and ``m = max(8, C // 32)``
(``min_hidden = 8``), all three 1x1 convs with bias, BatchNorm2d with PyTorch's
default momentum and eps, h_swish, sigmoid gates. The paper's figure writes the
output channels of the gate convs as C (the official class allows ``oup != inp``;
as an attention drop-in, ours keeps C).

timm's ``CoordAttn`` has the same graph but different defaults (hidden width
``make_divisible(C / 16 * 2/3, 8)``, convs without bias); with ``rd_channels=m``
and ``bias=True`` it computes exactly this module.

Recorded maps: ``"height"`` (B, C, H) = g^h, ``"width"`` (B, C, W) = g^w and
``"spatial"`` (B, H, W) = mean_C (g^h ⊗ g^w), the channel mean of the separable
per-element gate (a summary for display; the real gate is per channel).

Speed: on contiguous float32/float64 CPU tensors the native kernels of
:mod:`convattn.layers.native` do the strip pooling, the product and the
backward in one pass each (``_CoordNative``); in eval without autograd the whole
module, gate network included, is one kernel call (:func:`convattn.layers.plans.coord_plan`).
Otherwise: without autograd Y is formed in one new buffer ((X * g^h) *= g^w). With
autograd two small custom functions replace the generic graph: the strip
pooling's backward writes dX in one pass, and the gate application keeps only X
and computes dg^h, dg^w as batched matrix products over g X. While tracing,
scripting or compiling, only standard ops are used.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, hidden_channels, native, plans
from ..layers.gated import fast_ok, wants_grad
from ..registry import register


def _plain() -> bool:
    """Standard ops only while tracing / scripting / compiling (exportable graphs)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


class _StripPool(torch.autograd.Function):
    """(mean_W X, mean_H X) with a backward that writes dX in one pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor):  # type: ignore[override]
        ctx.hw = x.shape[2:]
        return x.mean(3), x.mean(2)

    @staticmethod
    def backward(ctx, dz_h: torch.Tensor, dz_w: torch.Tensor):  # type: ignore[override]
        H, W = ctx.hw
        return (dz_h / W).unsqueeze(3) + (dz_w / H).unsqueeze(2)


class _CoordApply(torch.autograd.Function):
    """Y = X * g^h * g^w keeping only X (and the small gates) for the backward.

    dX = g * (g^h g^w); dg^h = sum_W(g X g^w) and dg^w = sum_H(g X g^h), both
    as batched matrix products over g X (no further full-size temporaries).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, g_h: torch.Tensor, g_w: torch.Tensor):  # type: ignore[override]
        ctx.save_for_backward(x, g_h, g_w)
        return torch.mul(x, g_h).mul_(g_w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, g_h, g_w = ctx.saved_tensors
        B, C, H, W = x.shape
        dx = (g_h * g_w).mul_(g)
        gx = (g * x).reshape(B * C, H, W)
        dg_h = torch.bmm(gx, g_w.reshape(B * C, W, 1)).view(B, C, H, 1)
        dg_w = torch.bmm(g_h.reshape(B * C, 1, H), gx).view(B, C, 1, W)
        return dx, dg_h, dg_w


class _CoordNative(torch.autograd.Function):
    """Y = X * g^h * g^w on the native kernels, the gate network in autograd.

    Forward: one pass for both strip poolings, the gate network on the (B, C, H + W)
    strips (built with autograd on detached strips), one pass for Y. Backward: one
    pass for dL/dg^h and dL/dg^w, autograd through the gate network to the strips,
    one pass for dX = dY g^h g^w + dL/dz^h / W + dL/dz^w / H.
    """

    @staticmethod
    def forward(ctx, x, module, *params):  # type: ignore[override]
        z = native.coord_pool(x)
        with torch.enable_grad():
            z_l = z.requires_grad_()
            g_h, g_w = module.gates_from_strips(z_l, x.shape[2])
        ctx.graph = (z_l, g_h, g_w)
        ctx.params = params
        gh, gw = g_h.detach(), g_w.detach()
        ctx.save_for_backward(x, gh, gw)
        return native.coord_scale(x, gh, gw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, gh, gw = ctx.saved_tensors
        z_l, g_h, g_w = ctx.graph
        dy = dy.contiguous()  # once (the kernels need it; an expanded dY would be copied twice)
        H, W = x.shape[2:]
        dgh, dgw = native.coord_dots(dy, x, gh, gw)
        grads = torch.autograd.grad(
            (g_h, g_w), (z_l, *ctx.params), (dgh, dgw), allow_unused=True, retain_graph=True
        )
        dx = None
        if ctx.needs_input_grad[0]:
            dz = grads[0]
            dx = native.coord_grad(dy, gh, gw, dz[:, :, :H] / W, dz[:, :, H:] / H)
        return (dx, None, *grads[1:])


@register(
    "coord",
    family="combined",
    paper="Coordinate Attention for Efficient Mobile Network Design",
    authors="Hou, Zhou, Feng",
    venue="CVPR",
    year=2021,
    dims=(2,),
    equation="""
        z^h = mean_W X (B, C, H), z^w = mean_H X (B, C, W)
        f = h_swish(BN(Conv1x1_{C->m}([z^h; z^w]))),  m = max(8, C // 32)
        g^h = sigmoid(Conv1x1_{m->C}(f^h)),  g^w = sigmoid(Conv1x1_{m->C}(f^w))
        Y = X * g^h * g^w
    """,
    url="https://arxiv.org/abs/2103.02907",
)
class CoordAttention(AttentionModule):
    """Coordinate Attention (2-D).

    Args:
        channels: input channels C.
        reduction: hidden width ``max(min_hidden, C // reduction)`` (default 32,
            the official code's).
        hidden: explicit hidden width m (overrides ``reduction``/``min_hidden``).
        min_hidden: lower bound of the hidden width (default 8, official).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 32,
        hidden: int | None = None,
        min_hidden: int = 8,
    ) -> None:
        super().__init__(channels)
        if isinstance(min_hidden, bool) or not isinstance(min_hidden, int) or min_hidden < 1:
            raise ValueError(f"{self._owner()}: min_hidden must be a positive int, got {min_hidden!r}")
        if hidden is None:
            if reduction is None or isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
                raise ValueError(f"{self._owner()}: reduction must be a positive number, got {reduction!r}")
            width = max(min_hidden, int(channels // reduction))
        else:
            width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(width, channels, 1)
        self.conv_w = nn.Conv2d(width, channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g^h, g^w) with shapes (B, C, H, 1) and (B, C, 1, W)."""
        H, W = x.shape[2:]
        if torch.is_grad_enabled() and x.requires_grad and not _plain():
            z_h, z_w = _StripPool.apply(x)
        else:
            z_h, z_w = x.mean(3), x.mean(2)  # (B, C, H), (B, C, W)
        f = self.act(self.bn1(self.conv1(torch.cat((z_h, z_w), dim=2).unsqueeze(3))))
        f_h, f_w = torch.split(f, [H, W], dim=2)
        g_h = torch.sigmoid(self.conv_h(f_h))
        g_w = torch.sigmoid(self.conv_w(f_w)).transpose(2, 3)
        return g_h, g_w

    def gates_from_strips(self, z: torch.Tensor, H: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(g^h (B, C, H), g^w (B, C, W)) from the strips z = [z^h; z^w], (B, C, H + W).

        The same network as :meth:`gates`, with the 1x1 convs as batched matrix
        products on the (B, C, H + W) layout (no transposed copies).
        """
        B, C, L = z.shape
        m = self.conv1.out_channels
        w1 = self.conv1.weight.view(1, m, C).expand(B, m, C)
        f = torch.baddbmm(self.conv1.bias.view(1, m, 1), w1, z)  # (B, m, L)
        f = self.act(self.bn1(f.unsqueeze(3))).squeeze(3)
        wh = self.conv_h.weight.view(1, C, m).expand(B, C, m)
        ww = self.conv_w.weight.view(1, C, m).expand(B, C, m)
        g_h = torch.sigmoid(torch.baddbmm(self.conv_h.bias.view(1, C, 1), wh, f[:, :, :H]))
        g_w = torch.sigmoid(torch.baddbmm(self.conv_w.bias.view(1, C, 1), ww, f[:, :, H:]))
        return g_h, g_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if fast_ok(self, x):
            params = tuple(self.parameters()) if torch.is_grad_enabled() else ()
            if wants_grad(x, params):
                return _CoordNative.apply(x, self, *params)
            plan = plans.eval_plan(self, x, self._plan)
            if plan is not None:  # BN in eval: one kernel call
                return plans.run(plan, x, self)
            g_h, g_w = self.gates_from_strips(native.coord_pool(x), x.shape[2])
            return native.coord_scale(x, g_h, g_w)
        g_h, g_w = self.gates(x)
        if self._map_sink is not None:
            self.record("height", g_h.squeeze(3))
            self.record("width", g_w.squeeze(2))
            # mean_C(g^h g^w)[b, i, j] = sum_c g^h[b, c, i] g^w[b, c, j] / C
            self.record("spatial", torch.matmul(g_h.squeeze(3).transpose(1, 2), g_w.squeeze(2)) / self.channels)
        if torch.is_grad_enabled() and (x.requires_grad or g_h.requires_grad):
            if _plain():
                return x * g_h * g_w
            return _CoordApply.apply(x, g_h, g_w)
        return torch.mul(x, g_h).mul_(g_w)

    def _plan(self, dtype: torch.dtype) -> plans.Plan | None:
        return plans.coord_plan(dtype, self.conv1, self.bn1, self.conv_h, self.conv_w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.conv1.out_channels}"
