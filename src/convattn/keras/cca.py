"""Keras layer of recurrent criss-cross attention (``cca``, 2-D); the maths of
:mod:`convattn.attention.cca`.

X (B, H, W, C): Q, K = 1x1 convs C -> C/8, V = 1x1 conv C -> C (biases); each pixel
attends over its column (without itself) and its row with one softmax;
CCA(X) = gamma * (A V) + X, applied ``recurrence`` times with the same weights.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from .base import AttentionLayer
from .coord import pointwise
from .registry import register_layer


@register_layer("cca")
class CrissCrossAttention(AttentionLayer):
    """Criss-cross attention (options as :class:`convattn.attention.cca.CrissCrossAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.query_conv.out_channels, "recurrence": module.recurrence}

    def derive(self, module):
        return {"recurrence": module.recurrence}

    def step(self, x):
        h = x.shape[1]
        q, k, v = pointwise(self, "query_conv", x), pointwise(self, "key_conv", x), pointwise(self, "value_conv", x)
        e_col = ops.einsum("bhwd,bgwd->bhwg", q, k)
        e_row = ops.einsum("bhwd,bhjd->bhwj", q, k)
        itself = ops.convert_to_tensor(np.eye(h, dtype=bool)[:, None, :])  # (H, 1, H): g == h
        e_col = ops.where(itself, ops.cast(-np.inf, e_col.dtype), e_col)
        a = ops.softmax(ops.concatenate((e_col, e_row), axis=-1), axis=-1)
        a_col, a_row = a[..., :h], a[..., h:]
        out = ops.einsum("bhwg,bgwc->bhwc", a_col, v) + ops.einsum("bhwj,bhjc->bhwc", a_row, v)
        return self.v("gamma") * out + x

    def attend(self, x, training):
        for _ in range(self.cfg["recurrence"]):
            x = self.step(x)
        return x
