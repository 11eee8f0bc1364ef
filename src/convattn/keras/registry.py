"""The Keras registry: one Keras layer class per key of the PyTorch registry.

``create_attention``, ``list_attention`` and ``describe`` mirror the PyTorch
functions of :mod:`convattn.registry` (same keys, options, defaults and
errors); the channels are not passed, they come from the input at ``build()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from ..registry import FAMILIES, get_spec
from ..registry import list_attention as _torch_list

_LAYERS: dict[str, type] = {}


def register_layer(name: str) -> Callable[[type], type]:
    """Class decorator: the Keras layer of PyTorch registry key ``name``."""
    get_spec(name)  # an unknown key is an error here already

    def deco(cls: type) -> type:
        if name in _LAYERS and _LAYERS[name] is not cls:
            raise ValueError(f"Keras attention {name!r} is already registered to {_LAYERS[name]}")
        cls.registry_name = name
        _LAYERS[name] = keras.saving.register_keras_serializable(package="convattn")(cls)
        return cls

    return deco


def get_layer_class(name: str) -> type:
    """The Keras class of ``name`` (ValueError for an unknown key or one without a Keras layer)."""
    if isinstance(name, str) and name in _LAYERS:
        return _LAYERS[name]
    get_spec(name)  # unknown: ValueError with suggestions
    raise ValueError(
        f"attention {name!r} is registered for PyTorch but has no Keras layer yet; "
        f"Keras layers: {', '.join(sorted(_LAYERS))}"
    )


def create_attention(key: str, /, **options: Any) -> keras.layers.Layer:
    """Build the Keras layer of registered attention ``key``; channels are inferred at build.

    ``options`` are the PyTorch module's (see :func:`describe`), plus
    ``data_format`` (``"channels_last"``, default, or ``"channels_first"``),
    ``dims`` (optional, checked against the input) and Keras' ``name``/``dtype``.
    """
    return get_layer_class(key)(**options)


def list_attention(family: str | None = None) -> list[str]:
    """Keys with a Keras layer, sorted, optionally of one family."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    return sorted(n for n in _LAYERS if family is None or get_spec(n).family == family)


def missing_layers() -> list[str]:
    """Keys of the PyTorch registry that have no Keras layer yet."""
    return sorted(set(_torch_list()) - set(_LAYERS))


def describe(name: str) -> dict[str, Any]:
    """As :func:`convattn.describe`, with ``class`` the Keras layer and ``torch_class`` the module."""
    cls = get_layer_class(name)
    d = get_spec(name).as_dict()
    d["torch_class"] = d["class"]
    d["class"] = f"{cls.__module__}.{cls.__qualname__}"
    d["defaults"] = {"data_format": "channels_last", **{k: v for k, v in d["defaults"].items() if k != "dims"}}
    return d
