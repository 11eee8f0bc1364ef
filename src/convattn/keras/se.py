"""Keras layer of Squeeze-and-Excitation (``se``); the maths of :mod:`convattn.attention.se`.

X (B, *S, C): z = GAP(X) (B, C); s = sigmoid(W2 relu(W1 z + b1) + b2); Y = X * s.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, linear, spatial_axes
from .registry import register_layer


def mlp(layer, prefix1: str, prefix2: str, z, bias: bool = True):
    """W2 relu(W1 z + b1) + b2 over the last axis, from the variables ``prefix1``/``prefix2``."""
    b1 = layer.v(f"{prefix1}.bias") if bias else None
    b2 = layer.v(f"{prefix2}.bias") if bias else None
    return linear(ops.relu(linear(z, layer.v(f"{prefix1}.weight"), b1)), layer.v(f"{prefix2}.weight"), b2)


@register_layer("se")
class SE(AttentionLayer):
    """Squeeze-and-Excitation channel gate (options as :class:`convattn.attention.se.SE`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features}

    def attend(self, x, training):
        s = ops.sigmoid(mlp(self, "fc1", "fc2", ops.mean(x, axis=spatial_axes(x))))
        return x * expand_channel(s, self.nd)
