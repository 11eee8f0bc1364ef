"""Keras layer of the non-local block (``nonlocal``); the maths of
:mod:`convattn.attention.nonlocal_block`.

X (B, *S, C) as tokens (B, N, C); P = MaxPool_2(X) (ceil mode) with ``subsample``::

    theta = X W_t^T + b_t,  phi = P W_p^T (+ b_p),  g = P W_g^T + b_g      (d = C / 2)
    f = softmax_j(s theta phi^T) (embedded Gaussian; Gaussian: X and P themselves)
      = theta phi^T / M          (dot product)
    Y = X + BN(f g W_z^T + b_z)

``path`` is accepted and has no effect (plain product).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, batch_norm, bn_config, max_pool_by_two
from .danet import _conv1d, tokens
from .registry import register_layer


@register_layer("nonlocal")
class NonLocal(AttentionLayer):
    """Non-local block (options as :class:`convattn.attention.nonlocal_block.NonLocal`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"hidden": module.g.out_channels, "mode": module.mode, "subsample": module.subsample,
                "scale": module.scale, "path": module.path}

    def derive(self, module):
        return {"mode": module.mode, "subsample": module.subsample, "scale": module.scale, "bn": bn_config(module.bn)}

    def attend(self, x, training):
        cfg = self.cfg
        flat = tokens(x)
        pflat = tokens(max_pool_by_two(x)) if cfg["subsample"] else flat
        if cfg["mode"] == "gaussian":
            q, k = flat, pflat
        else:
            q = _conv1d(self, "theta", flat)
            k = _conv1d(self, "phi", pflat, bias=cfg["mode"] == "dot_product")
        v = _conv1d(self, "g", pflat)
        kt = ops.transpose(k, (0, 2, 1))
        if cfg["mode"] == "dot_product":
            y = ops.matmul(q, ops.matmul(kt, v)) / ops.cast(ops.shape(k)[1], x.dtype)
        else:
            y = ops.matmul(ops.softmax(cfg["scale"] * ops.matmul(q, kt), axis=-1), v)
        z = batch_norm(self, "bn", _conv1d(self, "out", y), training, **cfg["bn"])
        return x + ops.reshape(z, ops.shape(x))
