"""Keras layer of Efficient Local Attention (``ela``, 2-D); the maths of :mod:`convattn.attention.ela`.

X (B, H, W, C): a^h = sigmoid(act(GN(DWConv1d_k(mean_W X)))), a^w likewise on mean_H X
(one shared conv and GN by default, separate ones with ``shared=False``);
Y = X * a^h * a^w.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, depthwise_conv, group_norm
from .registry import register_layer

_ACTS = {None: lambda t: t, "silu": ops.silu, "relu": ops.relu}


@register_layer("ela")
class ELA(AttentionLayer):
    """Efficient local attention (options as :class:`convattn.attention.ela.ELA`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"kernel_size": module.kernel_size, "shared": module.shared, "norm_groups": module.norm_groups,
                "act": module.act_name}

    def derive(self, module):
        return {"k": module.kernel_size, "shared": module.shared, "groups": module.norm_groups,
                "eps": module.norm_h.eps, "act": module.act_name}

    def _strip(self, z, conv: str, norm: str):
        cfg = self.cfg
        y = depthwise_conv(z, self.v(f"{conv}.weight"), padding=cfg["k"] // 2)
        y = group_norm(y, cfg["groups"], self.v(f"{norm}.weight"), self.v(f"{norm}.bias"), cfg["eps"])
        return ops.sigmoid(_ACTS[cfg["act"]](y))

    def attend(self, x, training):
        shared = self.cfg["shared"]
        a_h = self._strip(ops.mean(x, axis=2), "conv_h", "norm_h")  # (B, H, C)
        a_w = self._strip(ops.mean(x, axis=1), "conv_h" if shared else "conv_w", "norm_h" if shared else "norm_w")
        return x * a_h[:, :, None, :] * a_w[:, None, :, :]
