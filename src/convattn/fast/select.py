"""The switch, the registry of fast paths, and the one rule that picks a path.

A fast path is registered for one module class (exactly that class: a subclass
takes its own forward until it registers a path of its own) with what it
implements and which of the class's methods it reproduces. For every call the
selector (:func:`decline`) applies the same rules, in this order, and the
module's plain forward runs unless all of them pass:

1. the switch is on (:func:`enabled`);
2. the input is a plain ``torch.Tensor`` (no subclass, no fake tensor);
3. no graph is being recorded: ``torch.jit`` tracing or scripting,
   ``torch.compile`` / ``torch.export`` / the ONNX exporters, and no
   ``TorchDispatchMode`` or ``TorchFunctionMode`` is active (``FlopCounterMode``,
   fake tensors): recorded graphs hold standard ops only;
4. the input has the module's shape (``check_input``) and is a non-empty,
   contiguous float32 or float64 CPU tensor with a spatial-dim count the path
   declares (channels-last and other layouts take the plain forward);
5. no attention maps are being captured from the module (:func:`convattn.capture_maps`
   records from the plain forward, whose maps can stay in the autograd graph);
6. the methods the fast path reproduces are unchanged since it was written
   (a fingerprint of their code, see :func:`fingerprint`);
7. the kernel library is built and loaded (:mod:`convattn.fast.native`).

The fast path itself may still decline (it returns the reason instead of a
result), for instance when a layer of the module no longer has the type, shape,
dtype or layout it implements; the plain forward then runs, so the user sees the
plain forward's result or error.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import hashlib
import inspect
import os
import textwrap
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers.ops import recording_graph
from . import native

#: the switch: None means "the environment decides" (:func:`enabled`)
_switch: contextvars.ContextVar[bool | None] = contextvars.ContextVar("convattn_fast", default=None)
_ENV = ("CONVATTN_FAST", "CONVATTN_NATIVE")  # the second one is the older name
_DTYPES = (torch.float32, torch.float64)


def _env_default() -> bool:
    for name in _ENV:
        value = os.environ.get(name)
        if value is not None:
            return value.strip().lower() not in ("0", "false", "no", "off")
    return True


#: the environment's default, read once when convattn is imported
_DEFAULT = _env_default()


def enabled() -> bool:
    """Whether fast paths may run: the innermost :func:`use` block decides, else the
    environment when convattn was imported (``CONVATTN_FAST=0`` turns them off;
    ``CONVATTN_NATIVE`` is the older name of the same variable), else on."""
    value = _switch.get()
    return _DEFAULT if value is None else value


@contextlib.contextmanager
def use(on: bool = True) -> Iterator[None]:
    """Within the block, fast paths run (``on=True``) or every module takes its plain
    forward (``on=False``); nests, and is local to the thread or task."""
    token = _switch.set(bool(on))
    try:
        yield
    finally:
        _switch.reset(token)


def disabled() -> contextlib.AbstractContextManager[None]:
    """``use(False)``: the plain forwards inside the block."""
    return use(False)


def graph_capture() -> bool:
    """Whether a graph is being recorded or a dispatch / function mode is active (rule 3)."""
    if recording_graph():
        return True
    return torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled()


def fingerprint(fn: Callable) -> str:
    """A hash of a function's code with its name, docstring, comments and formatting left out."""
    fn = inspect.unwrap(getattr(fn, "plain_forward", fn))
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    node.name = "_"
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(node, annotate_fields=False).encode()).hexdigest()[:12]


#: a fast path's answer when it does not apply to a call: the reason
Declined = str


