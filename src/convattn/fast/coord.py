"""Fast path of coordinate attention.

With autograd: the two strip poolings are one native pass, the gate network runs
under autograd on the (B, C, H + W) strips (:func:`gates_from_strips`, which
mirrors ``CoordAttention.gates``), Y is one pass, and the backward is one pass for
dL/dg^h and dL/dg^w and one for dX. Without autograd and with the BatchNorm in eval,
the whole module is one ``coord_eval`` kernel call.
"""

from __future__ import annotations

import torch

from ..attention.coord import CoordAttention
from . import native, plans
from .gated import wants_grad, wrong_operands
from .select import register


def gates_from_strips(m: CoordAttention, z: torch.Tensor, H: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g^h (B, C, H), g^w (B, C, W)) from the strips z = [z^h; z^w], (B, C, H + W):
    ``m.gates`` with its 1x1 convs as batched matrix products on this layout."""
    B, C, L = z.shape
    mid = m.conv1.out_channels
    w1 = m.conv1.weight.view(1, mid, C).expand(B, mid, C)
    f = torch.baddbmm(m.conv1.bias.view(1, mid, 1), w1, z)  # (B, mid, L)
    f = m.act(m.bn1(f.unsqueeze(3))).squeeze(3)
    wh = m.conv_h.weight.view(1, C, mid).expand(B, C, mid)
    ww = m.conv_w.weight.view(1, C, mid).expand(B, C, mid)
    g_h = torch.sigmoid(torch.baddbmm(m.conv_h.bias.view(1, C, 1), wh, f[:, :, :H]))
    g_w = torch.sigmoid(torch.baddbmm(m.conv_w.bias.view(1, C, 1), ww, f[:, :, H:]))
    return g_h, g_w


class _CoordFn(torch.autograd.Function):
    """Y = X * g^h * g^w on the native kernels, the gate network in autograd."""

    @staticmethod
    def forward(ctx, x, module, *params):  # type: ignore[override]
        z = native.coord_pool(x)
        with torch.enable_grad():
            z_l = z.requires_grad_()
            g_h, g_w = gates_from_strips(module, z_l, x.shape[2])
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
        grads = torch.autograd.grad((g_h, g_w), (z_l, *ctx.params), (dgh, dgw), allow_unused=True, retain_graph=True)
        dx = None
        if ctx.needs_input_grad[0]:
            dz = grads[0]
            dx = native.coord_grad(dy, gh, gw, dz[:, :, :H] / W, dz[:, :, H:] / H)
        return (dx, None, *grads[1:])


def _structure(m: CoordAttention, x: torch.Tensor) -> str | None:
    """Why :func:`gates_from_strips` cannot stand for ``m.gates`` (1x1 convs with bias)."""
    C = x.shape[1]
    mid = getattr(m.conv1, "out_channels", None)
    shapes = {"conv1": (mid, C, 1, 1), "conv_h": (C, mid, 1, 1), "conv_w": (C, mid, 1, 1)}
    for name, shape in shapes.items():
        conv = getattr(m, name)
        if type(conv) is not torch.nn.Conv2d or tuple(conv.weight.shape) != shape or conv.bias is None:
            return f"{name} is not a 1x1 nn.Conv2d with bias of shape {shape}"
        try:
            plans.conv_config(conv, name, (0, 0))
        except plans.Decline as why:
            return str(why)
    return None


@register(
    CoordAttention,
    declares="coordinate attention: X * g^h * g^w, gates from h_swish(BN(conv1 [z^h; z^w])) (1x1 convs "
             "with bias); 2-D",
    mirrors={"forward": "f0099d399aec", "gates": "a4f80151b6a7"},
    dims=(2,),
)
def coord(m: CoordAttention, x: torch.Tensor):
    if not torch.is_grad_enabled():  # the plan checks the structure (and declines a BN in training)
        return plans.run_eval(m, x, plans.coord_plan)
    params = tuple(m.parameters())
    grad = wants_grad(x, params)
    if not grad and not m.bn1.training:
        return plans.run_eval(m, x, plans.coord_plan)
    why = _structure(m, x) or wrong_operands(x, params)
    if why is not None:
        return why
    if grad:
        return _CoordFn.apply(x, m, *params)
    with torch.no_grad():  # the BN in training, no parameter wants a gradient
        g_h, g_w = gates_from_strips(m, native.coord_pool(x), x.shape[2])
        return native.coord_scale(x, g_h, g_w)
