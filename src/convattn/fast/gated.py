"""One autograd function for the pooled-gate family, on the native kernels.

Many gating modules share one shape of computation::

    gc = f_c(GAP X, GMP X)                      (B, C)     channel gate (SE, ECA, CBAM, scSE)
    U  = X * gc   (sequential, CBAM)  or  X      (parallel)
    gs = f_s(max_c U, mean_c U)                 (B, *S)    CBAM-style spatial gate
      or f_s(w . X)                             (B, *S)    sSE-style (1x1 conv C -> 1)
    Y  = X * G(gc, gs)                          G = gc gs, gc + gs, or max(X gc, X gs) / X

``gated(x, spec, params)`` computes Y with the full-size passes in native
kernels (see :mod:`convattn.fast.native`) and the small gate networks f_c, f_s
in ordinary PyTorch: the module's own methods, passed in ``spec``. In training it is one ``torch.autograd.Function``: the
forward keeps X, the small gates and the pooling arg-maxes; the backward
differentiates f_c and f_s with autograd on their small inputs and assembles the
input gradient in one pass::

    dL/dX = dY * G + gc[c] dL/dmean_c[s] / C + dL/dGAP[c] / S   (+ w[c] dL/dlogit[s] for sSE)
            + the max-pool terms at the arg-max positions (split evenly over ties, as torch.amax)

Every module using it also has its plain forward; the tests compare the two in
float64, values and gradients. Double backward is not supported through the fused
path: run inside ``convattn.fast.use(False)`` (or with ``CONVATTN_FAST=0``) when a
loss needs gradients of gradients (e.g. gradient penalties).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import native
from .native import MAX, PRODUCT, SUM  # noqa: F401  (G(gc, gs) variants, the kernels' ``mode``)


@dataclass(frozen=True)
class GateSpec:
    """What a fused gate computes (see the module docstring).

    channel: ``f_c(avg, max) -> gc`` (B, C); ``max`` is None unless ``channel_max``.
    spatial: for ``spatial_kind="maxmean"`` ``f_s(max_c U, mean_c U) -> gs`` with
        maps and result of shape (B, *S); for ``"linear"`` ``f_s(w . X) -> gs`` with
        the (B, *S) logits (without bias) as input.
    linear_index: position in ``params`` of the (C,) weight w for ``"linear"``.
    """

    channel: Callable | None = None
    channel_max: bool = False
    spatial: Callable | None = None
    spatial_kind: str = "maxmean"
    sequential: bool = False
    mode: int = PRODUCT
    linear_index: int = -1


def scatter_max_grad(dx, x, mx, idx, cnt, g, dim: int, weight=None) -> None:
    """dx += the gradient of ``(x * weight).amax(dim)`` wrt x given dL/dmax = g, in place.

    mx, idx, cnt, g have x's shape without ``dim``: the max, its first arg-max and
    the number of ties. ``weight`` (None = 1) broadcasts against x (CBAM's
    max_c(X M_c)). As ``torch.amax``, a tie splits the gradient evenly.
    """
    share = (g / cnt.to(g.dtype)).unsqueeze(dim)
    index = idx.unsqueeze(dim)
    w = None if weight is None else weight.expand_as(x)
    dx.scatter_add_(dim, index, share if w is None else share * w.gather(dim, index))
    ties = cnt > 1
    if bool(ties.any()):
        u = x if w is None else x * w
        m = mx.unsqueeze(dim)
        mask = ((u == m) | (u.isnan() & m.isnan())) & ties.unsqueeze(dim)
        mask.scatter_(dim, index, False)  # the first one is added above
        add = mask.to(dx.dtype) * share
        dx.add_(add if w is None else add * w)


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().requires_grad_(True)


def linear_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """w . x over channels (an sSE 1x1 conv C -> 1 without bias), (B, S), one native pass."""
    B, C = x.shape[:2]
    return native.pool_channel(x, weight.detach().reshape(1, C).expand(B, C), want_max=False)[0].mul_(C)


def _gates(x: torch.Tensor, spec: GateSpec, params: tuple, keep: bool):
    """(gc (B, C) or None, gs (B, S) or None, state); with ``keep`` the gate networks run
    on detached leaf inputs and ``state`` holds what the backward needs."""
    B = x.shape[0]
    sp = x.shape[2:]
    leaf = _leaf if keep else (lambda t: t)
    gc = gs = None
    state: dict = {}
    if spec.channel is not None:
        avg, mx, idx_c, cnt_c = native.pool_spatial(x, spec.channel_max, keep and spec.channel_max)
        avg_l, mx_l = leaf(avg), leaf(mx)
        gc_out = spec.channel(avg_l, mx_l)
        check_shape(gc_out, (B, x.shape[1]), "channel gate")
        gc = gc_out.detach()
        state["channel"] = (avg_l, mx_l, gc_out, mx, idx_c, cnt_c)
    if spec.spatial is not None:
        if spec.spatial_kind == "maxmean":
            pmean, pmax, pidx, pcnt = native.pool_channel(x, gc if spec.sequential else None, True, keep)
            pmax_l, pmean_l = leaf(pmax.view(B, *sp)), leaf(pmean.view(B, *sp))
            gs_out = spec.spatial(pmax_l, pmean_l)
            state["spatial"] = (pmax_l, pmean_l, gs_out, pmax, pidx, pcnt)
        else:
            logit_l = leaf(linear_logits(x, params[spec.linear_index]).view(B, *sp))
            gs_out = spec.spatial(logit_l)
            state["spatial"] = (logit_l, gs_out)
        check_shape(gs_out, (B, *sp), "spatial gate")
        gs = gs_out.detach().reshape(B, -1)
    return gc, gs, state


class GateMismatch(Exception):
    """A gate network's output does not have the shape the kernels need (the reason)."""


