"""Keras 3 layers of the convattn attention modules (TensorFlow, JAX and PyTorch backends).

``pip install "convattn[keras]"``. One ``keras.layers.Layer`` per registered key,
written in ``keras.ops`` only; the same keys, options, defaults and errors as the
PyTorch modules (:func:`create_attention`, :func:`list_attention`,
:func:`describe`), channels inferred in ``build()``, ``channels_last`` by default
(``data_format="channels_first"`` accepted). Weights move both ways with
:func:`from_torch` / :func:`to_torch`; :func:`attach` puts attention into a
functional Keras model (``keras.applications`` ResNet50, ResNet50V2,
MobileNetV2, EfficientNetB0, or a user's CNN).

One file per mechanism family, as :mod:`convattn.attention`: ``keras/se.py`` is
the Keras layer of ``attention/se.py``.
"""

from __future__ import annotations

import importlib

try:
    import keras  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError('convattn.keras needs Keras 3: pip install "convattn[keras]"') from e

from .base import AttentionLayer
from .convert import from_torch, to_torch
from .registry import create_attention, describe, get_layer_class, list_attention, missing_layers

_FILES = (
    "bam", "cbam", "coord", "danet", "eca", "ela", "ema", "fca", "gc", "gct", "ge", "nonlocal_block",
    "pam_gate", "sagan", "scse", "se", "seed_gates", "simam", "srm", "strip", "triplet",
)
for _name in _FILES:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # a family without a Keras file yet
        if _e.name != f"{__name__}.{_name}":
            raise

from .attach import IdentityInit, attach  # noqa: E402

__all__ = [
    "AttentionLayer",
    "IdentityInit",
    "attach",
    "create_attention",
    "describe",
    "from_torch",
    "get_layer_class",
    "list_attention",
    "missing_layers",
    "to_torch",
]
