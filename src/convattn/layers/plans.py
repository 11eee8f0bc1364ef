"""Whole-module eval kernel calls, prepared once per module.

In eval without autograd, ``se``, ``eca``, ``cbam_channel``, ``cbam_spatial``,
``cbam``, ``sse``, ``scse``, ``coord`` and ``triplet`` are each one call into
the kernel library (``gate_eval``, ``coord_eval``, ``triplet_eval`` in
csrc/fused_impl.h). What such a call needs besides X is the data pointers of the
module's small parameters and buffers and a few configuration values. Resolving
them through ``nn.Module.__getattr__`` took most of a call's fixed cost (about
1.4 us per ``module.sub.weight``; 10 to 15 of them per call), so a module
resolves them once into a :class:`Plan` and reuses it while it is still valid:

- every operand is the same tensor object with the same storage: any parameter,
  buffer or submodule assignment anywhere (``m.fc1 = ...``, ``bn.running_var =
  ...``, ``load_state_dict(assign=True)``, ``register_parametrization``) bumps a
  global counter through PyTorch's registration hooks, and ``.to()`` /
  ``.double()`` / ``param.data = ...`` move the storage;
- the input has the plan's dtype, the caller's configuration key is unchanged,
  and every BatchNorm is still in eval with the same ``eps``.

Values changed in place (optimizer steps, ``load_state_dict``, ``.data.normal_()``)
need nothing: the kernel reads the operands at each call, BatchNorm is folded
inside the kernel. An operand that is not stored as is (another dtype, not
contiguous, computed by a parametrization) is copied for that call and the plan
is not kept.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import native

_generation = 0
_hooks: list[Any] = []
_plans: weakref.WeakKeyDictionary[nn.Module, Plan | None] = weakref.WeakKeyDictionary()


def _bump(*_args) -> None:
    global _generation
    _generation += 1


def _install_hooks() -> None:
    """Registration hooks (global, installed once): any assignment invalidates every plan."""
    if _hooks:
        return
    from torch.nn.modules import module as mod

    _hooks.extend((
        mod.register_module_parameter_registration_hook(_bump),
        mod.register_module_buffer_registration_hook(_bump),
        mod.register_module_module_registration_hook(_bump),
    ))


class Plan:
    """One module's kernel call with its operands resolved (see the module docstring).

    ``call(x, out)`` runs the kernel and returns its status; ``tensors``/``ptrs`` are the
    operands and their data pointers at build time; ``bns`` the BatchNorms folded in
    the kernel and their ``eps`` at build time; ``keep`` the copies made for the call.
    """

    __slots__ = ("kernel", "dtype", "key", "gen", "tensors", "ptrs", "bns", "eps", "keep", "call")

    def __init__(self, kernel: str, dtype: torch.dtype, ops: _Operands, bns: Sequence[nn.Module],
                 call: Callable[[torch.Tensor, torch.Tensor], int]) -> None:
        self.kernel, self.dtype, self.key, self.gen = kernel, dtype, None, _generation  # key: set by eval_plan
        self.tensors, self.ptrs = tuple(ops.tensors), tuple(t.data_ptr() for t in ops.tensors)
        self.bns, self.eps = tuple(bns), tuple(bn.eps for bn in bns)
        self.keep = ops.keep  # copies made for this plan: it is then used once, not cached
        self.call = call

    def fresh(self, dtype: torch.dtype, key: Any) -> bool:
        if self.gen != _generation or dtype is not self.dtype or key != self.key:
            return False
        for t, p in zip(self.tensors, self.ptrs, strict=True):
            if t.data_ptr() != p:
                return False
        for bn, eps in zip(self.bns, self.eps, strict=True):
            if bn.training or bn.eps != eps:
                return False
        return True


def eval_plan(owner: nn.Module, x: torch.Tensor, build: Callable[[torch.dtype], Plan | None],
              key: Any = None) -> Plan | None:
    """``owner``'s plan for ``x``: the cached one while valid, else ``build(x.dtype)``
    (None: the kernel does not apply, e.g. a BatchNorm in training)."""
    plan = _plans.get(owner)
    if plan is not None and plan.fresh(x.dtype, key):
        return plan
    _install_hooks()
    plan = build(x.dtype)
    if plan is not None:
        plan.key = key
    _plans[owner] = plan if plan is not None and not plan.keep else None
    return plan


#: kernels whose ``out`` may be X itself: each sample's pools are taken before any of
#: its Y is written, by an elementwise product that loads each value before storing
#: over it (SimAM's kernel too, outside plans: native.simam_forward)
_IN_PLACE = frozenset({"gate_eval", "coord_eval", "triplet_eval"})

#: (module, tensor): ``module`` may write its output into ``tensor``, its input; set by
#: :func:`overwriting` around one call
_overwritable: contextvars.ContextVar[tuple[nn.Module, torch.Tensor] | None] = contextvars.ContextVar(
    "convattn_overwritable", default=None)


@contextlib.contextmanager
def overwriting(module: nn.Module, x: torch.Tensor):
    """Within the block, ``module(x)`` may write its result into ``x`` itself (when its
    kernel allows, see ``_IN_PLACE``) instead of a new tensor. Only ``module`` itself
    (not a module it calls or that wraps it) and only this ``x``. The caller promises
    that nothing reads ``x`` afterwards: :func:`convattn.models.attach`'s hook, for a
    fresh output no one else holds."""
    token = _overwritable.set((module, x))
    try:
        yield
    finally:
        _overwritable.reset(token)


def may_overwrite(owner: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``owner`` runs under :func:`overwriting` for this very ``x``."""
    ow = _overwritable.get()
    return ow is not None and ow[0] is owner and ow[1] is x


