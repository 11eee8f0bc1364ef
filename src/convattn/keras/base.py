"""The base Keras layer of ``convattn.keras`` and the ``keras.ops`` helpers the layers share.

Every layer is one registered key of the PyTorch registry. At ``build()`` the
layer learns its channels from the input shape and asks the PyTorch class for
everything the options determine (hidden widths, kernel sizes, BatchNorm
momentum and eps...): the PyTorch constructor is run once, with the layer's
options and the inferred channels, so the options, their defaults, their
validation and their error messages are those of the PyTorch module by
construction. Its state dict then gives the layer's variables, one per entry,
with the same name, the same shape (the PyTorch layout: a Linear weight is
(out, in), a ConvNd weight (out, in / groups, *k)) and the same initial values,
so that :func:`convattn.keras.from_torch` and :func:`convattn.keras.to_torch`
copy arrays unchanged. The PyTorch module is not kept; the forward is written in
``keras.ops`` only, in the channels-last layout (B, *S, C); a channels-first
input is moved to channels-last on entry and back on exit.

BatchNorm follows PyTorch's convention: ``momentum`` m updates
``running = (1 - m) running + m batch`` with the unbiased batch variance, the
output uses the biased one; ``num_batches_tracked`` is counted as well.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from ..layers.base import _join_or
from ..registry import create_attention as _torch_create
from ..registry import get_spec

_KERAS_KWARGS = ("name", "dtype", "trainable", "autocast", "input_dim", "input_shape", "batch_input_shape")
DATA_FORMATS = ("channels_last", "channels_first")


class AttentionLayer(keras.layers.Layer):
    """Base class of the Keras attention layers.

    Subclasses set ``registry_name`` (a key of the PyTorch registry) and write
    ``attend(x, training)`` on a channels-last input (B, *S, C); they may read
    ``self.channels``, ``self.nd`` (spatial dims), ``self.cfg`` (what ``derive``
    took from the PyTorch module) and ``self.v(name)`` (the variable of PyTorch
    state-dict entry ``name``).

    Args:
        data_format: ``"channels_last"`` (default, (B, *S, C)) or
            ``"channels_first"`` ((B, C, *S), PyTorch's layout).
        dims: number of spatial dims; optional (inferred from the input), checked
            against the input when given.
        **options: the options of the PyTorch module of the same key, with the
            same names and defaults (see :func:`convattn.keras.describe`).
    """

    registry_name: str = ""

    def __init__(self, data_format: str = "channels_last", dims: int | None = None, **kwargs: Any) -> None:
        keras_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _KERAS_KWARGS}
        spec = get_spec(self.registry_name)
        unknown = sorted(set(kwargs) - set(spec.defaults) - {"dims"})
        if unknown:
            valid = ", ".join(k for k in spec.defaults if k != "dims") or "none"
            raise TypeError(
                f"{self._owner()}: unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; valid options: {valid}"
            )
        if data_format not in DATA_FORMATS:
            raise ValueError(
                f"{self._owner()}: data_format must be one of {', '.join(map(repr, DATA_FORMATS))}, "
                f"got {data_format!r}"
            )
        if dims is not None and (isinstance(dims, bool) or dims not in spec.dims):
            raise ValueError(f"{self.registry_name}: dims={dims!r} is not supported; valid: {', '.join(map(str, spec.dims))}")
        super().__init__(**keras_kwargs)
        self.data_format = data_format
        self.dims = dims
        self._options = dict(kwargs)
        self._var_names: list[str] = []
        self.channels: int | None = None
        self.nd: int | None = None
        self.cfg: dict[str, Any] = {}

    # ----------------------------------------------------------------- naming
    @classmethod
    def _owner(cls) -> str:
        return f"{cls.__name__} ({cls.registry_name})"

    @property
    def options(self) -> dict[str, Any]:
        """The options given at construction (defaults not included)."""
        return dict(self._options)

    # ----------------------------------------------------------------- building
    def _shape_error(self, shape) -> ValueError:
        spec = get_spec(self.registry_name)
        c = self.channels if self.channels is not None else "C"
        if self.nd is not None:
            dims_text = f"{self.nd} spatial dim{'s' if self.nd > 1 else ''} (built for {self.nd})"
        elif self.dims is not None:
            dims_text = f"{self.dims} spatial dim{'s' if self.dims > 1 else ''} (dims={self.dims})"
        else:
            dims_text = _join_or(spec.dims) + " spatial dims"
        layout = f"(B, ..., {c})" if self.data_format == "channels_last" else f"(B, {c}, ...)"
        return ValueError(
            f"{self._owner()}: expected input {layout} ({self.data_format}) with {dims_text}; "
            f"got shape {tuple(shape)}"
        )

    def build(self, input_shape) -> None:
        shape = tuple(input_shape)
        spec = get_spec(self.registry_name)
        nd = len(shape) - 2
        if nd not in spec.dims or (self.dims is not None and nd != self.dims):
            raise self._shape_error(shape)
        c = shape[-1] if self.data_format == "channels_last" else shape[1]
        if c is None:
            raise ValueError(f"{self._owner()}: the channel axis of the input must be known at build time; got shape {shape}")
        module = _torch_create(self.registry_name, int(c), dims=nd, **self._options)
        self.channels, self.nd = int(c), nd
        self.cfg = self.derive(module)
        params = dict(module.named_parameters())
        for name, t in module.state_dict().items():
            value = t.detach().cpu().numpy().copy()  # a copy: JAX on CPU may alias a NumPy buffer
            integer = not np.issubdtype(value.dtype, np.floating)
            var = self.add_weight(
                name=name.replace(".", "__"),
                shape=value.shape,
                dtype="int32" if integer else self.variable_dtype,
                initializer="zeros",
                trainable=name in params,
            )
            var.assign(value.astype(np.int32) if integer else value)
            self._var_names.append(name)
            # kept outside Keras' attribute tracking (add_weight tracks the variable already)
            self.__dict__.setdefault("_by_name", {})[name] = var
        self.built = True

    def derive(self, module) -> dict[str, Any]:
        """The configuration the forward needs, read from the PyTorch module (override)."""
        return {}

    @classmethod
    def options_from_torch(cls, module) -> dict[str, Any]:
        """Options that rebuild ``module``'s structure (override; used by ``from_torch``)."""
        return {}

    def v(self, name: str):
        """The variable of PyTorch state-dict entry ``name``."""
        return self.__dict__["_by_name"][name]

    def weights_by_name(self) -> dict[str, Any]:
        """{PyTorch state-dict name: variable}, in the state dict's order."""
        return dict(self.__dict__.get("_by_name", {}))

    # ----------------------------------------------------------------- calling
    def call(self, x, training=None):
        shape = tuple(x.shape)
        nd = len(shape) - 2
        c = shape[-1] if self.data_format == "channels_last" else (shape[1] if len(shape) > 1 else None)
        if nd != self.nd or (c is not None and c != self.channels):
            raise self._shape_error(shape)
        training = bool(training)
        if self.data_format == "channels_first":
            x = ops.moveaxis(x, 1, -1)
            return ops.moveaxis(self.attend(x, training), -1, 1)
        return self.attend(x, training)

    def attend(self, x, training: bool):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"data_format": self.data_format, "dims": self.dims, **self._options})
        return config


