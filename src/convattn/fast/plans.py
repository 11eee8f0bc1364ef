"""Whole-module eval kernel calls, prepared once per module.

In eval without autograd, ``se``, ``eca``, ``cbam_channel``, ``cbam_spatial``,
``cbam``, ``sse``, ``scse``, ``coord`` and ``triplet`` are each one call into
the kernel library (``gate_eval``, ``coord_eval``, ``triplet_eval`` in
csrc/fused_impl.h). What such a call needs besides X is the data pointers of the
module's small parameters and buffers and a few configuration values. Resolving
them through ``nn.Module.__getattr__`` took most of a call's fixed cost (about
1.4 us per ``module.sub.weight``; 10 to 15 of them per call), so a module
resolves them once into a :class:`Plan` and reuses it while it is still valid.

Building a plan checks every operand against what the kernel implements: the
layer types, every shape against the input's channels and against each other,
the configuration (stride, padding, dilation, groups of a conv; a BatchNorm in
eval with running statistics), and that each tensor is stored as is (no
parametrization), is contiguous, lives on the CPU and has the input's dtype.
Anything else is a :class:`Decline` with the reason, and the module's plain
forward runs instead (its result or its error is what the user sees).

A plan stays valid while

- every operand is the same tensor object with the same data pointer, shape and
  strides (``param.data = param.data.t()`` keeps the pointer and changes the
  strides); any parameter, buffer or submodule assignment anywhere (``m.fc1 =
  ...``, ``bn.running_var = ...``, ``load_state_dict(assign=True)``,
  ``register_parametrization``) bumps a global counter through PyTorch's
  registration hooks;
- the input has the plan's dtype, the caller's configuration key is unchanged,
  and every BatchNorm is still in eval with the same ``eps``.

Values changed in place (optimizer steps, ``load_state_dict``, ``.data.normal_()``)
need nothing: the kernel reads the operands at each call, and folds BatchNorm
inside the kernel.
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


class Decline(Exception):
    """A plan cannot be built: the module is not what the kernel implements (the reason)."""


class Plan:
    """One module's kernel call with its operands resolved (see the module docstring).

    ``call(x, out)`` runs the kernel and returns its status; ``tensors`` are the
    operands and ``layout`` their data pointers, shapes and strides at build time;
    ``bns`` the BatchNorms folded in the kernel and their ``eps`` at build time.
    """

    __slots__ = ("kernel", "dtype", "key", "gen", "tensors", "layout", "bns", "eps", "call")

    def __init__(self, kernel: str, dtype: torch.dtype, ops: _Operands, bns: Sequence[nn.Module],
                 call: Callable[[torch.Tensor, torch.Tensor], int]) -> None:
        self.kernel, self.dtype, self.key, self.gen = kernel, dtype, None, _generation  # key: set by eval_plan
        self.tensors = tuple(ops.tensors)
        self.layout = tuple((t.data_ptr(), t.shape, t.stride()) for t in ops.tensors)
        self.bns, self.eps = tuple(bns), tuple(bn.eps for bn in bns)
        self.call = call

    def fresh(self, dtype: torch.dtype, key: Any) -> bool:
        if self.gen != _generation or dtype is not self.dtype or key != self.key:
            return False
        for t, (ptr, shape, stride) in zip(self.tensors, self.layout, strict=True):
            if t.data_ptr() != ptr or t.shape != shape or t.stride() != stride:
                return False
        for bn, eps in zip(self.bns, self.eps, strict=True):
            if bn.training or bn.eps != eps:
                return False
        return True


def eval_plan(owner: nn.Module, x: torch.Tensor, build: Callable[[torch.Tensor, nn.Module], Plan],
              key: Any = None) -> Plan | str:
    """``owner``'s plan for ``x``: the cached one while valid, else ``build(x, owner)``; the
    reason (a string) when the kernel does not apply."""
    plan = _plans.get(owner)
    if plan is not None and plan.fresh(x.dtype, key):
        return plan
    _install_hooks()
    try:
        plan = build(x, owner)
    except Decline as why:
        _plans[owner] = None
        return str(why)
    plan.key = key
    _plans[owner] = plan
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
    that nothing reads ``x`` afterwards: :class:`convattn.fast.fusion.NormGate`, for a
    norm's fresh output."""
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
    """Y for ``x`` (contiguous, the plan's dtype), in place when ``owner`` runs under
    :func:`overwriting` for this ``x``."""
    if plan.kernel in _IN_PLACE and may_overwrite(owner, x):
        native._check(plan.call(x, x), plan.kernel)
        return x
    out = torch.empty_like(x)
    native._check(plan.call(x, out), plan.kernel)
    return out


