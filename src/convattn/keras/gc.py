"""Keras layer of the global context block (``gc``); the maths of :mod:`convattn.attention.gc`.

X (B, *S, C) as tokens (B, N, C): a = softmax_N(X w_k) (``pooling="att"``) or the mean
(``"avg"``); c = sum_j a_j x_j (B, C); T(c) = W_2 relu(LN(W_1 c + b_1)) + b_2;
Y = X * sigmoid(T_mul(c)) (``channel_mul``) + T_add(c) (``channel_add``).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, expand_channel, layer_norm, linear, spatial_axes
from .danet import tokens
from .registry import register_layer


@register_layer("gc")
class GlobalContext(AttentionLayer):
    """Global context block (options as :class:`convattn.attention.gc.GlobalContext`)."""

    @classmethod
    def options_from_torch(cls, module):
        t = module.channel_add if module.channel_add is not None else module.channel_mul
        fusion = module.fusion[0] if len(module.fusion) == 1 else tuple(module.fusion)
        return {"hidden": t[0].out_features, "pooling": module.pooling, "fusion": fusion}

    def derive(self, module):
        t = module.channel_add if module.channel_add is not None else module.channel_mul
        return {"att": module.conv_mask is not None, "add": module.channel_add is not None,
                "mul": module.channel_mul is not None, "eps": t[1].eps}

    def _transform(self, prefix: str, c):
        h = linear(c, self.v(f"{prefix}.0.weight"), self.v(f"{prefix}.0.bias"))
        h = ops.relu(layer_norm(h, self.v(f"{prefix}.1.weight"), self.v(f"{prefix}.1.bias"), self.cfg["eps"]))
        return linear(h, self.v(f"{prefix}.3.weight"), self.v(f"{prefix}.3.bias"))

    def attend(self, x, training):
        if self.cfg["att"]:
            flat = tokens(x)
            a = ops.softmax(ops.matmul(flat, self.v("conv_mask.weight")[0]), axis=-1)  # (B, N)
            c = ops.sum(flat * a[:, :, None], axis=1)
        else:
            c = ops.mean(x, axis=spatial_axes(x))
        out = x
        if self.cfg["mul"]:
            out = out * expand_channel(ops.sigmoid(self._transform("channel_mul", c)), self.nd)
        if self.cfg["add"]:
            out = out + expand_channel(self._transform("channel_add", c), self.nd)
        return out
