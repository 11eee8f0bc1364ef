"""Keras layer of the brief's position attention x channel gate (``pam_gate``); the maths of
:mod:`convattn.attention.pam_gate`.

X (B, *S, C): P = X + gamma softmax_rows(Q K^T) V (DANet's position attention);
m = sigmoid(MLP(GAP X) + MLP(GMP X)), MLP C -> C/16 -> C without biases; Y = P * m.
``path`` is accepted and has no effect (plain product).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, reduction_for, spatial_axes
from .danet import position_term, tokens
from .registry import register_layer
from .se import mlp


@register_layer("pam_gate")
class PAMGate(AttentionLayer):
    """Position attention x CBAM-style channel gate (options as :class:`convattn.attention.pam_gate.PAMGate`)."""

    @classmethod
    def options_from_torch(cls, module):
        c = module.channels
        return {"reduction": reduction_for(c, module.fc1.out_features),
                "qk_reduction": reduction_for(c, module.query_conv.out_channels), "path": module.path}

    def attend(self, x, training):
        p = x + ops.reshape(position_term(self, "", tokens(x)), ops.shape(x))
        axes = spatial_axes(x)
        m = ops.sigmoid(mlp(self, "fc1", "fc2", ops.mean(x, axis=axes), bias=False)
                        + mlp(self, "fc1", "fc2", ops.max(x, axis=axes), bias=False))
        return p * expand_channel(m, self.nd)
