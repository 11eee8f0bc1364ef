"""Keras layers of polarized self-attention (``psa_p``, ``psa_s``); the maths of
:mod:`convattn.attention.psa`.

X (B, *S, C) as tokens T (B, N, C), m = C / 2::

    channel:  p = softmax_N(T w_q), z = W_v (T^T p) (B, m), A^ch = sigmoid(W_z z)
              (official psa_s: W_z = Linear, LayerNorm, ReLU, Linear; paper: Linear, LayerNorm)
    spatial:  g = W_q' mean_N T (B, m)
              official psa_p: A^sp = sigmoid(softmax_N(T W_v'^T g))
              official psa_s: A^sp = sigmoid(softmax_N(T W_v'^T) g)
              paper:          A^sp = sigmoid(T W_v'^T softmax_m(g))
    psa_p: Y = X * (A^ch + A^sp);  psa_s: X1 = X * A^ch, Y = X1 * A^sp(X1)
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, layer_norm, linear
from .danet import tokens
from .registry import register_layer


class _PSA(AttentionLayer):
    layout = ""

    @classmethod
    def options_from_torch(cls, module):
        return {"variant": module.variant}

    def derive(self, module):
        eps = [m.eps for m in module.ch_wz.modules() if hasattr(m, "normalized_shape")]
        return {"variant": module.variant, "eps": eps[0] if eps else 1e-5}

    def channel_gate(self, t):
        p = ops.softmax(linear(t, self.v("ch_wq.weight")), axis=1)  # (B, N, 1)
        z = linear(ops.sum(t * p, axis=1), self.v("ch_wv.weight"))  # (B, m)
        variant, eps = self.cfg["variant"], self.cfg["eps"]
        if variant == "official" and self.layout == "sequential":
            h = linear(z, self.v("ch_wz.0.weight"), self.v("ch_wz.0.bias"))
            h = ops.relu(layer_norm(h, self.v("ch_wz.1.weight"), self.v("ch_wz.1.bias"), eps))
            a = linear(h, self.v("ch_wz.3.weight"), self.v("ch_wz.3.bias"))
        elif variant == "official":
            a = linear(z, self.v("ch_wz.weight"))
        else:
            a = layer_norm(linear(z, self.v("ch_wz.0.weight")), self.v("ch_wz.1.weight"), self.v("ch_wz.1.bias"), eps)
        return ops.sigmoid(a)  # (B, C)

    def spatial_gate(self, t):
        g = linear(ops.mean(t, axis=1), self.v("sp_wq.weight"))  # (B, m)
        wv = self.v("sp_wv.weight")  # (m, C)
        variant = self.cfg["variant"]
        if variant == "official" and self.layout == "sequential":
            v = ops.softmax(linear(t, wv), axis=1)  # softmax over the positions: (B, N, m)
            return ops.sigmoid(ops.sum(v * g[:, None, :], axis=-1))
        if variant == "paper":
            g = ops.softmax(g, axis=-1)
        s = ops.sum(t * ops.matmul(g, wv)[:, None, :], axis=-1)  # (B, N)
        if variant == "official":
            s = ops.softmax(s, axis=-1)
        return ops.sigmoid(s)


@register_layer("psa_p")
class ParallelPolarizedSelfAttention(_PSA):
    """Polarized self-attention, parallel layout (options as :class:`convattn.attention.psa.ParallelPolarizedSelfAttention`)."""

    layout = "parallel"

    def attend(self, x, training):
        t = tokens(x)
        y = t * (self.channel_gate(t)[:, None, :] + self.spatial_gate(t)[:, :, None])
        return ops.reshape(y, ops.shape(x))


@register_layer("psa_s")
class SequentialPolarizedSelfAttention(_PSA):
    """Polarized self-attention, sequential layout (options as :class:`convattn.attention.psa.SequentialPolarizedSelfAttention`)."""

    layout = "sequential"

    def attend(self, x, training):
        t = tokens(x)
        x1 = t * self.channel_gate(t)[:, None, :]
        return ops.reshape(x1 * self.spatial_gate(x1)[:, :, None], ops.shape(x))
