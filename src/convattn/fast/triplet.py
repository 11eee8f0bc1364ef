"""Fast path of triplet attention.

With autograd: the H and W poolings (with arg-maxes) are one native pass, the C
pooling another, the three gates run under autograd on the pooled maps
(:func:`branch_gate` mirrors ``ZPoolGate.forward``, its conv on the native conv
kernel), Y is one pass; the backward is one pass for the three sums of dY X, autograd
through the gates, one pass for dX and sparse additions at the arg-max positions
(ties split evenly, as ``amax``). Without autograd and with every BatchNorm in eval,
the whole module is one ``triplet_eval`` kernel call.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import triplet as _triplet
from ..attention.triplet import TripletAttention, ZPoolGate
from . import native, plans
from .gated import (
    GateMismatch,
    check_shape,
    conv_1out,
    scatter_max_grad,
    wants_grad,
    wrong_operands,
)
from .select import register


def _native_conv_ok(conv: nn.Module) -> bool:
    k = conv.kernel_size[-1]
    return (type(conv) is nn.Conv2d and conv.bias is None and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and tuple(conv.padding) == ((k - 1) // 2,) * 2)


def branch_gate(g: ZPoolGate, z: torch.Tensor) -> torch.Tensor:
    """``g(z)``, sigmoid(bn(conv(z))), with the conv on the native kernel where that applies."""
    v = conv_1out(z, g.conv.weight) if _native_conv_ok(g.conv) else None
    return torch.sigmoid(g.bn(g.conv(z) if v is None else v))


class _TripletFn(torch.autograd.Function):
    """Y = X * k (a_cw + a_hc + a_hw) on the native kernels; the three gates in autograd."""

    @staticmethod
    def forward(ctx, x, module, *params):  # type: ignore[override]
        B, C, H, W = x.shape
        with_c = module.hw is not None
        mh, ah, mw, aw, ih, ch, iw, cw = native.triplet_pool(x, want_index=True)
        pools = [mh, ah, mw, aw]
        if with_c:
            amc, mxc, ic, cc = native.pool_channel(x, None, True, True)
            pools += [mxc.view(B, H, W), amc.view(B, H, W)]
        with torch.enable_grad():
            leaves = [p.requires_grad_() for p in pools]
            a_cw = branch_gate(module.cw, torch.stack(leaves[0:2], 1)).squeeze(1)  # (B, C, W)
            a_hc = branch_gate(module.hc, torch.stack(leaves[2:4], 1).transpose(2, 3)).squeeze(1)  # (B, H, C)
            a_hw = branch_gate(module.hw, torch.stack(leaves[4:6], 1)).squeeze(1) if with_c else None
        check_shape(a_cw, (B, C, W), "(C, W) branch gate")
        check_shape(a_hc, (B, H, C), "(H, C) branch gate")
        if with_c:
            check_shape(a_hw, (B, H, W), "(H, W) branch gate")
        k = 1.0 / (3 if with_c else 2)
        g_cw, g_hc = a_cw.detach() * k, a_hc.detach().transpose(1, 2) * k
        g_hw = a_hw.detach() * k if with_c else None
        ctx.graph = (leaves, [a for a in (a_cw, a_hc, a_hw) if a is not None])
        ctx.params, ctx.k = params, k
        ctx.index = (ih, ch, iw, cw) + ((ic.view(B, H, W), cc.view(B, H, W)) if with_c else ())
        ctx.save_for_backward(x, g_cw, g_hc, g_hw if with_c else x.new_empty(0), *pools)
        ctx.with_c = with_c
        return native.triplet_scale(x, g_cw, g_hc, g_hw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, g_cw, g_hc, g_hw, *pools = ctx.saved_tensors
        dy = dy.contiguous()  # once (the kernels need it; an expanded dY would be copied twice)
        B, C, H, W = x.shape
        with_c, k = ctx.with_c, ctx.k
        leaves, outs = ctx.graph
        s_cw, s_hc, s_hw = native.triplet_dots(dy, x, with_c)
        grad_out = [s_cw * k, s_hc.transpose(1, 2) * k] + ([s_hw * k] if with_c else [])
        grads = torch.autograd.grad(outs, (*leaves, *ctx.params), grad_out, allow_unused=True, retain_graph=True)
        gp = grads[: len(leaves)]
        dx = None
        if ctx.needs_input_grad[0]:
            rs = gp[5] / C if with_c else None
            dx = native.triplet_grad(dy, g_cw, g_hc, g_hw if with_c else None, gp[1] / H, gp[3] / W, rs)
            ih, ch, iw, cw = ctx.index[:4]
            scatter_max_grad(dx, x, pools[0], ih, ch, gp[0], 2)  # max over H
            scatter_max_grad(dx, x, pools[2], iw, cw, gp[2], 3)  # max over W
            if with_c:
                scatter_max_grad(dx, x, pools[4], *ctx.index[4:], gp[4], 1)  # max over C
        return (dx, None, *grads[len(leaves):])


def _triplet_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.triplet_plan(x, m, [g for g in (m.cw, m.hc, m.hw) if g is not None], m.kernel_size)


@register(
    TripletAttention,
    declares="triplet attention: X * (a_cw + a_hc + a_hw) / 3 (or / 2 without the H x W branch), each "
             "a = sigmoid(bn(conv2d_k([max; mean]))); 2-D",
    mirrors={
        "forward": "8ecdf3ec659f",
        "gates": "9820010f67cf",
        (ZPoolGate, "forward"): "cd6d0496351d",
        (_triplet, "z_pools"): "7898778243a6",
    },
    dims=(2,),
)
def triplet(m: TripletAttention, x: torch.Tensor):
    if not torch.is_grad_enabled():  # the plan checks the gates (and declines a BN in training)
        return plans.run_eval(m, x, _triplet_plan)
    gates = [g for g in (m.cw, m.hc, m.hw) if g is not None]
    if any(type(g) is not ZPoolGate for g in gates):
        return "a branch gate was replaced"
    params = tuple(m.parameters())
    if not wants_grad(x, params) and not any(g.bn.training for g in gates):
        return plans.run_eval(m, x, _triplet_plan)
    why = wrong_operands(x, params)
    if why is not None:
        return why
    try:
        return _TripletFn.apply(x, m, *params)
    except GateMismatch as mismatch:
        return str(mismatch)
