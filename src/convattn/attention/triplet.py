"""Triplet Attention.

Misra, Nalamada, Arasanipalai, Hou, "Rotate to Attend: Convolutional Triplet
Attention Module", WACV 2021. Official code: landskape-ai/triplet-attention
(``MODELS/triplet_attention.py``).

One gate, applied to three "rotations" of X of shape (B, C, H, W)::

    Gate(T) = T * sigmoid(BN(Conv_kxk^{2->1}(Z(T)))),  Z(T) = [max_1 T; mean_1 T]
              (max / mean over dim 1 of T; conv without bias, padding (k-1)/2)

    Y1 = Gate_cw(X.permute(0,2,1,3)).permute(0,2,1,3)   pools over H; gate on the (C, W) plane
    Y2 = Gate_hc(X.permute(0,3,2,1)).permute(0,3,2,1)   pools over W; gate on the (H, C) plane
    Y3 = Gate_hw(X)                                     pools over C; gate on the (H, W) plane
    Y  = (Y1 + Y2 + Y3) / 3

Every branch is X times a map broadcast along the pooled axis, so we compute
Y = X * (a_cw + a_hc + a_hw) / 3 with a_cw (B, C, 1, W), a_hc (B, C, H, 1) and
a_hw (B, 1, H, W), pooling X over H, W and C directly: no permuted copies of X.

Defaults as the official code: k = 7, conv without bias, BatchNorm2d(1) with
eps 1e-5 and ``momentum=0.01`` (passed to PyTorch's BatchNorm, i.e. the PyTorch
convention: running = 0.99 running + 0.01 batch), no ReLU, max pooled map first.
Parameters: 3 x (2 k^2 + 2) = 300 for k = 7. ``no_spatial=True`` (an official
option) drops the H x W branch and averages the other two: Y = (Y1 + Y2) / 2.
Parameter names differ from the official checkpoint (``cw.conv.weight`` here vs
``cw.conv.conv.weight`` there; the BN is ``cw.bn``).

Speed (same maths, reordered): the k x k conv with one output channel is computed
as k row convolutions (one 1 x k conv with k outputs) plus shifted sums, which
oneDNN runs ~3x faster; the max over H and W uses repeated halving (PyTorch's
amax over a short middle/last dim is ~10x slower than a pass). With autograd, one
custom function returns the six pooled maps and writes dX once in its backward
(max gradients split evenly among ties, as ``amax`` does; the official
``torch.max(T, 1)[0]`` routes a tie's gradient to one element: both are
subgradients). While tracing, scripting or compiling, only standard ops are used.

Native kernels (:mod:`convattn.layers.native`, contiguous float32/float64 CPU
tensors): the H and W poolings are one pass, the C pooling another, Y a third;
in training one autograd function (``_TripletNative``) whose backward makes two
more passes; in eval without autograd the whole module is one kernel call
(:func:`convattn.layers.plans.triplet_plan`: the three pools, the three conv + BN + sigmoid gates
with BN folded, the product), whole samples per thread.

Recorded maps: ``"spatial"`` (B, H, W) = the H x W branch's gate (absent with
``no_spatial``), ``"cw"`` (B, C, W) = the C x W branch's gate and ``"hc"``
(B, H, C) = the H x C branch's gate, each in its branch's own layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, native, plans
from ..layers.gated import conv_1out, fast_ok, scatter_max_grad, wants_grad
from ..registry import register


class ZPoolGate(nn.Module):
    """sigmoid(BN(Conv_kxk(Z))) for a pooled (B, 2, P, Q) map Z -> (B, 1, P, Q)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = conv_1out(z, self.conv.weight)  # native kernels when they apply
        return torch.sigmoid(self.bn(conv_2to1(z, self.conv.weight) if v is None else v))


