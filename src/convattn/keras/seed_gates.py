"""Keras layers of the seed's gates (``mlp_spatial``, ``parallel_gate``); the maths of
:mod:`convattn.attention.seed_gates`.

X (B, *S, C): A_s = sigmoid(W2 relu(W1 X + b1) + b2) per position (B, *S, 1);
A_c = sigmoid(V2 relu(V1 GAP(X) + c1) + c2) (B, C); mlp_spatial: Y = X * A_s;
parallel_gate: Y = A_s * X * A_c.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, reduction_for, spatial_axes
from .registry import register_layer
from .se import mlp


@register_layer("mlp_spatial")
class MLPSpatial(AttentionLayer):
    """Per-position MLP spatial gate (options as :class:`convattn.attention.seed_gates.MLPSpatial`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features}

    def attend(self, x, training):
        return x * ops.sigmoid(mlp(self, "fc1", "fc2", x))


@register_layer("parallel_gate")
class ParallelGate(AttentionLayer):
    """Parallel MLP spatial gate x SE channel gate (options as
    :class:`convattn.attention.seed_gates.ParallelGate`)."""

    @classmethod
    def options_from_torch(cls, module):
        c, w, sw = module.channels, module.channel_fc1.out_features, module.spatial_fc1.out_features
        opts = {"hidden": w}
        if sw != w:
            opts["spatial_reduction"] = reduction_for(c, sw)
        return opts

    def attend(self, x, training):
        ac = ops.sigmoid(mlp(self, "channel_fc1", "channel_fc2", ops.mean(x, axis=spatial_axes(x))))
        a_s = ops.sigmoid(mlp(self, "spatial_fc1", "spatial_fc2", x))
        return x * expand_channel(ac, self.nd) * a_s
