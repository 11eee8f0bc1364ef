"""Keras layer of FcaNet's multi-spectral channel attention (``fca``); the maths of
:mod:`convattn.attention.fca`.

X (B, *S, C): y_c = sum_S x_c B_c (B_c the DCT-II filter of channel c's frequency
group), att = sigmoid(W2 relu(W1 y)) (no biases), Y = X * att.

The filters are constants of the input's spatial size (which must be static),
computed in float64 with NumPy from the same frequency tables, scaling and
clamping as the PyTorch module; with ``dct_size`` the adaptive average pooling
to ``dct_size`` is folded into the filters (both maps are linear).
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from ..attention.fca import fca_frequency_nd
from .base import AttentionLayer, expand_channel, spatial_axes
from .registry import register_layer
from .se import mlp


def dct_1d(n: int, u: int) -> np.ndarray:
    """Orthonormal DCT-II basis vector of length n at frequency u (float64)."""
    t = np.arange(n, dtype=np.float64)
    b = np.cos(math.pi * u * (t + 0.5) / n) / math.sqrt(n)
    return b * math.sqrt(2.0) if u > 0 else b


def adaptive_pool_matrix(n: int, m: int) -> np.ndarray:
    """The (m, n) matrix of a 1-D adaptive average pool from n to m points."""
    out = np.zeros((m, n))
    for i in range(m):
        start, end = (i * n) // m, -((-(i + 1) * n) // m)
        out[i, start:end] = 1.0 / (end - start)
    return out


def fca_filters(freqs, groups, size: tuple[int, ...], dct_size=None) -> np.ndarray:
    """The per-channel filters (C, prod(size)) in float64."""
    used = freqs[: groups[-1] + 1]
    nd = len(size)
    target = size
    if dct_size is not None:
        target = (dct_size,) * nd if isinstance(dct_size, int) else tuple(dct_size)
    rows = []
    for f in used:
        placed = fca_frequency_nd(f, target)
        out = np.ones(())
        for n, m, u in zip(size, target, placed, strict=True):
            b = dct_1d(m, u)
            if m != n:
                b = b @ adaptive_pool_matrix(n, m)
            out = out[..., None] * b
        rows.append(out.reshape(-1))
    return np.stack(rows)[np.asarray(groups)]


@register_layer("fca")
class FcaNet(AttentionLayer):
    """Multi-spectral channel attention (options as :class:`convattn.attention.fca.FcaNet`)."""

    @classmethod
    def options_from_torch(cls, module):
        opts = {"hidden": module.fc1.out_features, "freq_sel": module.freq_sel}
        if module.dct_size is not None:
            opts["dct_size"] = module.dct_size
        return opts

    def derive(self, module):
        return {"freqs": [tuple(f) for f in module.freqs], "groups": list(module.groups), "dct_size": module.dct_size}

    def attend(self, x, training):
        size = tuple(x.shape[1:-1])
        if any(s is None for s in size):
            raise ValueError(f"{self._owner()}: the spatial size must be static (the DCT filters depend on it); "
                             f"got shape {tuple(x.shape)}")
        if self.cfg["dct_size"] is not None:
            ds = self.cfg["dct_size"]
            target = (ds,) * len(size) if isinstance(ds, int) else tuple(ds)
            if len(target) != len(size):
                raise ValueError(
                    f"{self._owner()}: dct_size={ds!r} has {len(target)} dims but the input "
                    f"has {len(size)} spatial dims (shape {tuple(x.shape)})"
                )
        filt = fca_filters(self.cfg["freqs"], self.cfg["groups"], size, self.cfg["dct_size"])
        filt = np.ascontiguousarray(filt.T.reshape(size + (self.channels,)))
        y = ops.sum(x * ops.convert_to_tensor(filt.astype(np.float32), dtype=x.dtype), axis=spatial_axes(x))
        return x * expand_channel(ops.sigmoid(mlp(self, "fc1", "fc2", y, bias=False)), self.nd)