# --------------------------------------------------------------------- ops helpers


def spatial_axes(x) -> tuple[int, ...]:
    """The spatial axes of a channels-last tensor (B, *S, C)."""
    return tuple(range(1, len(x.shape) - 1))


def expand_channel(s, nd: int):
    """(B, C) -> (B, 1, ..., 1, C) with ``nd`` singleton spatial axes."""
    return ops.reshape(s, (-1,) + (1,) * nd + (s.shape[-1],))


def linear(x, w, b=None):
    """x @ W^T + b over the last axis; W in the PyTorch layout (out, in)."""
    y = ops.matmul(x, ops.transpose(w))
    return y + b if b is not None else y


def _pads(nd: int, padding) -> list:
    p = (padding,) * nd if isinstance(padding, int) else tuple(padding)
    return [(0, 0)] + [(q, q) for q in p] + [(0, 0)]


def conv(x, w, b=None, stride=1, padding=0, dilation=1, pad_mode: str = "zeros"):
    """A ConvNd (groups = 1) on channels-last x with a PyTorch-layout kernel (O, I, *k).

    Zero padding ``padding`` per side (an int or one per spatial dim) as PyTorch's;
    ``pad_mode="circular"`` wraps instead.
    """
    nd = len(x.shape) - 2
    if padding:
        x = ops.pad(x, _pads(nd, padding)) if pad_mode == "zeros" else circular_pad(x, padding)
    kernel = ops.transpose(w, tuple(range(2, 2 + nd)) + (1, 0))
    y = ops.conv(x, kernel, strides=stride, padding="valid", data_format="channels_last", dilation_rate=dilation)
    return y + b if b is not None else y


def circular_pad(x, padding: int):
    """Wrap-around padding of ``padding`` on both sides of every spatial axis."""
    for axis in spatial_axes(x):
        n = x.shape[axis]
        idx_l = ops.arange(n - padding, n)
        idx_r = ops.arange(0, padding)
        x = ops.concatenate([ops.take(x, idx_l, axis=axis), x, ops.take(x, idx_r, axis=axis)], axis=axis)
    return x


