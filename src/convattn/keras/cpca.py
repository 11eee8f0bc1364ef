"""Keras layer of channel prior convolutional attention (``cpca``, 2-D); the maths of
:mod:`convattn.attention.cpca`.

X (B, H, W, C): U = GELU(P X) (P one 1x1 conv, used three times);
M_c = sigmoid(MLP(GAP U)) + sigmoid(MLP(GMP U)); V = U * M_c;
D0 = DW5x5(V), D = D0 + sum_{k in 7, 11, 21} DW_kx1(DW_1xk(D0)); Y = P(V * P D).
"""

from __future__ import annotations

from keras import ops

from ..attention.cpca import STRIPS
from .base import AttentionLayer, depthwise_conv
from .coord import pointwise
from .registry import register_layer


@register_layer("cpca")
class ChannelPriorConvAttention(AttentionLayer):
    """Channel prior convolutional attention (options as
    :class:`convattn.attention.cpca.ChannelPriorConvAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.ca["fc1"].out_channels}

    def _dw(self, name: str, x):
        w = self.v(f"{name}.weight")
        return depthwise_conv(x, w, padding=(w.shape[2] // 2, w.shape[3] // 2)) + self.v(f"{name}.bias")

    def _mlp(self, z):
        return ops.sigmoid(pointwise(self, "ca.fc2", ops.relu(pointwise(self, "ca.fc1", z))))

    def attend(self, x, training):
        u = ops.gelu(pointwise(self, "conv", x), approximate=False)
        m_c = self._mlp(ops.mean(u, axis=(1, 2))) + self._mlp(ops.max(u, axis=(1, 2)))
        v = u * m_c[:, None, None, :]
        d0 = self._dw("dconv5_5", v)
        d = d0
        for k in STRIPS:
            d = d + self._dw(f"dconv{k}_1", self._dw(f"dconv1_{k}", d0))
        return pointwise(self, "conv", v * pointwise(self, "conv", d))
