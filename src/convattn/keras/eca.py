"""Keras layer of Efficient Channel Attention (``eca``); the maths of :mod:`convattn.attention.eca`.

X (B, *S, C): y = GAP(X) seen as a sequence of C values; w = sigmoid(Conv1d_k(y))
(zero or circular padding (k - 1) // 2, no bias; with ``mlp=True`` a 1 -> r conv
with bias, ReLU, then the k-tap conv r -> 1 with bias); Y = X * w.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, conv, expand_channel, spatial_axes
from .registry import register_layer


@register_layer("eca")
class ECA(AttentionLayer):
    """Efficient Channel Attention (options as :class:`convattn.attention.eca.ECA`)."""

    @classmethod
    def options_from_torch(cls, module):
        opts = {"kernel_size": module.kernel_size, "padding": module.padding}
        if module.conv2 is not None:
            opts.update(mlp=True, mlp_ratio=module.conv.out_channels / module.channels)
        return opts

    def derive(self, module):
        return {"k": module.kernel_size, "padding": module.padding, "mlp": module.conv2 is not None}

    def attend(self, x, training):
        k, mode = self.cfg["k"], self.cfg["padding"]
        y = ops.mean(x, axis=spatial_axes(x))[:, :, None]  # (B, C, 1): C positions, 1 channel
        if self.cfg["mlp"]:
            y = ops.relu(conv(y, self.v("conv.weight"), self.v("conv.bias")))
            y = conv(y, self.v("conv2.weight"), self.v("conv2.bias"), padding=(k - 1) // 2, pad_mode=mode)
        else:
            y = conv(y, self.v("conv.weight"), padding=(k - 1) // 2, pad_mode=mode)
        return x * expand_channel(ops.sigmoid(y[:, :, 0]), self.nd)
