"""Keras layers of CBAM (``cbam``, ``cbam_channel``, ``cbam_spatial``) and timm's light CBAM
(``lcbam``); the maths of :mod:`convattn.attention.cbam`.

X (B, *S, C)::

    M_c = sigmoid(MLP(GAP X) + MLP(GMP X))                  (B, C), one shared MLP
    M_s = sigmoid(BN(Conv_k(cat[max_c X1, mean_c X1])))     (B, *S), 2 -> 1, no bias
    cbam: Y = X1 * M_s with X1 = X * M_c
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, conv, expand_channel, spatial_axes
from .registry import register_layer
from .se import mlp


def channel_gate(layer, prefix: str, x):
    """M_c (B, C) from the MLP ``prefix.fc1``/``prefix.fc2``."""
    axes = spatial_axes(x)
    return ops.sigmoid(mlp(layer, f"{prefix}fc1", f"{prefix}fc2", ops.mean(x, axis=axes))
                       + mlp(layer, f"{prefix}fc1", f"{prefix}fc2", ops.max(x, axis=axes)))


def spatial_gate(layer, prefix: str, x, training: bool):
    """M_s (B, *S, 1) from ``prefix.conv`` and ``prefix.bn``."""
    k, order = layer.cfg["kernel_size"], layer.cfg["pool_order"]
    mx, mean = ops.max(x, axis=-1), ops.mean(x, axis=-1)
    p = ops.stack((mx, mean) if order == "max_mean" else (mean, mx), axis=-1)
    z = conv(p, layer.v(f"{prefix}conv.weight"), padding=k // 2)
    return ops.sigmoid(batch_norm(layer, f"{prefix}bn", z, training, **layer.cfg["bn"]))


@register_layer("cbam_channel")
class CBAMChannel(AttentionLayer):
    """CBAM channel gate (options as :class:`convattn.attention.cbam.CBAMChannel`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features}

    def attend(self, x, training):
        return x * expand_channel(channel_gate(self, "", x), self.nd)


def _spatial_options(m):
    return {"kernel_size": m.kernel_size, "pool_order": m.pool_order, "bn_momentum": m.bn.momentum}


def _spatial_cfg(m):
    return {"kernel_size": m.kernel_size, "pool_order": m.pool_order, "bn": bn_config(m.bn)}


@register_layer("cbam_spatial")
class CBAMSpatial(AttentionLayer):
    """CBAM spatial gate (options as :class:`convattn.attention.cbam.CBAMSpatial`)."""

    @classmethod
    def options_from_torch(cls, module):
        return _spatial_options(module)

    def derive(self, module):
        return _spatial_cfg(module)

    def attend(self, x, training):
        return x * spatial_gate(self, "", x, training)


@register_layer("cbam")
class CBAM(AttentionLayer):
    """CBAM: channel gate, then the spatial gate of the gated input (options as
    :class:`convattn.attention.cbam.CBAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.channel.fc1.out_features, **_spatial_options(module.spatial)}

    def derive(self, module):
        return _spatial_cfg(module.spatial)

    def attend(self, x, training):
        x1 = x * expand_channel(channel_gate(self, "channel.", x), self.nd)
        return x1 * spatial_gate(self, "spatial.", x1, training)


@register_layer("lcbam")
class LightCBAM(AttentionLayer):
    """timm's light CBAM, 2-D (options as :class:`convattn.attention.cbam.LightCBAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.fc1.out_features, "kernel_size": module.kernel_size}

    def derive(self, module):
        return {"kernel_size": module.kernel_size, "bn": bn_config(module.bn)}

    def attend(self, x, training):
        axes = spatial_axes(x)
        z = 0.5 * (ops.mean(x, axis=axes) + ops.max(x, axis=axes))
        x1 = x * expand_channel(ops.sigmoid(mlp(self, "fc1", "fc2", z, bias=False)), self.nd)
        p = 0.5 * (ops.mean(x1, axis=-1, keepdims=True) + ops.max(x1, axis=-1, keepdims=True))
        z = conv(p, self.v("conv.weight"), padding=self.cfg["kernel_size"] // 2)
        return x1 * ops.sigmoid(batch_norm(self, "bn", z, training, **self.cfg["bn"]))