def check_shape(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != shape:
        raise GateMismatch(f"the {what} has shape {tuple(t.shape)}, the kernels need {shape}")


def wrong_operands(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> str | None:
    """Why ``params`` cannot go with ``x`` into a kernel path (another dtype or device), or None."""
    for p in params:
        if p.dtype is not x.dtype or not p.is_cpu:
            return f"a parameter is {p.dtype} on {p.device}, the input {x.dtype} on cpu"
    return None


class _GatedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec: GateSpec, *params):  # type: ignore[override]
        with torch.enable_grad():
            gc, gs, state = _gates(x, spec, params, keep=True)
        ctx.spec, ctx.params = spec, params
        ctx.channel, ctx.spatial = state.get("channel"), state.get("spatial")
        empty = x.new_empty(0)
        ctx.save_for_backward(x, empty if gc is None else gc, empty if gs is None else gs)
        ctx.has = (gc is not None, gs is not None)
        return native.scale(x, gc, gs, spec.mode)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        x, gc, gs = ctx.saved_tensors
        gc = gc if ctx.has[0] else None
        gs = gs if ctx.has[1] else None
        spec: GateSpec = ctx.spec
        params = ctx.params
        B, C = x.shape[:2]
        S = x.numel() // (B * C)
        dy = dy.contiguous()
        pgrads: list[torch.Tensor | None] = [None] * len(params)

        def add_param_grads(grads):
            for i, gr in enumerate(grads):
                if gr is not None:
                    pgrads[i] = gr if pgrads[i] is None else pgrads[i] + gr

        # dL/dgc (B, C) and dL/dgs (B, S) of Y = X * G(gc, gs)
        if spec.mode == PRODUCT:
            w_row, g_col = gs, gc
        elif spec.mode == SUM:
            w_row, g_col = None, None
        else:
            w_row, g_col = gs, gc
        g_gc, g_gs = native.dots(dy, x, w_row, g_col, spec.mode, gc is not None, gs is not None)

        u = v = rc = rs = None
        spatial_max = None
        if gs is not None:
            if spec.spatial_kind == "maxmean":
                pmax_l, pmean_l, gs_graph, pmax, pidx, pcnt = ctx.spatial
                grads = torch.autograd.grad(
                    gs_graph, (pmax_l, pmean_l, *params), g_gs.view_as(gs_graph), allow_unused=True, retain_graph=True
                )
                g_pmax, g_pmean = grads[0].reshape(B, S), grads[1].reshape(B, S)
                add_param_grads(grads[2:])
                if spec.sequential:
                    # mean_c (X gc): d/dX = gc[c] g_pmean[s] / C ; d/dgc[c] = sum_s X g_pmean / C
                    u, v = gc, g_pmean / C
                    g_gc = g_gc + native.rowdot(x, v)
                else:
                    rs = g_pmean / C
                spatial_max = (pmax, pidx, pcnt, g_pmax)
            else:
                logit_l, gs_graph = ctx.spatial
                grads = torch.autograd.grad(
                    gs_graph, (logit_l, *params), g_gs.view_as(gs_graph), allow_unused=True, retain_graph=True
                )
                g_logit = grads[0].reshape(B, S)
                add_param_grads(grads[1:])
                w = params[spec.linear_index].detach()
                u, v = w.reshape(1, C).to(x.dtype).expand(B, C), g_logit
                g_w = native.rowdot(x, g_logit).sum(0).reshape(w.shape)
                add_param_grads([None] * spec.linear_index + [g_w.to(w.dtype)])
        channel_max = None
        if gc is not None:
            avg_l, mx_l, gc_graph, cmx, idx_c, cnt_c = ctx.channel
            if spatial_max is not None and spec.sequential:
                # max_c (X gc) depends on gc too: complete dL/dgc before f_c's backward
                _add_channel_max_gc(x, gc, spatial_max, g_gc)
            inputs = (avg_l,) + ((mx_l,) if mx_l is not None else ()) + tuple(params)
            grads = torch.autograd.grad(gc_graph, inputs, g_gc, allow_unused=True, retain_graph=True)
            g_avg = grads[0]
            k = 1
            if mx_l is not None:
                channel_max = (cmx, idx_c, cnt_c, grads[1])
                k = 2
            add_param_grads(grads[k:])
            rc = None if g_avg is None else g_avg / S
        dx = None
        if ctx.needs_input_grad[0]:
            dx = native.grad_input(dy, x, gc, gs, spec.mode, u, v, rc, rs)
            d3, x3 = dx.view(B, C, S), x.view(B, C, S)
            if spatial_max is not None:  # max over channels of X (or X * M_c): dim 1
                pmax, pidx, pcnt, g_pmax = spatial_max
                weight = gc.unsqueeze(-1) if spec.sequential else None
                scatter_max_grad(d3, x3, pmax, pidx, pcnt, g_pmax, 1, weight)
            if channel_max is not None:  # max over positions: dim 2
                cmx, idx_c, cnt_c, g_mx = channel_max
                scatter_max_grad(d3, x3, cmx, idx_c, cnt_c, g_mx, 2)
        return (dx, None, *pgrads)


def _add_channel_max_gc(x, gc, spatial_max, g_gc):
    """g_gc += d max_c(X gc) / d gc, contracted with dL/dmax."""
    pmax, pidx, pcnt, g_pmax = spatial_max
    B, C = gc.shape
    S = pmax.shape[1]
    gv = g_pmax / pcnt.to(g_pmax.dtype)
    xs = x.view(B, C, S).gather(1, pidx.view(B, 1, S)).view(B, S)
    g_gc.scatter_add_(1, pidx, xs * gv)
    ties = pcnt > 1
    if bool(ties.any()):
        u = x.view(B, C, S) * gc.unsqueeze(-1)
        mask = (u == pmax.unsqueeze(1)) & ties.unsqueeze(1)
        mask.scatter_(1, pidx.view(B, 1, S), False)
        g_gc.add_((mask.to(x.dtype) * gv.unsqueeze(1) * x.view(B, C, S)).sum(-1))


def wants_grad(x: torch.Tensor, params) -> bool:
    """Whether autograd records this call (then :func:`gated` uses the autograd function)."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in params)


def recorded_params(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """``module``'s parameters when autograd records ``module(x)``, else None (the eval kernel's case)."""
    if not torch.is_grad_enabled():
        return None
    params = tuple(module.parameters())
    return params if wants_grad(x, params) else None


def gated(x: torch.Tensor, spec: GateSpec, params: tuple[torch.Tensor, ...]) -> torch.Tensor | str:
    """Y for a gate described by ``spec`` (``params``: every parameter of its gate networks),
    or the reason it cannot be computed here (parameters of another dtype or device, a
    gate network whose output has another shape): the caller's plain forward runs then.

    ``x`` is contiguous, float32/64 on the CPU (the selector's rules). With autograd
    recording, runs as one autograd function; otherwise computes the same forward
    without keeping anything.
    """
    why = wrong_operands(x, params)
    if why is not None:
        return why
    try:
        if wants_grad(x, params):
            return _GatedFn.apply(x, spec, *params)
        with torch.no_grad():
            gc, gs, _ = _gates(x, spec, params, keep=False)
            return native.scale(x, gc, gs, spec.mode)
    except GateMismatch as mismatch:
        return str(mismatch)


class _ConvPlanes(torch.autograd.Function):
    """conv2d of one or two (B, H, W) planes with a (1, I, k, k) kernel on the native kernels."""

    @staticmethod
    def forward(ctx, p0, p1, weight):  # type: ignore[override]
        ctx.save_for_backward(p0, weight, *(() if p1 is None else (p1,)))
        return native.conv2d_gate(p0, p1, weight, sigmoid=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        p0, weight, *rest = ctx.saved_tensors
        p1 = rest[0] if rest else None
        need = ctx.needs_input_grad
        return native.conv2d_planes_backward(g, p0, p1, weight, need[0], need[1], need[2])


def conv_1out(z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``F.conv2d(z, weight, padding=k // 2)`` for a 2-D conv with one output channel and
    I = 1 or 2 inputs (CBAM's and triplet attention's gates), differentiable, on the
    native kernels (1 thread, planes 8 x 2 x 256 x 28: forward 0.23 ms, backward 0.77 ms,
    against 0.80 and 3.0 ms for oneDNN's row-conv rewrite); None when they do not apply
    (then call the conv as usual). z (B, I, H, W) float32/64 on the CPU -> (B, 1, H, W).
    """
    if z.dim() != 4 or z.shape[1] not in (1, 2) or weight.dtype != z.dtype or not weight.is_cpu:
        return None
    k = weight.shape[-1]
    if weight.shape != (1, z.shape[1], k, k) or k % 2 == 0:
        return None
    p0 = z[:, 0].contiguous()
    p1 = z[:, 1].contiguous() if z.shape[1] == 2 else None
    return _ConvPlanes.apply(p0, p1, weight).unsqueeze(1)
