"""Keras layer of Gated Channel Transformation (``gct``); the maths of :mod:`convattn.attention.gct`.

X (B, *S, C): l2: s = alpha sqrt(sum_S x^2 + eps), s^ = gamma s / sqrt(mean_C s^2 + eps);
l1: s = alpha sum_S |x|, s^ = gamma s / (mean_C |s| + eps); Y = X * (1 + tanh(s^ + beta)).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, spatial_axes
from .registry import register_layer


@register_layer("gct")
class GCT(AttentionLayer):
    """Gated channel transformation (options as :class:`convattn.attention.gct.GCT`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"mode": module.mode, "eps": module.eps}

    def derive(self, module):
        return {"mode": module.mode, "eps": module.eps}

    def attend(self, x, training):
        axes, eps = spatial_axes(x), self.cfg["eps"]
        alpha, gamma, beta = self.v("alpha"), self.v("gamma"), self.v("beta")
        if self.cfg["mode"] == "l2":
            s = alpha * ops.sqrt(ops.sum(ops.square(x), axis=axes) + eps)
            norm = gamma / ops.sqrt(ops.mean(ops.square(s), axis=1, keepdims=True) + eps)
        else:
            s = alpha * ops.sum(ops.abs(x), axis=axes)
            norm = gamma / (ops.mean(ops.abs(s), axis=1, keepdims=True) + eps)
        return x * expand_channel(1.0 + ops.tanh(s * norm + beta), self.nd)
