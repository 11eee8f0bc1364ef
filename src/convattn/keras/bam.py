"""Keras layers of BAM (``bam``, ``bam_spatial``); the maths of :mod:`convattn.attention.bam`.

X (B, *S, C), h = C // r::

    M_c = W2 relu(BN1d(W1 GAP(X))) + b2                                        (B, C)
    M_s = Conv1x1(h -> 1) o [relu BN Conv3x3_dil(h -> h)] x n o relu BN Conv1x1(C -> h) (X)   (B, *S, 1)
    bam: Y = X * (1 + sigmoid(M_c * M_s))  (merge="product"; "sum": M_c + M_s)
    bam_spatial: Y = X * (1 + sigmoid(M_s))
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, conv, expand_channel, linear, spatial_axes
from .registry import register_layer


def _branch_options(branch) -> dict:
    layers = list(branch.layers)
    n = (len(layers) - 4) // 3
    return {
        "hidden": layers[0].out_channels,
        "num_dilated": n,
        "dilation": layers[3].dilation[0] if n else 4,
        "bias_before_bn": layers[0].bias is not None,
    }


def _branch_cfg(branch) -> dict:
    layers = list(branch.layers)
    n = (len(layers) - 4) // 3
    return {
        "num_dilated": n,
        "dilation": layers[3].dilation[0] if n else 1,
        "bias_before_bn": layers[0].bias is not None,
        "bn": [bn_config(layers[1 + 3 * i]) for i in range(n + 1)],
    }


def spatial_branch(layer, prefix: str, x, training):
    """M_s (B, *S, 1) from the layers ``prefix.layers.<i>``."""
    cfg = layer.cfg
    bias = cfg["bias_before_bn"]
    p = f"{prefix}.layers."
    y = conv(x, layer.v(p + "0.weight"), layer.v(p + "0.bias") if bias else None)
    y = ops.relu(batch_norm(layer, p + "1", y, training, **cfg["bn"][0]))
    for i in range(cfg["num_dilated"]):
        j = 3 + 3 * i
        d = cfg["dilation"]
        y = conv(y, layer.v(f"{p}{j}.weight"), layer.v(f"{p}{j}.bias") if bias else None, padding=d, dilation=d)
        y = ops.relu(batch_norm(layer, f"{p}{j + 1}", y, training, **cfg["bn"][i + 1]))
    j = 3 + 3 * cfg["num_dilated"]
    return conv(y, layer.v(f"{p}{j}.weight"), layer.v(f"{p}{j}.bias"))


@register_layer("bam_spatial")
class BAMSpatial(AttentionLayer):
    """BAM's spatial branch alone (options as :class:`convattn.attention.bam.BAMSpatial`)."""

    @classmethod
    def options_from_torch(cls, module):
        return _branch_options(module.spatial)

    def derive(self, module):
        return _branch_cfg(module.spatial)

    def attend(self, x, training):
        return x * (1 + ops.sigmoid(spatial_branch(self, "spatial", x, training)))


@register_layer("bam")
class BAM(AttentionLayer):
    """BAM: parallel channel and spatial branches (options as :class:`convattn.attention.bam.BAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {**_branch_options(module.spatial), "merge": module.merge}

    def derive(self, module):
        return {**_branch_cfg(module.spatial), "merge": module.merge, "bn_c": bn_config(module.bn)}

    def attend(self, x, training):
        z = ops.mean(x, axis=spatial_axes(x))
        h = linear(z, self.v("fc1.weight"), self.v("fc1.bias") if self.cfg["bias_before_bn"] else None)
        h = ops.relu(batch_norm(self, "bn", h, training, **self.cfg["bn_c"]))
        mc = expand_channel(linear(h, self.v("fc2.weight"), self.v("fc2.bias")), self.nd)
        ms = spatial_branch(self, "spatial", x, training)
        m = mc * ms if self.cfg["merge"] == "product" else mc + ms
        return x * (1 + ops.sigmoid(m))
