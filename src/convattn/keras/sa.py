"""Keras layer of Shuffle Attention (``sa``); the maths of :mod:`convattn.attention.sa`.

X (B, *S, C) in G groups of 2m channels [U; V]: U' = U * sigmoid(c_w GAP U + c_b);
V' = V * sigmoid(s_w GN(V) + s_b) (GN per channel); Y = channel_shuffle_2 of
[U'_1; V'_1; ...; U'_G; V'_G].
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, spatial_axes
from .registry import register_layer


@register_layer("sa")
class ShuffleAttention(AttentionLayer):
    """Shuffle attention (options as :class:`convattn.attention.sa.ShuffleAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"groups": module.groups}

    def derive(self, module):
        return {"groups": module.groups, "eps": module.gn.eps}

    def attend(self, x, training):
        g, c = self.cfg["groups"], self.channels
        m = c // (2 * g)
        shape = ops.shape(x)
        axes = spatial_axes(x)
        xg = ops.reshape(x, tuple(shape[:-1]) + (g, 2 * m))  # (B, *S, G, 2m)
        u, v = xg[..., :m], xg[..., m:]
        a_c = ops.sigmoid(self.v("cweight") * ops.mean(u, axis=axes, keepdims=True) + self.v("cbias"))
        # GroupNorm(m, m) on each group's V: every channel normalised over the positions
        mean = ops.mean(v, axis=axes, keepdims=True)
        var = ops.mean(ops.square(v - mean), axis=axes, keepdims=True)
        n = (v - mean) / ops.sqrt(var + self.cfg["eps"]) * self.v("gn.weight") + self.v("gn.bias")
        a_s = ops.sigmoid(self.v("sweight") * n + self.v("sbias"))
        z = ops.reshape(ops.concatenate((u * a_c, v * a_s), axis=-1), tuple(shape[:-1]) + (2, c // 2))
        return ops.reshape(ops.swapaxes(z, -1, -2), shape)
