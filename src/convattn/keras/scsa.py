"""Keras layer of SCSA, spatial and channel synergistic attention (``scsa``, 2-D); the maths of
:mod:`convattn.attention.scsa`.

X (B, H, W, C), 4 channel groups with depthwise Conv1d k_i (shared by both strips)::

    a^h = gate(GN_4(cat_i DW_{k_i}(mean_W X_i))),  a^w likewise on mean_H X;  X_s = X * a^h * a^w
    P = GN_1(Pool_{k x k, stride k}(X_s))   (an axis shorter than k pooled whole)
    Q, K, V = depthwise 1x1 of P            (C x N per head)
    g = gate(mean_N softmax(Q K^T / sqrt(C / heads)) V);  Y = X_s * g
"""

from __future__ import annotations

import numpy as np
from keras import ops

from .base import AttentionLayer, depthwise_conv, group_norm
from .danet import tokens
from .registry import register_layer


@register_layer("scsa")
class SCSA(AttentionLayer):
    """Spatial and channel synergistic attention (options as :class:`convattn.attention.scsa.SCSA`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"head_num": module.head_num, "window_size": module.window_size,
                "group_kernel_sizes": tuple(module.group_kernel_sizes), "qkv_bias": module.q.bias is not None,
                "gate_layer": module.gate_layer, "down_sample_mode": module.down_sample_mode}

    def derive(self, module):
        return {"heads": module.head_num, "window": module.window_size, "kernels": tuple(module.group_kernel_sizes),
                "bias": module.q.bias is not None, "gate": module.gate_layer, "mode": module.down_sample_mode,
                "scale": module.scale, "g": module.group_chans, "eps": module.norm.eps}

    def _gate(self, t, axis: int):
        return ops.sigmoid(t) if self.cfg["gate"] == "sigmoid" else ops.softmax(t, axis=axis)

    def strip_gate(self, z, norm: str):
        """a^h or a^w (B, L, C) from a pooled strip (B, L, C)."""
        g = self.cfg["g"]
        parts = []
        for i, (name, k) in enumerate(zip(("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l"),
                                          self.cfg["kernels"], strict=True)):
            p = depthwise_conv(z[..., i * g:(i + 1) * g], self.v(f"{name}.weight"), padding=k // 2)
            parts.append(p + self.v(f"{name}.bias"))
        y = group_norm(ops.concatenate(parts, axis=-1), 4, self.v(f"{norm}.weight"), self.v(f"{norm}.bias"),
                       self.cfg["eps"])
        return self._gate(y, 1)

    def down_sample(self, x):
        k = self.cfg["window"]
        if k == -1:
            return ops.mean(x, axis=(1, 2), keepdims=True)
        h, w = x.shape[1], x.shape[2]
        pads = [(0, 0), (0, max(k - h, 0)), (0, max(k - w, 0)), (0, 0)]
        short = h < k or w < k
        if self.cfg["mode"] == "max_pool":
            if short:
                x = ops.pad(x, pads, constant_values=-np.inf)
            return ops.max_pool(x, k, k, padding="valid")
        if not short:
            return ops.average_pool(x, k, k, padding="valid")
        ones = np.pad(np.ones((1, h, w, 1), "float32"), pads)
        count = ops.average_pool(ops.convert_to_tensor(ones), k, k, padding="valid")
        return ops.average_pool(ops.pad(x, pads), k, k, padding="valid") / count

    def _pointwise_dw(self, name: str, p):
        y = p * ops.reshape(self.v(f"{name}.weight"), (-1,))
        return y + self.v(f"{name}.bias") if self.cfg["bias"] else y

    def channel_gate(self, xs):
        p = self.down_sample(xs)
        p = group_norm(p, 1, self.v("norm.weight"), self.v("norm.bias"), self.cfg["eps"])
        n = self.cfg["heads"]
        d = self.channels // n

        def heads(t):  # (B, N, C) -> (B, n, d, N)
            t = tokens(t)
            return ops.transpose(ops.reshape(t, (ops.shape(t)[0], -1, n, d)), (0, 2, 3, 1))

        q, k, v = (heads(self._pointwise_dw(name, p)) for name in ("q", "k", "v"))
        attn = ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)) * self.cfg["scale"], axis=-1)
        out = ops.mean(ops.matmul(attn, v), axis=-1)  # (B, n, d)
        return self._gate(ops.reshape(out, (-1, self.channels)), 1)

    def attend(self, x, training):
        a_h = self.strip_gate(ops.mean(x, axis=2), "norm_h")  # (B, H, C)
        a_w = self.strip_gate(ops.mean(x, axis=1), "norm_w")  # (B, W, C)
        xs = x * a_h[:, :, None, :] * a_w[:, None, :, :]
        return xs * self.channel_gate(xs)[:, None, None, :]
