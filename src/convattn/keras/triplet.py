"""Keras layer of Triplet Attention (``triplet``, 2-D); the maths of :mod:`convattn.attention.triplet`.

X (B, H, W, C): three gates sigmoid(BN(Conv_k([max; mean]))) on the (C, W), (H, C)
and (H, W) planes (pooling over H, W and C); Y = X * (a_cw + a_hc + a_hw) / 3
(without the (H, W) branch: / 2).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, conv
from .registry import register_layer


def _zgate(layer, prefix: str, mx, mean, training):
    """sigmoid(BN(Conv_k([max; mean]))) of pooled planes (B, P, Q) -> (B, P, Q)."""
    k = layer.cfg["kernel_size"]
    z = conv(ops.stack((mx, mean), axis=-1), layer.v(f"{prefix}.conv.weight"), padding=(k - 1) // 2)
    return ops.sigmoid(batch_norm(layer, f"{prefix}.bn", z, training, **layer.cfg["bn"]))[..., 0]


@register_layer("triplet")
class TripletAttention(AttentionLayer):
    """Triplet attention (options as :class:`convattn.attention.triplet.TripletAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"kernel_size": module.kernel_size, "no_spatial": module.no_spatial}

    def derive(self, module):
        return {"kernel_size": module.kernel_size, "no_spatial": module.no_spatial, "bn": bn_config(module.cw.bn)}

    def attend(self, x, training):
        t = lambda a: ops.transpose(a, (0, 2, 1))  # noqa: E731
        a_cw = _zgate(self, "cw", t(ops.max(x, axis=1)), t(ops.mean(x, axis=1)), training)  # (B, C, W)
        a_hc = _zgate(self, "hc", ops.max(x, axis=2), ops.mean(x, axis=2), training)  # (B, H, C)
        g = t(a_cw)[:, None, :, :] + a_hc[:, :, None, :]
        if self.cfg["no_spatial"]:
            return x * g / 2
        a_hw = _zgate(self, "hw", ops.max(x, axis=3), ops.mean(x, axis=3), training)  # (B, H, W)
        return x * (g + a_hw[..., None]) / 3