def depthwise_conv(x, w, stride=1, padding=0, dilation=1):
    """A depthwise ConvNd (groups = C, no bias) on channels-last x; kernel (C, 1, *k).

    Written as a sum of shifted, strided slices times the taps (plain ops, any
    number of spatial dims, every backend).
    """
    nd = len(x.shape) - 2
    if padding:
        x = ops.pad(x, _pads(nd, padding))
    k = tuple(w.shape[2:])
    sizes = x.shape[1:-1]
    out = [(n - dilation * (kk - 1) - 1) // stride + 1 for n, kk in zip(sizes, k, strict=True)]
    taps = ops.transpose(ops.reshape(w, (w.shape[0], -1)))  # (prod k, C)
    y = None
    for t, offset in enumerate(np.ndindex(*k)):
        idx = (slice(None),) + tuple(
            slice(o * dilation, o * dilation + stride * (m - 1) + 1, stride) for o, m in zip(offset, out, strict=True)
        ) + (slice(None),)
        term = x[idx] * taps[t]
        y = term if y is None else y + term
    return y


def batch_norm(layer: AttentionLayer, prefix: str, x, training: bool, momentum: float, eps: float, axes=None):
    """PyTorch's BatchNorm over every axis but the last (or ``axes``), with its running-stat update."""
    axes = tuple(range(len(x.shape) - 1)) if axes is None else axes
    w, b = layer.v(f"{prefix}.weight"), layer.v(f"{prefix}.bias")
    rm, rv = layer.v(f"{prefix}.running_mean"), layer.v(f"{prefix}.running_var")
    if training:
        mean = ops.mean(x, axis=axes)
        var = ops.mean(ops.square(x - mean), axis=axes)
        sizes = [x.shape[a] for a in axes]
        if all(s is not None for s in sizes):
            n = math.prod(sizes)
            unbias = n / max(n - 1, 1)
        else:  # a dynamic batch (a graph traced for any batch size)
            shape = ops.shape(x)
            n = ops.cast(math.prod([shape[a] for a in axes]), x.dtype)
            unbias = n / ops.maximum(n - 1, 1)
        rm.assign((1 - momentum) * rm + momentum * ops.stop_gradient(mean))
        rv.assign((1 - momentum) * rv + momentum * ops.stop_gradient(var) * unbias)
        nbt = layer.v(f"{prefix}.num_batches_tracked")
        nbt.assign(nbt + 1)
    else:
        mean, var = rm, rv
    return (x - mean) / ops.sqrt(var + eps) * w + b


def bn_config(bn) -> dict[str, float]:
    """momentum and eps of a PyTorch BatchNorm."""
    return {"momentum": float(bn.momentum), "eps": float(bn.eps)}


def group_norm(x, groups: int, weight, bias, eps: float):
    """PyTorch's GroupNorm on channels-last x (B, *S, C): statistics per group of channels."""
    shape = ops.shape(x)
    c = x.shape[-1]
    g = ops.reshape(x, (shape[0], -1, groups, c // groups))
    mean = ops.mean(g, axis=(1, 3), keepdims=True)
    var = ops.mean(ops.square(g - mean), axis=(1, 3), keepdims=True)
    g = (g - mean) / ops.sqrt(var + eps)
    return ops.reshape(g, shape) * weight + bias


def layer_norm(x, weight, bias, eps: float):
    """PyTorch's LayerNorm over the last axis."""
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) / ops.sqrt(var + eps) * weight + bias


def max_pool_by_two(x):
    """Max-pool by 2 in every spatial dim, ceil mode (an odd size keeps its last slice)."""
    nd = len(x.shape) - 2
    pads = [(0, 0)] + [(0, n % 2) for n in x.shape[1:-1]] + [(0, 0)]
    if any(p[1] for p in pads):
        x = ops.pad(x, pads, constant_values=-np.inf)
    return ops.max_pool(x, (2,) * nd, strides=(2,) * nd, padding="valid", data_format="channels_last")


def num_positions(x):
    """prod(S) of a channels-last x: a Python int when the spatial shape is static."""
    sizes = x.shape[1:-1]
    if all(s is not None for s in sizes):
        return math.prod(sizes)
    shape = ops.shape(x)
    n = 1
    for a in range(1, len(sizes) + 1):
        n = n * shape[a]
    return ops.cast(n, x.dtype)


def reduction_for(channels: int, width: int):
    """A ``reduction`` with ``channels // reduction == width`` (an int when it divides)."""
    if channels % width == 0:
        return channels // width
    r = channels / width
    return r if int(channels // r) == width else (channels + 0.5) / width