@dataclass
class FastPath:
    """A fast implementation of one module class.

    ``run(module, x)`` returns Y, or a reason string when it does not apply to this
    call. ``declares`` says in words what it implements. ``mirrors`` maps each
    function whose maths ``run`` reproduces to the :func:`fingerprint` it was written
    for: a method name of ``cls``, or ``(owner, name)`` for a method of another class
    or a function of a module. ``dims``: the spatial-dim counts it handles.
    """

    cls: type[nn.Module]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor | Declined]
    declares: str
    mirrors: dict[str | tuple[object, str], str]
    dims: tuple[int, ...] = (1, 2, 3)
    where: str = ""
    _drift: str | None = field(default=None, init=False)
    _checked: bool = field(default=False, init=False)

    def drift(self) -> str | None:
        """None while every mirrored method has its recorded fingerprint, else what changed."""
        if not self._checked:
            try:
                changed = [label for label, fn, expected in self.functions() if fingerprint(fn) != expected]
            except (OSError, TypeError, SyntaxError) as exc:  # no source to read (a frozen install)
                self._drift = f"the code {self.where} mirrors cannot be read ({type(exc).__name__})"
                self._checked = True
                return self._drift
            if changed:
                names = ", ".join(changed)
                self._drift = f"{names} changed since the fast path in {self.where} was written"
                warnings.warn(
                    f"convattn: {self._drift}; {self.cls.__name__} takes its plain forward "
                    "(update the fast path and its fingerprints, see convattn.fast.fingerprints())",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self._checked = True
        return self._drift

    def functions(self) -> list[tuple[str, Callable, str]]:
        """(label, function, recorded fingerprint) of every mirrored function."""
        out = []
        for key, expected in self.mirrors.items():
            owner, name = (self.cls, key) if isinstance(key, str) else key
            out.append((f"{getattr(owner, '__name__', owner)}.{name}", getattr(owner, name), expected))
        return out


_PATHS: dict[type[nn.Module], FastPath] = {}


def register(cls: type[nn.Module], *, declares: str, mirrors: dict[str | tuple[object, str], str],
             dims: tuple[int, ...] = (1, 2, 3)):
    """Register the decorated ``run(module, x)`` as the fast path of ``cls``."""

    def decorate(run: Callable[[nn.Module, torch.Tensor], torch.Tensor | Declined]):
        _PATHS[cls] = FastPath(cls, run, declares, dict(mirrors), tuple(dims), where=run.__module__)
        return run

    return decorate


def registered() -> dict[type[nn.Module], FastPath]:
    """Every registered fast path by module class."""
    return dict(_PATHS)


def fingerprints(cls: type[nn.Module]) -> dict[str, tuple[str, str]]:
    """``{function: (recorded, current fingerprint)}`` for what ``cls``'s fast path mirrors."""
    return {label: (expected, fingerprint(fn)) for label, fn, expected in _PATHS[cls].functions()}


def _kernels_reason() -> str | None:
    return None if native.load() is not None else f"kernels unavailable ({native.load_error()})"


def decline(module: nn.Module, x: object) -> str | None:
    """Why ``module(x)`` takes its plain forward (rules 1-7 of the module docstring), or
    None when its fast path is to be tried. Raises what ``module.check_input`` raises."""
    path = _PATHS.get(type(module))
    if path is None:
        return f"no fast path for {type(module).__name__}"
    return _decline(path, module, x)


def _decline(path: FastPath, module: nn.Module, x: object) -> str | None:
    if not enabled():
        return "switched off (convattn.fast.use(False) or CONVATTN_FAST=0)"
    if type(x) is not torch.Tensor:
        return f"input is a {type(x).__name__}, not a plain torch.Tensor"
    if graph_capture():
        return "a graph is being recorded (trace, script, compile, export) or a dispatch mode is active"
    module.check_input(x)
    if not x.is_cpu:
        return f"input on {x.device}"
    if x.dtype not in _DTYPES:
        return f"input dtype {x.dtype}"
    if not x.is_contiguous():
        return "input not contiguous (e.g. channels-last)"
    if x.dim() - 2 not in path.dims:
        return f"{x.dim() - 2} spatial dims"
    if x.numel() == 0:
        return "empty input"
    if module._map_sink is not None:
        return "attention maps are being captured"
    return path.drift() or _kernels_reason()


def accelerate(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Y from ``module``'s fast path, or None when the plain forward is to run."""
    path = _PATHS.get(type(module))
    if path is None or _decline(path, module, x) is not None:
        return None
    y = path.run(module, x)
    return None if isinstance(y, str) else y


def path_of(module: nn.Module, x: torch.Tensor) -> str:
    """``"fast: <what it implements>"`` or ``"plain: <why>"`` for ``module(x)`` in the
    current autograd mode; runs the fast path once on a copy of ``x`` when the rules
    let it (a BatchNorm in training updates its statistics, as a call would)."""
    path = _PATHS.get(type(module))
    reason = decline(module, x)
    if reason is None:
        y = path.run(module, x.clone())
        if isinstance(y, str):
            reason = y
    return f"plain: {reason}" if reason else f"fast: {path.declares}"


def status(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """The path each attention module in ``model`` takes for the input ``x`` (one
    forward without autograd): ``{module path: "fast: ..." or "plain: ..."}``."""
    from ..layers.base import AttentionModule

    seen: dict[str, str] = {}
    handles = []

    def note(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = path_of(mod, args[0])

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, AttentionModule):
            handles.append(mod.register_forward_pre_hook(note(name or type(mod).__name__)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen
