"""Keras layer of the Style-based Recalibration Module (``srm``); the maths of
:mod:`convattn.attention.srm`.

X (B, *S, C): t = [mean_S X, sqrt(var_S X + eps)] (unbiased variance),
z_c = w_c0 mu_c + w_c1 sigma_c, Y = X * sigmoid(BN(z)).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, expand_channel, num_positions, spatial_axes
from .registry import register_layer


@register_layer("srm")
class SRM(AttentionLayer):
    """Style-based recalibration (options as :class:`convattn.attention.srm.SRM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"eps": module.eps}

    def derive(self, module):
        return {"eps": module.eps, "bn": bn_config(module.bn)}

    def attend(self, x, training):
        n = num_positions(x)
        if isinstance(n, int) and n < 2:
            raise ValueError(
                f"{self._owner()}: needs at least 2 spatial positions for the unbiased "
                f"standard deviation; got shape {tuple(x.shape)}"
            )
        axes = spatial_axes(x)
        mean = ops.mean(x, axis=axes, keepdims=True)
        var = ops.sum(ops.square(x - mean), axis=axes) / (n - 1)
        eps = self.cfg["eps"]
        std = ops.sqrt(var + eps) if eps else ops.sqrt(var)
        cfc = self.v("cfc")
        z = ops.reshape(mean, (-1, self.channels)) * cfc[:, 0] + std * cfc[:, 1]
        g = ops.sigmoid(batch_norm(self, "bn", z, training, **self.cfg["bn"]))
        return x * expand_channel(g, self.nd)
