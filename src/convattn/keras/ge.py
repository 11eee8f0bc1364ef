"""Keras layer of Gather-Excite (``ge``); the maths of :mod:`convattn.attention.ge`.

X (B, *S, C): G = gather(X) (B, *S', C) with S' = 1 (global) or ceil(S / e);
g = sigmoid(excite(G)); Y = X * upsample_NN(g, S).

- theta-minus: global mean, or mean over windows 2e - 1, stride e, padding e - 1
  that do not count the padding;
- theta: a depthwise conv whose kernel is the whole feature map (global) or
  log2(e) depthwise 3^d stride-2 convs, each followed by BN, ReLU between them;
- theta-plus: theta, then ReLU and a 1x1 C -> C/r -> C MLP with biases.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, depthwise_conv, linear, spatial_axes
from .registry import register_layer


def window_mean(x, e: int):
    """Average pooling, window 2e - 1, stride e, padding e - 1, padding not counted."""
    nd = len(x.shape) - 2
    k = 2 * e - 1
    c = x.shape[-1]
    s = depthwise_conv(x, ops.ones((c, 1) + (k,) * nd, dtype=x.dtype), stride=e, padding=e - 1)
    count = np.ones((), dtype=np.float64)
    for n in x.shape[1:-1]:
        m = (n + 2 * (e - 1) - k) // e + 1
        start = np.arange(m) * e - (e - 1)
        cnt = np.minimum(start + k, n) - np.maximum(start, 0)
        count = count[..., None] * cnt
    return s / ops.convert_to_tensor(count[None, ..., None].astype(np.float32), dtype=x.dtype)


def upsample_nearest(g, sizes):
    """Nearest-neighbour upsampling of (B, *S', C) to ``sizes`` (PyTorch's ``mode="nearest"``)."""
    for axis, n in enumerate(sizes, start=1):
        m = g.shape[axis]
        if m == n:
            continue
        scale = np.float32(m) / np.float32(n)
        idx = np.minimum(np.floor(np.arange(n, dtype=np.float32) * scale).astype(np.int64), m - 1)
        g = ops.take(g, ops.convert_to_tensor(idx.astype(np.int32)), axis=axis)
    return g


@register_layer("ge")
class GatherExcite(AttentionLayer):
    """Gather-Excite (options as :class:`convattn.attention.ge.GatherExcite`)."""

    @classmethod
    def options_from_torch(cls, module):
        opts = {"variant": module.variant, "extent": module.extent}
        if module.feat_size is not None:
            opts["feat_size"] = module.feat_size
        if module.mlp is not None:
            opts["hidden"] = module.mlp.fc1.out_channels
        return opts

    def derive(self, module):
        bns = {}
        if module.gather is not None:
            bns = {name: bn_config(m) for name, m in module.gather.named_children() if name.startswith("norm")}
        return {"variant": module.variant, "extent": module.extent, "feat_size": module.feat_size,
                "bn": bns, "mlp": module.mlp is not None}

    def gather(self, x, training):
        cfg = self.cfg
        e = cfg["extent"]
        if cfg["variant"] == "theta-minus":
            return ops.mean(x, axis=spatial_axes(x), keepdims=True) if e == 0 else window_mean(x, e)
        if e == 0:
            size = tuple(x.shape[1:-1])
            if size != cfg["feat_size"]:
                raise ValueError(
                    f"{self._owner()}: built for feat_size={cfg['feat_size']} (global gather kernel), "
                    f"got input shape {tuple(x.shape)}"
                )
            w = self.v("gather.conv1.weight")  # (C, 1, *S)
            taps = ops.transpose(ops.reshape(w, (w.shape[0],) + size), tuple(range(1, self.nd + 1)) + (0,))
            g = ops.sum(x * taps, axis=spatial_axes(x), keepdims=True)
            return batch_norm(self, "gather.norm1", g, training, **cfg["bn"]["norm1"])
        n = int(math.log2(e))
        g = x
        for i in range(1, n + 1):
            g = depthwise_conv(g, self.v(f"gather.conv{i}.weight"), stride=2, padding=1)
            g = batch_norm(self, f"gather.norm{i}", g, training, **cfg["bn"][f"norm{i}"])
            if i < n:
                g = ops.relu(g)
        return g

    def attend(self, x, training):
        g = self.gather(x, training)
        if self.cfg["mlp"]:
            w1, w2 = self.v("mlp.fc1.weight"), self.v("mlp.fc2.weight")
            h = ops.relu(linear(ops.relu(g), ops.reshape(w1, tuple(w1.shape[:2])), self.v("mlp.fc1.bias")))
            g = linear(h, ops.reshape(w2, tuple(w2.shape[:2])), self.v("mlp.fc2.bias"))
        g = ops.sigmoid(g)
        if all(s == 1 for s in g.shape[1:-1]):
            return x * g
        return x * upsample_nearest(g, tuple(x.shape[1:-1]))
