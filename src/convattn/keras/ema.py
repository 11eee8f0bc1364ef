"""Keras layer of Efficient Multi-scale Attention (``ema``, 2-D); the maths of
:mod:`convattn.attention.ema`.

X (B, H, W, C) in G groups of m = C / G channels, each group X_g alone::

    [u^h; u^w] = Conv1x1([mean_W X_g; mean_H X_g]),  X1 = GN(X_g * sigmoid(u^h) * sigmoid(u^w))
    X2 = Conv3x3(X_g),  W = softmax(GAP X1) . X2 + softmax(GAP X2) . X1,  Y_g = X_g * sigmoid(W)
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, conv, group_norm
from .coord import pointwise
from .registry import register_layer


@register_layer("ema")
class EMA(AttentionLayer):
    """Efficient multi-scale attention (options as :class:`convattn.attention.ema.EMA`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"groups": module.groups}

    def derive(self, module):
        return {"groups": module.groups, "eps": module.gn.eps}

    def attend(self, x, training):
        shape = ops.shape(x)
        b, h, w = shape[0], shape[1], shape[2]
        g = self.cfg["groups"]
        m = self.channels // g
        xg = ops.reshape(ops.transpose(ops.reshape(x, (b, h, w, g, m)), (0, 3, 1, 2, 4)), (-1, h, w, m))
        z = ops.concatenate((ops.mean(xg, axis=2), ops.mean(xg, axis=1)), axis=1)  # (BG, H + W, m)
        u = pointwise(self, "conv1x1", z)
        gate = ops.sigmoid(u[:, :h])[:, :, None, :] * ops.sigmoid(u[:, h:])[:, None, :, :]
        x1 = group_norm(xg * gate, m, self.v("gn.weight"), self.v("gn.bias"), self.cfg["eps"])
        x2 = conv(xg, self.v("conv3x3.weight"), self.v("conv3x3.bias"), padding=1)
        s1 = ops.softmax(ops.mean(x1, axis=(1, 2)), axis=-1)[:, None, None, :]
        s2 = ops.softmax(ops.mean(x2, axis=(1, 2)), axis=-1)[:, None, None, :]
        a = ops.sigmoid(ops.sum(s1 * x2 + s2 * x1, axis=-1, keepdims=True))  # (BG, H, W, 1)
        y = ops.reshape(xg * a, (b, g, h, w, m))
        return ops.reshape(ops.transpose(y, (0, 2, 3, 1, 4)), shape)