def conv_2to1(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(z, weight, padding=k // 2)`` for one output channel, computed faster.

    A k x k conv with a single output channel runs poorly in oneDNN. We compute
    the k kernel rows as k output channels of a 1 x k conv (rows[i] = sum_c,j
    w[c, i, j] z[c, p, q + j - k//2]) and add the rows shifted by i - k//2 along
    the first spatial axis. Same sum, reordered. z (B, 2, P, Q) -> (B, 1, P, Q).
    """
    k = weight.shape[-1]
    if k == 1:
        return F.conv2d(z, weight)
    p = k // 2
    P = z.shape[2]
    rows = F.conv2d(z, weight[0].transpose(0, 1).unsqueeze(2), padding=(0, p))  # (B, k, P, Q)
    rows = F.pad(rows, (0, 0, p, p))
    out = rows[:, 0, 0:P]
    for i in range(1, k):
        out = out + rows[:, i, i : i + P]
    return out.unsqueeze(1)


def amax_halving(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.amax(dim)`` by repeated halving (max of the two halves).

    PyTorch's amax over a middle or last dim of a few dozen elements is ~10x
    slower than a full pass; halving costs about one pass. Odd sizes use two
    overlapping halves (max is idempotent).
    """
    n = x.shape[dim]
    while n > 3:
        h = (n + 1) // 2
        x = torch.maximum(x.narrow(dim, 0, h), x.narrow(dim, n - h, h))
        n = h
    return x.amax(dim)


def _pool_plain(x: torch.Tensor, with_c: bool) -> list[torch.Tensor]:
    """[max_H, mean_H, max_W, mean_W(, max_C, mean_C)] of x with standard ops."""
    out = [x.amax(2), x.mean(2), x.amax(3), x.mean(3)]
    if with_c:
        out += [x.amax(1), x.mean(1)]
    return out


def _pool_fast(x: torch.Tensor, with_c: bool) -> list[torch.Tensor]:
    """As :func:`_pool_plain` with the halving max over H and W (no autograd)."""
    out = [amax_halving(x, 2), x.mean(2), amax_halving(x, 3), x.mean(3)]
    if with_c:
        out += [x.amax(1), x.mean(1)]
    return out


class _TriplePool(torch.autograd.Function):
    """The six pooled maps with one backward that writes dx once.

    dx = mean grads broadcast back (/ H, / W, / C) + max grads routed to the
    maxima (split evenly among ties, as ``amax``'s backward does). Autograd of
    the separate reductions would build and add six full-size gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, with_c: bool):  # type: ignore[override]
        out = _pool_fast(x, with_c)
        ctx.with_c = with_c
        ctx.save_for_backward(x, *out[0::2])
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        x, *maxima = ctx.saved_tensors
        B, C, H, W = x.shape
        dx = (grads[1] / H).unsqueeze(2) + (grads[3] / W).unsqueeze(3)
        dims = (2, 3, 1) if ctx.with_c else (2, 3)
        if ctx.with_c:
            dx.add_((grads[5] / C).unsqueeze(1))
        for m, gm, dim in zip(maxima, grads[0::2], dims, strict=True):
            # a float 0/1 mask of the maxima (eq_ on a float buffer: no bool ->
            # int64 conversion when counting ties)
            mask = (x - m.unsqueeze(dim)).eq_(0)
            share = gm.unsqueeze(dim) / mask.sum(dim, keepdim=True)
            dx.addcmul_(mask, share)
        return dx, None


def _zpools(x: torch.Tensor, with_c: bool, plain: bool) -> list[torch.Tensor]:
    """[Z_cw (B, 2, C, W), Z_hc (B, 2, H, C)(, Z_hw (B, 2, H, W))]: [max; mean] maps."""
    if plain:
        p = _pool_plain(x, with_c)
    elif torch.is_grad_enabled() and x.requires_grad:
        p = list(_TriplePool.apply(x, with_c))
    else:
        p = _pool_fast(x, with_c)
    z = [torch.stack(p[0:2], 1), torch.stack(p[2:4], 1).transpose(2, 3)]
    if with_c:
        z.append(torch.stack(p[4:6], 1))
    return z


class _TripletNative(torch.autograd.Function):
    """Y = X * k (a_cw + a_hc + a_hw) on the native kernels; the three gates in autograd.

    Forward: one pass for the H and W poolings (with arg-maxes), one for the C
    pooling, the gates on the pooled maps (autograd on detached maps), one pass
    for Y. Backward: one pass for the three sums of dY X, autograd through the
    gates to the pooled maps, one pass for dX (mean terms included) and sparse
    additions at the arg-max positions (ties split evenly, as ``amax``).
    """

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
            a_cw = module.cw(torch.stack(leaves[0:2], 1)).squeeze(1)  # (B, C, W)
            a_hc = module.hc(torch.stack(leaves[2:4], 1).transpose(2, 3)).squeeze(1)  # (B, H, C)
            a_hw = module.hw(torch.stack(leaves[4:6], 1)).squeeze(1) if with_c else None
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
        grads = torch.autograd.grad(
            outs, (*leaves, *ctx.params), grad_out, allow_unused=True, retain_graph=True
        )
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


@register(
    "triplet",
    family="combined",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    authors="Misra, Nalamada, Arasanipalai, Hou",
    venue="WACV",
    year=2021,
    dims=(2,),
    equation="""
        Gate(T) = T * sigmoid(BN(Conv7x7([max_1 T; mean_1 T])))
        Y1 = Gate(X^{(0,2,1,3)})^{(0,2,1,3)},  Y2 = Gate(X^{(0,3,2,1)})^{(0,3,2,1)},  Y3 = Gate(X)
        Y = (Y1 + Y2 + Y3) / 3
    """,
    url="https://arxiv.org/abs/2010.03045",
)
class TripletAttention(AttentionModule):
    """Triplet attention (2-D).

    Args:
        channels: input channels C (checked; the parameters do not depend on C).
        kernel_size: k of the three k x k gate convs (odd, default 7).
        no_spatial: drop the H x W branch (official option, default False).
    """

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False) -> None:
        super().__init__(channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self._owner()}: kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(no_spatial, bool):
            raise ValueError(f"{self._owner()}: no_spatial must be True or False, got {no_spatial!r}")
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.cw = ZPoolGate(kernel_size)
        self.hc = ZPoolGate(kernel_size)
        self.hw = None if no_spatial else ZPoolGate(kernel_size)

    def gates(self, x: torch.Tensor, plain: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The three maps in their branch layouts: (B, C, W), (B, H, C), (B, H, W).

        ``plain=True`` uses only standard ops (for tracing / export).
        """
        z = _zpools(x, self.hw is not None, plain)
        a_cw = self.cw(z[0]).squeeze(1)  # plane (C, W)
        a_hc = self.hc(z[1]).squeeze(1)  # plane (H, C)
        a_hw = None if self.hw is None else self.hw(z[2]).squeeze(1)  # plane (H, W)
        return a_cw, a_hc, a_hw

    def _forward_native(self, x: torch.Tensor) -> torch.Tensor:
        params = tuple(self.parameters()) if torch.is_grad_enabled() else ()
        if not wants_grad(x, params):
            plan = plans.eval_plan(self, x, self._plan)
            if plan is not None:  # every BN in eval: one kernel call
                return plans.run(plan, x, self)
        # BN from batch statistics (training, or no running statistics): the autograd
        # function runs the gate modules themselves (it also serves the no-grad case)
        return _TripletNative.apply(x, self, *params)

    def _plan(self, dtype: torch.dtype) -> plans.Plan | None:
        return plans.triplet_plan(dtype, [g for g in (self.cw, self.hc, self.hw) if g is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if fast_ok(self, x):
            return self._forward_native(x)
        plain = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
        a_cw, a_hc, a_hw = self.gates(x, plain)
        if self._map_sink is not None:
            self.record("cw", a_cw)
            self.record("hc", a_hc)
            if a_hw is not None:
                self.record("spatial", a_hw)
        k = 1.0 / (2 if a_hw is None else 3)
        # the branch maps broadcast to X: (B, C, 1, W), (B, C, H, 1), (B, 1, H, W);
        # made contiguous first (tiny) so the full-size broadcasts vectorise
        g = (a_cw * k).unsqueeze(2) + (a_hc * k).transpose(1, 2).contiguous().unsqueeze(3)
        if a_hw is not None:
            g.add_((a_hw * k).unsqueeze(1))  # AddBackward keeps nothing: in place is safe
        if torch.is_grad_enabled() and (x.requires_grad or g.requires_grad):
            return x * g
        return g.mul_(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
