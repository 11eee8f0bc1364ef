"""Keras layer of Spatial Group-wise Enhance (``sge``); the maths of :mod:`convattn.attention.sge`.

X (B, *S, C) in G groups of m = C / G channels: t = sum_c X_g[c] mean_S X_g[c] (B, *S, G);
t^ = (t - mean_S t) / (std_S t + eps) (unbiased std); Y_g = X_g * sigmoid(w_g t^ + b_g).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, num_positions, spatial_axes
from .registry import register_layer


@register_layer("sge")
class SpatialGroupEnhance(AttentionLayer):
    """Spatial group-wise enhance (options as :class:`convattn.attention.sge.SpatialGroupEnhance`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"groups": module.groups, "eps": module.eps}

    def derive(self, module):
        return {"groups": module.groups, "eps": module.eps}

    def attend(self, x, training):
        g = self.cfg["groups"]
        shape = ops.shape(x)
        axes = spatial_axes(x)
        xg = ops.reshape(x, tuple(shape[:-1]) + (g, self.channels // g))  # (B, *S, G, m)
        t = ops.sum(xg * ops.mean(xg, axis=axes, keepdims=True), axis=-1)  # (B, *S, G)
        centred = t - ops.mean(t, axis=axes, keepdims=True)
        n = num_positions(x)
        denom = max(n - 1, 1) if isinstance(n, int) else ops.maximum(n - 1, 1.0)
        std = ops.sqrt(ops.sum(centred * centred, axis=axes, keepdims=True) / denom)
        a = ops.sigmoid(centred / (std + self.cfg["eps"]) * self.v("weight") + self.v("bias"))
        return ops.reshape(xg * a[..., None], shape)