def run_eval(owner: nn.Module, x: torch.Tensor, build: Callable[[torch.Tensor, nn.Module], Plan],
             key: Any = None) -> torch.Tensor | str:
    """:func:`run` with ``owner``'s plan for ``x``, or the reason it has none."""
    plan = eval_plan(owner, x, build, key)
    return plan if isinstance(plan, str) else run(plan, x, owner)


class _Operands:
    """Collects a plan's operands, each checked to be usable by a kernel as stored."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.tensors: list[torch.Tensor] = []

    def ptr(self, owner: nn.Module, name: str, shape: tuple[int, ...] | None = None,
            optional: bool = False, at: str | None = None) -> int | None:
        """Data pointer of ``owner.<name>`` (None if that is None and ``optional``),
        checked to be stored as is, contiguous, on the CPU, of the plan's dtype and
        (if given) of ``shape``; :class:`Decline` otherwise, naming the tensor as
        ``<at>.<name>``."""
        where = f"{at or type(owner).__name__}.{name}"
        stored = owner._parameters.get(name) if name in owner._parameters else owner._buffers.get(name)
        t = getattr(owner, name)  # what the module itself would use (parametrizations included)
        if t is None:
            if optional:
                return None
            raise Decline(f"{where} is None")
        if t is not stored:
            raise Decline(f"{where} is computed (a parametrization), not stored")
        if type(t) not in (torch.Tensor, nn.Parameter) or not t.is_cpu:
            raise Decline(f"{where} is not a plain CPU tensor")
        if t.dtype is not self.dtype:
            raise Decline(f"{where} is {t.dtype}, the input is {self.dtype}")
        if shape is not None and tuple(t.shape) != shape:
            raise Decline(f"{where} has shape {tuple(t.shape)}, the kernel needs {shape}")
        if not t.is_contiguous():
            raise Decline(f"{where} is not contiguous")
        self.tensors.append(t)
        return t.data_ptr()


def exact(layer: object, cls: type, where: str) -> None:
    if type(layer) is not cls:
        raise Decline(f"{where} is a {type(layer).__name__}, the kernel implements {cls.__name__}")


def conv_config(conv: nn.Module, where: str, padding: tuple[int, ...]) -> None:
    """A conv with stride 1, no dilation, one group, zero padding of ``padding``."""
    n = len(padding)
    if (conv.stride != (1,) * n or conv.dilation != (1,) * n or conv.groups != 1
            or conv.padding_mode != "zeros" or tuple(conv.padding) != padding):
        raise Decline(f"{where}: the kernel implements stride 1, dilation 1, groups 1, zero padding {padding}")


def _bn_ready(bn: nn.Module, where: str, channels: int) -> None:
    """A BatchNorm of ``channels`` in eval with running statistics."""
    if bn.training:
        raise Decline(f"{where} is in training (batch statistics)")
    if bn.running_var is None or bn.running_mean is None:
        raise Decline(f"{where} has no running statistics")
    if bn.num_features != channels:
        raise Decline(f"{where} has {bn.num_features} features, the kernel needs {channels}")


def _mlp(ops: _Operands, a: native.GateEvalArgs, fc1: nn.Module, fc2: nn.Module, C: int, where: str) -> None:
    """W1 (H, C), b1 (H,), W2 (C, H), b2 (C,) of two ``nn.Linear`` (biases optional)."""
    exact(fc1, nn.Linear, f"{where}.fc1")
    exact(fc2, nn.Linear, f"{where}.fc2")
    H = fc1.out_features
    a.hidden = H
    a.w1 = ops.ptr(fc1, "weight", (H, C), at=f"{where}.fc1")
    a.b1 = ops.ptr(fc1, "bias", (H,), optional=True, at=f"{where}.fc1")
    a.w2 = ops.ptr(fc2, "weight", (C, H), at=f"{where}.fc2")
    a.b2 = ops.ptr(fc2, "bias", (C,), optional=True, at=f"{where}.fc2")


def gate_plan(
    x: torch.Tensor,
    owner: nn.Module,
    *,
    mlp: tuple[nn.Module, nn.Module] | None = None,
    mlp_max: bool = False,
    conv1d: tuple[nn.Module, int] | None = None,
    spatial_conv: tuple[nn.Module, nn.Module, bool] | None = None,
    linear: nn.Module | None = None,
    sequential: bool = False,
    mode: int = native.PRODUCT,
) -> Plan:
    """A ``gate_eval`` plan for ``x``: Y = X * G(gc, gs) with G as in :func:`native.scale` (``mode``).

    Channel gate gc (B, C), at most one of:
      ``mlp=(fc1, fc2)`` (``nn.Linear``): sigmoid(fc2(relu(fc1(GAP X)))); with
      ``mlp_max=True`` sigmoid(MLP(GAP X) + MLP(GMP X)) (CBAM);
      ``conv1d=(conv, k)`` (a (1, 1, k) bias-free weight, odd k, zero padding (k - 1) // 2):
      sigmoid(conv1d(GAP X)) over channels (ECA).
    Spatial gate gs (B, S), at most one of:
      ``spatial_conv=(conv, bn, max_first)``: sigmoid(bn(conv([max_c U; mean_c U]))), conv
      ``nn.Conv2d`` (1, 2, k, k), odd k, padding k // 2; bn ``nn.BatchNorm2d(1)`` in eval;
      U = X * gc if ``sequential`` else X, planes swapped unless ``max_first``; 2-D inputs only;
      ``linear=proj`` (``nn.Linear(C, 1)``): sigmoid(proj(X)) (sSE).
    ``owner`` names the module in the reasons of a :class:`Decline`.
    """
    where = type(owner).__name__
    C = x.shape[1]
    a = native.GateEvalArgs(mode=mode)
    ops = _Operands(x.dtype)
    bns: list[nn.Module] = []
    if mlp is not None:
        _mlp(ops, a, *mlp, C, where)
        a.ch_kind = native.GE_MLP_MAX if mlp_max else native.GE_MLP
    elif conv1d is not None:
        conv, k = conv1d
        if k % 2 == 0:
            raise Decline(f"{where}: the kernel implements odd kernel sizes, got {k}")
        a.ch_kind, a.k1 = native.GE_CONV1D, k
        a.cw1 = ops.ptr(conv, "weight", (1, 1, k), at=f"{where}.conv")
    is_conv = spatial_conv is not None
    if is_conv:
        conv, bn, max_first = spatial_conv
        if x.dim() != 4:
            raise Decline(f"{where}: the spatial-gate kernel is 2-D only")
        exact(conv, nn.Conv2d, f"{where}.conv")
        exact(bn, nn.BatchNorm2d, f"{where}.bn")
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or k % 2 == 0:
            raise Decline(f"{where}.conv: the kernel implements square odd kernels, got {conv.kernel_size}")
        conv_config(conv, f"{where}.conv", (k // 2, k // 2))
        _bn_ready(bn, f"{where}.bn", 1)
        bns.append(bn)
        a.sp_kind, a.k2 = native.GE_SP_CONV, k
        a.cw2 = ops.ptr(conv, "weight", (1, 2, k, k), at=f"{where}.conv")
        a.sequential, a.max_first = int(sequential), int(max_first)
        a.s_bn_w = ops.ptr(bn, "weight", (1,), optional=True, at=f"{where}.bn")
        a.s_bn_b = ops.ptr(bn, "bias", (1,), optional=True, at=f"{where}.bn")
        a.s_bn_mean = ops.ptr(bn, "running_mean", (1,), at=f"{where}.bn")
        a.s_bn_var = ops.ptr(bn, "running_var", (1,), at=f"{where}.bn")
        a.s_cbias = ops.ptr(conv, "bias", (1,), optional=True, at=f"{where}.conv")
        a.s_eps = bn.eps
    elif linear is not None:
        exact(linear, nn.Linear, f"{where}.proj")
        a.sp_kind = native.GE_SP_LINEAR
        a.lw = ops.ptr(linear, "weight", (1, C), at=f"{where}.proj")
        a.lb = ops.ptr(linear, "bias", (1,), optional=True, at=f"{where}.proj")
    template = bytes(a)
    fn = native._fn("gate_eval", x.dtype)
    new_args = native.GateEvalArgs.from_buffer_copy

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        args = new_args(template)  # a copy per call: the kernel reads it without the GIL
        B, C = x.shape[0], x.shape[1]
        args.B, args.C, args.S = B, C, x.numel() // (B * C)
        if is_conv:
            args.H, args.W = x.shape[2], x.shape[3]
        return fn(x.data_ptr(), ctypes.byref(args), out.data_ptr(), native._threads())

    return Plan("gate_eval", x.dtype, ops, bns, call)


def coord_plan(x: torch.Tensor, owner: nn.Module) -> Plan:
    """A ``coord_eval`` plan for coordinate attention (``conv1``, ``bn1``, ``act``,
    ``conv_h``, ``conv_w``): strip means, h_swish(BN(conv1 .)) with BN in eval, the two
    sigmoid gates (m -> C) and the product."""
    where = type(owner).__name__
    C = x.shape[1]
    conv1, bn, conv_h, conv_w = owner.conv1, owner.bn1, owner.conv_h, owner.conv_w
    exact(owner.act, nn.Hardswish, f"{where}.act")
    for name, conv in (("conv1", conv1), ("conv_h", conv_h), ("conv_w", conv_w)):
        exact(conv, nn.Conv2d, f"{where}.{name}")
        if conv.kernel_size != (1, 1):
            raise Decline(f"{where}.{name}: the kernel implements 1x1 convs")
        conv_config(conv, f"{where}.{name}", (0, 0))
    exact(bn, nn.BatchNorm2d, f"{where}.bn1")
    m = conv1.out_channels
    _bn_ready(bn, f"{where}.bn1", m)
    ops = _Operands(x.dtype)
    first = [
        ops.ptr(conv1, "weight", (m, C, 1, 1), at=f"{where}.conv1"),
        ops.ptr(conv1, "bias", (m,), optional=True, at=f"{where}.conv1"),
        *(ops.ptr(bn, name, (m,), optional=name in ("weight", "bias"), at=f"{where}.bn1")
          for name in ("weight", "bias", "running_mean", "running_var")),
    ]
    rest = [
        ops.ptr(conv, name, shape, optional=name == "bias", at=f"{where}.{label}")
        for label, conv in (("conv_h", conv_h), ("conv_w", conv_w))
        for name, shape in (("weight", (C, m, 1, 1)), ("bias", (C,)))
    ]
    eps = bn.eps
    fn = native._fn("coord_eval", x.dtype)

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        B, C, H, W = x.shape
        return fn(x.data_ptr(), B, C, H, W, m, *first, eps, *rest, out.data_ptr(), native._threads())

    return Plan("coord_eval", x.dtype, ops, [bn], call)


def triplet_plan(x: torch.Tensor, owner: nn.Module, gates: Sequence[nn.Module], k: int) -> Plan:
    """A ``triplet_eval`` plan for the (C, W), (H, C) and optional (H, W) branch gates,
    each with ``.conv`` (``nn.Conv2d`` 2 -> 1, k x k, no bias) on [max; mean] and ``.bn``
    (``nn.BatchNorm2d(1)``) in eval. Y = X * (a_cw + a_hc + a_hw) / (number of branches)."""
    where = type(owner).__name__
    ops = _Operands(x.dtype)
    for g in gates:
        exact(g.conv, nn.Conv2d, f"{where}.conv")
        exact(g.bn, nn.BatchNorm2d, f"{where}.bn")
        conv_config(g.conv, f"{where}.conv", ((k - 1) // 2, (k - 1) // 2))
        _bn_ready(g.bn, f"{where}.bn", 1)
        if g.conv.bias is not None:
            raise Decline(f"{where}.conv has a bias; the kernel implements bias-free gate convs")
    if k % 2 == 0:
        raise Decline(f"{where}: the kernel implements odd kernel sizes, got {k}")
    w = [ops.ptr(g.conv, "weight", (1, 2, k, k), at=f"{where}.conv") for g in gates]
    bnp = (ctypes.c_void_p * 12)(*[
        ops.ptr(g.bn, name, (1,), optional=name in ("weight", "bias"), at=f"{where}.bn")
        for g in gates for name in ("weight", "bias", "running_mean", "running_var")
    ])
    eps = (ctypes.c_double * 3)(*[g.bn.eps for g in gates])
    w_hw = w[2] if len(gates) == 3 else None
    kk = 1.0 / len(gates)
    fn = native._fn("triplet_eval", x.dtype)

    def call(x: torch.Tensor, out: torch.Tensor) -> int:
        B, C, H, W = x.shape
        return fn(x.data_ptr(), B, C, H, W, k, w[0], w[1], w_hw, bnp, eps, kk, out.data_ptr(), native._threads())

    return Plan("triplet_eval", x.dtype, ops, [g.bn for g in gates], call)