def run(plan: Plan, x: torch.Tensor, owner: nn.Module | None = None) -> torch.Tensor:
    """Y for ``x`` (contiguous, the plan's dtype; the caller checked ``native.usable``),
    in place when ``owner`` runs under :func:`overwriting` for this ``x``."""
    if plan.kernel in _IN_PLACE and may_overwrite(owner, x):
        native._check(plan.call(x, x), plan.kernel)
        return x
    out = torch.empty_like(x)
    native._check(plan.call(x, out), plan.kernel)
    return out


class _Operands:
    """Collects a plan's operands: the stored tensors themselves, or copies (then kept
    alive in ``keep`` and the plan is not cached)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.tensors: list[torch.Tensor] = []
        self.keep: list[torch.Tensor] = []

    def ptr(self, owner: nn.Module, name: str) -> int | None:
        """Data pointer of ``owner.<name>`` (None if that is None)."""
        stored = owner._parameters.get(name) if name in owner._parameters else owner._buffers.get(name)
        t = getattr(owner, name)  # what the module itself would use (parametrizations included)
        if t is None:
            return None
        if not t.is_cpu:  # the plain ops would refuse the mix too; a pointer would crash
            raise RuntimeError(f"{type(owner).__name__}.{name} is on {t.device}, the input is on cpu")
        if t is stored and t.dtype is self.dtype and t.is_contiguous():
            self.tensors.append(t)
            return t.data_ptr()
        c = t.detach().to(self.dtype).contiguous()
        self.keep.append(c)
        return c.data_ptr()


def _bn_ready(bn: nn.Module) -> bool:
    return not bn.training and bn.running_var is not None and bn.running_mean is not None


def gate_plan(
    dtype: torch.dtype,
    *,
    mlp: tuple[nn.Module, nn.Module] | None = None,
    mlp_max: bool = False,
    conv1d: nn.Module | None = None,
    spatial_conv: tuple[nn.Module, nn.Module, bool] | None = None,
    linear: nn.Module | None = None,
    sequential: bool = False,
    mode: int = 0,
) -> Plan | None:
    """A ``gate_eval`` plan: Y = X * G(gc, gs) with G as in :func:`native.scale` (``mode``).

    Channel gate gc (B, C), at most one of:
      ``mlp=(fc1, fc2)`` (``nn.Linear``): sigmoid(fc2(relu(fc1(GAP X)))); with
      ``mlp_max=True`` sigmoid(MLP(GAP X) + MLP(GMP X)) (CBAM);
      ``conv1d=conv`` (bias-free, odd k, zero padding k // 2): sigmoid(conv1d(GAP X)) over channels (ECA).
    Spatial gate gs (B, S), at most one of:
      ``spatial_conv=(conv, bn, max_first)``: sigmoid(bn(conv([max_c U; mean_c U]))), conv (1, 2, k, k),
      bn one channel in eval (None if it is not: no plan), U = X * gc if ``sequential`` else X,
      planes swapped unless ``max_first``; 2-D inputs only;
      ``linear=proj`` (1x1 conv C -> 1 with bias): sigmoid(proj(X)) (sSE).
    """
    a = native.GateEvalArgs(mode=mode)
    ops = _Operands(dtype)
    bns: list[nn.Module] = []
    if mlp is not None:
        fc1, fc2 = mlp
        a.ch_kind = native._GE_MLP_MAX if mlp_max else native._GE_MLP
        a.hidden = fc1.out_features
        a.w1, a.b1 = ops.ptr(fc1, "weight"), ops.ptr(fc1, "bias")
        a.w2, a.b2 = ops.ptr(fc2, "weight"), ops.ptr(fc2, "bias")
    elif conv1d is not None:
        a.ch_kind, a.k1, a.cw1 = native._GE_CONV1D, conv1d.weight.numel(), ops.ptr(conv1d, "weight")
    is_conv = spatial_conv is not None
    if is_conv:
        conv, bn, max_first = spatial_conv
        if not _bn_ready(bn):
            return None
        bns.append(bn)
        a.sp_kind, a.k2, a.cw2 = native._GE_SP_CONV, conv.weight.shape[-1], ops.ptr(conv, "weight")
        a.sequential, a.max_first = int(sequential), int(max_first)
        a.s_bn_w, a.s_bn_b = ops.ptr(bn, "weight"), ops.ptr(bn, "bias")
        a.s_bn_mean, a.s_bn_var = ops.ptr(bn, "running_mean"), ops.ptr(bn, "running_var")
        a.s_cbias, a.s_eps = ops.ptr(conv, "bias"), bn.eps
    elif linear is not None:
        a.sp_kind, a.lw, a.lb = native._GE_SP_LINEAR, ops.ptr(linear, "weight"), ops.ptr(linear, "bias")
    template = bytes(a)
    fn = native._fn("gate_eval", dtype)
    new_args = native.GateEvalArgs.from_buffer_copy

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        args = new_args(template)  # a copy per call: the kernel reads it without the GIL
        B, C = x.shape[0], x.shape[1]
        args.B, args.C, args.S = B, C, x.numel() // (B * C)
        if is_conv:
            args.H, args.W = x.shape[2], x.shape[3]
        return fn(x.data_ptr(), ctypes.byref(args), out.data_ptr(), native._threads())

    return Plan("gate_eval", dtype, ops, bns, call)


def coord_plan(dtype: torch.dtype, conv1: nn.Module, bn: nn.Module, conv_h: nn.Module,
               conv_w: nn.Module) -> Plan | None:
    """A ``coord_eval`` plan: strip means, h_swish(BN(conv1 .)) with BN in eval (None if
    it is not), the two sigmoid gates (``conv_h``, ``conv_w``: m -> C) and the product."""
    if not _bn_ready(bn):
        return None
    ops = _Operands(dtype)
    first = [ops.ptr(conv1, "weight"), ops.ptr(conv1, "bias"), ops.ptr(bn, "weight"), ops.ptr(bn, "bias"),
             ops.ptr(bn, "running_mean"), ops.ptr(bn, "running_var")]
    rest = [ops.ptr(conv_h, "weight"), ops.ptr(conv_h, "bias"), ops.ptr(conv_w, "weight"), ops.ptr(conv_w, "bias")]
    m, eps = conv1.out_channels, bn.eps
    fn = native._fn("coord_eval", dtype)

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        B, C, H, W = x.shape
        return fn(x.data_ptr(), B, C, H, W, m, *first, eps, *rest, out.data_ptr(), native._threads())

    return Plan("coord_eval", dtype, ops, [bn], call)


def triplet_plan(dtype: torch.dtype, gates: Sequence[nn.Module]) -> Plan | None:
    """A ``triplet_eval`` plan for the (C, W), (H, C) and optional (H, W) branch gates,
    each with ``.conv`` (1, 2, k, k) on [max; mean] and ``.bn`` in eval (None if one is
    not). Y = X * (a_cw + a_hc + a_hw) / (number of branches)."""
    if not all(_bn_ready(g.bn) for g in gates):
        return None
    ops = _Operands(dtype)
    w = [ops.ptr(g.conv, "weight") for g in gates]
    bnp = (ctypes.c_void_p * 12)(*[
        ops.ptr(g.bn, name) for g in gates for name in ("weight", "bias", "running_mean", "running_var")
    ])
    eps = (ctypes.c_double * 3)(*[g.bn.eps for g in gates])
    k = gates[0].conv.weight.shape[-1]
    w_hw = w[2] if len(gates) == 3 else None
    kk = 1.0 / len(gates)
    fn = native._fn("triplet_eval", dtype)

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        B, C, H, W = x.shape
        return fn(x.data_ptr(), B, C, H, W, k, w[0], w[1], w_hw, bnp, eps, kk, out.data_ptr(), native._threads())

    return Plan("triplet_eval", dtype, ops, [g.bn for g in gates], call)
