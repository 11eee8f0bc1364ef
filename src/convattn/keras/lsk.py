"""Keras layer of LSKNet's large selective kernel block (``lsk``, 2-D); the maths of
:mod:`convattn.attention.lsk`.

X (B, H, W, C): U1 = DW5x5(X), U2 = DW7x7 dilation 3 (U1); V1, V2 = Conv1x1_{C->C/2}(U1, U2);
[S1; S2] = sigmoid(Conv7x7_{2->2}([mean_c [V1; V2], max_c [V1; V2]]));
Y = X * Conv1x1_{C/2->C}(S1 V1 + S2 V2). Every conv has a bias.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, conv, depthwise_conv
from .coord import pointwise
from .registry import register_layer


@register_layer("lsk")
class LSK(AttentionLayer):
    """Large selective kernel attention (no options)."""

    def attend(self, x, training):
        u1 = depthwise_conv(x, self.v("conv0.weight"), padding=2) + self.v("conv0.bias")
        u2 = depthwise_conv(u1, self.v("conv_spatial.weight"), padding=9, dilation=3) + self.v("conv_spatial.bias")
        v1, v2 = pointwise(self, "conv1", u1), pointwise(self, "conv2", u2)
        pooled = ops.stack(((ops.mean(v1, axis=-1) + ops.mean(v2, axis=-1)) * 0.5,
                            ops.maximum(ops.max(v1, axis=-1), ops.max(v2, axis=-1))), axis=-1)
        s = ops.sigmoid(conv(pooled, self.v("conv_squeeze.weight"), self.v("conv_squeeze.bias"), padding=3))
        return x * pointwise(self, "conv", v1 * s[..., 0:1] + v2 * s[..., 1:2])
