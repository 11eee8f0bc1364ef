"""Attention-map capture.

Usage::

    with capture_maps(model) as maps:
        model(x)
    maps["layer1.0.cbam.spatial"]["spatial"]   # (B, H, W)

Inside the context every convattn module in ``model`` records the gates it
applied in its last forward, keyed by its path in the model (``named_modules``)
and by kind. Conventions for kinds:

- ``"channel"``: channel weights, shape (B, C);
- ``"spatial"``: a spatial map, shape (B, *spatial);
- anything else a module documents (``"channel_matrix"`` (B, C, C), ...).

Outside the context, modules do no extra work (a single attribute test).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .layers.base import AttentionModule


class AttentionMaps(dict):
    """``{module path: {kind: tensor}}`` filled by :func:`capture_maps`."""

    def of_kind(self, kind: str) -> dict[str, torch.Tensor]:
        """``{path: tensor}`` for every module that recorded ``kind``."""
        return {p: d[kind] for p, d in self.items() if kind in d}


class _Sink:
    __slots__ = ("store", "path", "detach", "options")

    def __init__(self, store: AttentionMaps, path: str, detach: bool, options: dict[str, Any]):
        self.store = store
        self.path = path
        self.detach = detach
        self.options = options

    def put(self, kind: str, value: torch.Tensor) -> None:
        if self.detach:
            value = value.detach()
        self.store.setdefault(self.path, {})[kind] = value


@contextmanager
def capture_maps(model: nn.Module, *, detach: bool = True, **options: Any) -> Iterator[AttentionMaps]:
    """Record the attention maps of every convattn module in ``model``.

    ``detach=False`` keeps the maps in the autograd graph (for map losses or
    gradient-based explanations). Extra keyword options are handed to the modules
    (for example ``query=`` for the position-attention modules, documented there).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture_maps: expected an nn.Module, got {type(model).__name__}")
    store = AttentionMaps()
    touched = []
    for path, m in model.named_modules():
        if isinstance(m, AttentionModule):
            touched.append((m, m.__dict__.get("_map_sink")))
            m._map_sink = _Sink(store, path or type(m).__name__, detach, options)
    try:
        yield store
    finally:
        for m, previous in touched:
            if previous is None:
                m.__dict__.pop("_map_sink", None)
            else:
                m._map_sink = previous
