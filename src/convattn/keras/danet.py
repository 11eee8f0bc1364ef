"""Keras layers of DANet's position and channel attention (``pam``, ``cam``, ``danet``); the
maths of :mod:`convattn.attention.danet`.

X (B, *S, C) seen as N = prod(S) tokens (B, N, C)::

    pam:   Q = X W_q^T + b_q, K = X W_k^T (C/8), V = X W_v^T + b_v (C)
           Y = X + gamma * softmax_rows(Q K^T) V               (no scaling)
    cam:   E = X^T X (B, C, C), A = softmax_rows(rowmax(E) - E) ("official"; "paper": softmax(E))
           Y = X + beta * X A^T
    danet: Y = X + gamma * (position term) + beta * (channel term)

The Keras layers always compute the plain product (the N x N score matrix is
held); ``path`` is accepted for the PyTorch option set and has no effect here.
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, linear, reduction_for
from .registry import register_layer


def _conv1d(layer, prefix: str, tokens, bias: bool = True):
    w = layer.v(f"{prefix}.weight")  # (O, I, 1)
    return linear(tokens, ops.reshape(w, tuple(w.shape[:2])), layer.v(f"{prefix}.bias") if bias else None)


def tokens(x):
    return ops.reshape(x, (ops.shape(x)[0], -1, x.shape[-1]))


def position_term(layer, prefix: str, flat):
    """gamma * softmax(Q K^T) V on tokens (B, N, C)."""
    q = _conv1d(layer, f"{prefix}query_conv", flat)
    k = _conv1d(layer, f"{prefix}key_conv", flat, bias=False)
    v = _conv1d(layer, f"{prefix}value_conv", flat)
    s = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))), axis=-1)
    return layer.v(f"{prefix}gamma") * ops.matmul(s, v)


def channel_term(layer, prefix: str, flat, energy: str):
    """beta * A X on tokens (B, N, C)."""
    e = ops.matmul(ops.transpose(flat, (0, 2, 1)), flat)  # (B, C, C)
    if energy == "official":
        e = ops.max(e, axis=-1, keepdims=True) - e
    a = ops.softmax(e, axis=-1)
    return layer.v(f"{prefix}beta") * ops.matmul(flat, ops.transpose(a, (0, 2, 1)))


def _pam_options(m) -> dict:
    return {"reduction": reduction_for(m.channels, m.query_conv.out_channels), "path": m.path}


@register_layer("pam")
class PAM(AttentionLayer):
    """DANet position attention (options as :class:`convattn.attention.danet.PAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return _pam_options(module)

    def attend(self, x, training):
        flat = tokens(x)
        return x + ops.reshape(position_term(self, "", flat), ops.shape(x))


@register_layer("cam")
class CAM(AttentionLayer):
    """DANet channel attention (options as :class:`convattn.attention.danet.CAM`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"energy": module.energy}

    def derive(self, module):
        return {"energy": module.energy}

    def attend(self, x, training):
        flat = tokens(x)
        return x + ops.reshape(channel_term(self, "", flat, self.cfg["energy"]), ops.shape(x))


@register_layer("danet")
class DANet(AttentionLayer):
    """PAM and CAM in parallel with one shared residual (options as :class:`convattn.attention.danet.DANet`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {**_pam_options(module.pam), "energy": module.cam.energy}

    def derive(self, module):
        return {"energy": module.cam.energy}

    def attend(self, x, training):
        flat = tokens(x)
        y = position_term(self, "pam.", flat) + channel_term(self, "cam.", flat, self.cfg["energy"])
        return x + ops.reshape(y, ops.shape(x))
