"""Keras layer of Coordinate Attention (``coord``, 2-D); the maths of :mod:`convattn.attention.coord`.

X (B, H, W, C): f = h_swish(BN(Conv1x1_{C->m}([mean_W X; mean_H X]))) over the H + W
strip positions; g^h = sigmoid(Conv1x1_{m->C}(f^h)), g^w = sigmoid(Conv1x1_{m->C}(f^w));
Y = X * g^h * g^w.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, linear
from .registry import register_layer


def pointwise(layer, prefix: str, x, bias: bool = True):
    """A 1x1 conv (PyTorch weight (O, I, 1, ...)) over the last axis."""
    w = layer.v(f"{prefix}.weight")
    return linear(x, ops.reshape(w, tuple(w.shape[:2])), layer.v(f"{prefix}.bias") if bias else None)


def hard_swish(t):
    return t * ops.relu6(t + 3.0) / 6.0


@register_layer("coord")
class CoordAttention(AttentionLayer):
    """Coordinate attention (options as :class:`convattn.attention.coord.CoordAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.conv1.out_channels}

    def derive(self, module):
        return {"bn": bn_config(module.bn1)}

    def attend(self, x, training):
        h = ops.shape(x)[1]
        z = ops.concatenate((ops.mean(x, axis=2), ops.mean(x, axis=1)), axis=1)  # (B, H + W, C)
        f = hard_swish(batch_norm(self, "bn1", pointwise(self, "conv1", z), training, **self.cfg["bn"]))
        g_h = ops.sigmoid(pointwise(self, "conv_h", f[:, :h]))  # (B, H, C)
        g_w = ops.sigmoid(pointwise(self, "conv_w", f[:, h:]))  # (B, W, C)
        return x * g_h[:, :, None, :] * g_w[:, None, :, :]
