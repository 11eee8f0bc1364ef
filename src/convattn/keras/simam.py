"""Keras layer of SimAM (``simam``, no parameters); the maths of :mod:`convattn.attention.simam`.

X (B, *S, C), N positions: d = (X - mean_S X)^2, v = sum_S d / max(N - 1, 1),
Y = X * sigmoid(d / (4 (v + lambda)) + 0.5).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, num_positions, spatial_axes
from .registry import register_layer


@register_layer("simam")
class SimAM(AttentionLayer):
    """SimAM (options as :class:`convattn.attention.simam.SimAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"e_lambda": module.e_lambda}

    def derive(self, module):
        return {"e_lambda": module.e_lambda}

    def attend(self, x, training):
        axes = spatial_axes(x)
        t = x - ops.mean(x, axis=axes, keepdims=True)
        d = t * t
        n = num_positions(x)
        v = ops.sum(d, axis=axes, keepdims=True) / (max(n - 1, 1) if isinstance(n, int) else ops.maximum(n - 1, 1.0))
        return x * ops.sigmoid(d / (4 * (v + self.cfg["e_lambda"])) + 0.5)
