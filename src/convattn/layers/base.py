"""The base class every convattn module derives from, and width helpers."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor`` (the MobileNet/timm convention).

    The result is at least ``min_value`` (default ``divisor``) and never below
    ``round_limit * v``.
    """
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def check_channels(owner: str, channels: Any) -> int:
    """Validate a channel count (a positive integral number, e.g. an int or a numpy
    integer) and return it as an int."""
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"{owner}: channels must be a positive int, got {channels!r}")
    return int(channels)


def check_groups(owner: str, channels: int, groups: Any) -> int:
    """Validate a channel-group count that must divide ``channels``; the error lists the groups that fit."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{owner}: groups must be a positive int, got {groups!r}")
    if channels % groups:
        valid = [g for g in range(1, min(channels, 64) + 1) if channels % g == 0]
        raise ValueError(
            f"{owner}: channels={channels} is not a multiple of groups={groups}; "
            f"valid groups for {channels} channels: {', '.join(map(str, valid))}"
        )
    return groups


def hidden_channels(
    owner: str,
    channels: int,
    reduction: float | None,
    hidden: int | None = None,
    min_hidden: int = 1,
) -> int:
    """Width of a bottleneck ``channels -> hidden -> channels``.

    ``hidden`` wins when given; otherwise ``max(channels // reduction, min_hidden)``
    as the official SE code computes it (no rounding to multiples of 8). A width
    of 0 is an error that says which reductions are valid.
    """
    if hidden is not None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"{owner}: hidden must be a positive int, got {hidden!r}")
        return hidden
    if reduction is None or isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
        raise ValueError(f"{owner}: reduction must be a positive number, got {reduction!r}")
    width = int(channels // reduction)
    width = max(width, min_hidden) if min_hidden > 1 else width
    if width < 1:
        raise ValueError(
            f"{owner}: reduction={reduction} leaves 0 hidden channels for channels={channels}; "
            f"valid: reduction <= {channels} (or pass hidden=...)"
        )
    return width


def _join_or(values: tuple[int, ...]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


#: the accelerator :mod:`convattn.fast` installs: ``(module, x) -> Tensor | None``,
#: None when the module's own forward is to run
_accelerator: Callable[[nn.Module, torch.Tensor], torch.Tensor | None] | None = None


def install_accelerator(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor | None] | None) -> None:
    """Set the function every :class:`AttentionModule` forward asks first (see the class)."""
    global _accelerator
    _accelerator = fn


def _offer_to_accelerator(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` preceded by one question to the installed accelerator."""

    @functools.wraps(forward)
    def dispatch(self: nn.Module, x: Any, *args: Any, **kwargs: Any) -> Any:
        accelerate = _accelerator
        if accelerate is not None and not args and not kwargs:
            y = accelerate(self, x)
            if y is not None:
                return y
        return forward(self, x, *args, **kwargs)

    dispatch.plain_forward = forward  # type: ignore[attr-defined]
    return dispatch


class AttentionModule(nn.Module):
    """Base class of the zoo: input checks and attention-map recording.

    Subclasses call ``super().__init__(channels, dims)`` (``dims`` only when their
    parameters depend on it), start ``forward`` with ``self.check_input(x)`` and
    call ``self.record(kind, tensor)`` for each gate they apply. ``record`` does
    nothing unless :func:`convattn.capture_maps` is active, so recording costs one
    attribute test per forward when it is off.

    ``forward`` is the module's maths in standard PyTorch ops. Before it runs, the
    accelerator installed by :mod:`convattn.fast` (if any) is offered the call; it
    returns a result only when a fast implementation registered for exactly this
    class accepts the input, and None otherwise. ``type(m).forward.plain_forward``
    is the forward as written.
    """

    #: set by ``register``
    registry_name: str = ""
    supported_dims: tuple[int, ...] = (1, 2, 3)
    #: set per instance by ``capture_maps``; a class attribute keeps lookups cheap
    _map_sink: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every module accepts the factory kwargs ``device``/``dtype`` that timm
        # passes to ``attn_layer(channels, device=..., dtype=...)``.
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is not None and not hasattr(forward, "plain_forward"):
            cls.forward = _offer_to_accelerator(forward)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_takes_factory_kwargs", False):
            return

        @functools.wraps(init)
        def __init__(self, *args: Any, device: Any = None, dtype: Any = None, **kw: Any) -> None:
            init(self, *args, **kw)
            if (device is not None or dtype is not None) and type(self) is cls:
                self.to(device=device, dtype=dtype)

        __init__._takes_factory_kwargs = True
        cls.__init__ = __init__

    def __init__(self, channels: int, dims: int | None = None) -> None:
        super().__init__()
        self.channels = check_channels(self._owner(), channels)
        if dims is not None and (isinstance(dims, bool) or dims not in self.supported_dims):
            valid = ", ".join(map(str, self.supported_dims))
            raise ValueError(f"{self._owner()}: dims={dims!r} is not supported; valid: {valid}")
        self.dims = dims

    def _owner(self) -> str:
        name = self.registry_name or type(self).__name__
        return f"{type(self).__name__} ({name})" if self.registry_name else name

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (B, channels, *spatial) with supported dims
        (TypeError unless it is a tensor)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._owner()}: expected a torch.Tensor of shape (B, {self.channels}, ...), "
                            f"got {type(x).__name__} (convert it with torch.as_tensor)")
        nd = x.dim() - 2
        ok_dims = nd == self.dims if self.dims is not None else nd in self.supported_dims
        # (under jit.trace, x.shape[1] is traced: comparing it would warn, and the
        # trace holds the example's shape anyway)
        if not ok_dims or (not torch.jit.is_tracing() and x.shape[1] != self.channels):
            if self.dims is not None:
                dims_text = f"{self.dims} spatial dim{'s' if self.dims > 1 else ''} (built with dims={self.dims})"
            else:
                dims_text = _join_or(self.supported_dims) + " spatial dims"
            raise ValueError(
                f"{self._owner()}: expected input (B, {self.channels}, ...) with {dims_text}; "
                f"got shape {tuple(x.shape)}"
            )

    def record(self, kind: str, value: torch.Tensor) -> None:
        sink = self._map_sink
        if sink is not None:
            sink.put(kind, value)

    def extra_repr(self) -> str:
        s = f"channels={self.channels}"
        if self.dims is not None:
            s += f", dims={self.dims}"
        return s
