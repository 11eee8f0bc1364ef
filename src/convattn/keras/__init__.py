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

Parity: on random weights, every layer's outputs agree with its PyTorch module's
within 1e-5 (float32; relative to max(1, max |y|)) on the PyTorch, TensorFlow and
JAX backends, in inference and in training mode (BatchNorm batch statistics,
and the same running-statistics update); ``to_torch(from_torch(m))`` has
bit-identical weights.

How the layers are made (see :mod:`convattn.keras.base`): at ``build()`` the
PyTorch module of the key is constructed once with the inferred channels and the
layer's options, so validation, error messages and every derived width are the
PyTorch module's; its state dict gives the variables (same names, PyTorch
layouts, its initial values: seed with ``torch.manual_seed`` for reproducible
inits). Limits: the self-attention layers (``pam``, ``danet``, ``nonlocal``,
``sagan``, ``pam_gate``) always hold the N x N score matrix (``path`` is
accepted and ignored); ``fca``, ``ge`` with an extent or a parametric gather,
the depthwise strip convs (``ela``, ``strip``) and the ceil-mode pooling of
``nonlocal``/``sagan`` need the spatial size to be static when a graph is traced.
"""

from __future__ import annotations

import importlib
import pkgutil

try:
    import keras  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError('convattn.keras needs Keras 3: pip install "convattn[keras]"') from e

from .base import AttentionLayer
from .convert import from_torch, to_torch
from .registry import create_attention, describe, get_layer_class, list_attention, missing_layers

# one file per mechanism family (as convattn.attention); importing it registers its layers
_INFRASTRUCTURE = {"attach", "base", "convert", "registry"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if not _info.name.startswith("_") and _info.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_info.name}")

from .attach import IdentityInit, attach, insertion_points  # noqa: E402

__all__ = [
    "AttentionLayer",
    "IdentityInit",
    "attach",
    "create_attention",
    "describe",
    "from_torch",
    "get_layer_class",
    "insertion_points",
    "list_attention",
    "missing_layers",
    "to_torch",
]
