"""Weights both ways: :func:`from_torch` and :func:`to_torch`.

The Keras layers keep one variable per PyTorch state-dict entry, with the same
name, shape and layout, so a conversion copies arrays: parameters, BatchNorm
running statistics and ``num_batches_tracked`` alike, bit for bit.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import torch
from torch import nn

from ..registry import create_attention as _torch_create
from .base import AttentionLayer
from .registry import get_layer_class


def _input_shape(channels: int, nd: int, data_format: str) -> tuple:
    return (None,) + ((None,) * nd + (channels,) if data_format == "channels_last" else (channels,) + (None,) * nd)


def _module_dims(module: nn.Module) -> int:
    dims = getattr(module, "dims", None)
    if dims is not None:
        return dims
    return 2 if 2 in type(module).supported_dims else type(module).supported_dims[0]


def from_torch(module: nn.Module, data_format: str = "channels_last", dims: int | None = None,
               name: str | None = None) -> AttentionLayer:
    """The Keras layer equivalent to the registered PyTorch attention ``module``, with its weights.

    The layer is built for ``module.channels`` and ``dims`` spatial dims (default:
    the module's own dims if it was built for one, else 2); every parameter and
    buffer of the state dict is copied.
    """
    key = getattr(module, "registry_name", "")
    if not isinstance(module, nn.Module) or not key:
        raise ValueError(
            f"from_torch: expected a registered convattn attention module (convattn.create_attention(...)), "
            f"got {type(module).__name__}"
        )
    cls = get_layer_class(key)
    nd = dims if dims is not None else _module_dims(module)
    options = cls.options_from_torch(module)
    kwargs: dict[str, Any] = {"data_format": data_format, **options}
    if name is not None:
        kwargs["name"] = name
    layer = cls(**kwargs)
    layer.build(_input_shape(module.channels, nd, data_format))
    load_torch_state(layer, module.state_dict())
    return layer


def load_torch_state(layer: AttentionLayer, state: dict[str, torch.Tensor]) -> None:
    """Copy a PyTorch state dict into a built layer (every entry must match by name and shape)."""
    own = layer.weights_by_name()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{layer._owner()}: the state dict does not fit the layer; missing {missing}, unexpected {unexpected}"
        )
    for k, var in own.items():
        value = state[k].detach().cpu().numpy().copy()  # never alias the PyTorch tensor
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{layer._owner()}: {k} has shape {tuple(value.shape)}, the layer {tuple(var.shape)}")
        var.assign(value.astype(var.dtype) if not np.issubdtype(value.dtype, np.floating) else value)


def torch_state(layer: AttentionLayer) -> dict[str, torch.Tensor]:
    """The layer's variables as a PyTorch state dict (float32 stays float32; counters int64)."""
    out = {}
    for k, var in layer.weights_by_name().items():
        a = np.asarray(keras.ops.convert_to_numpy(var.value))
        out[k] = torch.from_numpy(a.astype(np.int64) if not np.issubdtype(a.dtype, np.floating) else a.copy())
    return out


def to_torch(layer: AttentionLayer) -> nn.Module:
    """The PyTorch module equivalent to a built Keras attention layer, with its weights."""
    if not isinstance(layer, AttentionLayer):
        raise ValueError(f"to_torch: expected a convattn.keras attention layer, got {type(layer).__name__}")
    if not layer.built:
        raise ValueError(f"to_torch: {layer._owner()} is not built yet (call it on an input, or layer.build(shape))")
    module = _torch_create(layer.registry_name, layer.channels, dims=layer.nd, **layer.options)
    module.load_state_dict(torch_state(layer), strict=True)
    return module
