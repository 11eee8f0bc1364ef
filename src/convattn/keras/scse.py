"""Keras layers of sSE and scSE (``sse``, ``scse``); the maths of :mod:`convattn.attention.scse`.

X (B, *S, C): q = sigmoid(w . X + b) (B, *S, 1); s = sigmoid(W2 relu(W1 GAP X + b1) + b2)
(B, C); sse: Y = X * q; scse: Y = max(X s, X q) (merge="max", a tie takes the
cSE branch) or X s + X q (merge="sum").
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, linear, spatial_axes
from .registry import register_layer
from .se import mlp


def sse_gate(layer, x):
    """q (B, *S, 1) from ``proj``."""
    return ops.sigmoid(linear(x, layer.v("proj.weight"), layer.v("proj.bias")))


@register_layer("sse")
class SSE(AttentionLayer):
    """Spatial squeeze & channel excitation (no options)."""

    def attend(self, x, training):
        return x * sse_gate(self, x)


@register_layer("scse")
class SCSE(AttentionLayer):
    """Concurrent spatial and channel squeeze & excitation (options as
    :class:`convattn.attention.scse.SCSE`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features, "merge": module.merge}

    def derive(self, module):
        return {"merge": module.merge}

    def attend(self, x, training):
        s = expand_channel(ops.sigmoid(mlp(self, "fc1", "fc2", ops.mean(x, axis=spatial_axes(x)))), self.nd)
        q = sse_gate(self, x)
        if self.cfg["merge"] == "sum":
            return x * (s + q)
        ys, yq = x * s, x * q
        return ops.where(ys >= yq, ys, ops.maximum(ys, yq))
