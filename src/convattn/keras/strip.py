"""Keras layers of timm's strip attention (``strip``) and simplified coordinate attention
(``scoord``), 2-D; the maths of :mod:`convattn.attention.strip`.

X (B, H, W, C), z^h = mean_W X, z^w = mean_H X:
strip: g = sigmoid(DW_h(z^h) (+) DW_w(z^w)); scoord: u = silu(W1 z + b1) (shared),
g = sigmoid((W_h u^h + b_h) (+) (W_w u^w + b_w)); Y = X * g.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, depthwise_conv, linear
from .registry import register_layer


@register_layer("strip")
class StripAttention(AttentionLayer):
    """Strip attention (options as :class:`convattn.attention.strip.StripAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"kernel_size": module.kernel_size, "refine": module.conv_h is not None}

    def derive(self, module):
        return {"k": module.kernel_size, "refine": module.conv_h is not None}

    def attend(self, x, training):
        z_h, z_w = ops.mean(x, axis=2), ops.mean(x, axis=1)
        if self.cfg["refine"]:
            p = self.cfg["k"] // 2
            z_h = depthwise_conv(z_h, self.v("conv_h.weight"), padding=p)
            z_w = depthwise_conv(z_w, self.v("conv_w.weight"), padding=p)
        return x * ops.sigmoid(z_h[:, :, None, :] + z_w[:, None, :, :])


@register_layer("scoord")
class SimpleCoordAttention(AttentionLayer):
    """Simplified coordinate attention (options as :class:`convattn.attention.strip.SimpleCoordAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features}

    def attend(self, x, training):
        w1, b1 = self.v("fc1.weight"), self.v("fc1.bias")
        u_h = ops.silu(linear(ops.mean(x, axis=2), w1, b1))  # (B, H, m)
        u_w = ops.silu(linear(ops.mean(x, axis=1), w1, b1))  # (B, W, m)
        a_h = linear(u_h, self.v("fc_h.weight"), self.v("fc_h.bias"))
        a_w = linear(u_w, self.v("fc_w.weight"), self.v("fc_w.bias"))
        return x * ops.sigmoid(a_h[:, :, None, :] + a_w[:, None, :, :])
