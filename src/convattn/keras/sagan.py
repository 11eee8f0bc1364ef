"""Keras layer of SAGAN self-attention (``sagan``); the maths of :mod:`convattn.attention.sagan`.

X (B, *S, C) as tokens: theta = X W_t^T (C/8); phi = MaxPool_2(X W_p^T) (C/8);
g = MaxPool_2(X W_g^T) (C/2); Y = X + sigma * softmax_j(theta phi^T) g W_o^T
(no biases, no scaling). With ``spectral_norm=True`` every weight is divided by its
largest singular value estimated as PyTorch's ``spectral_norm`` does: the stored
vectors u, v give sigma = u . (W v); in training one power iteration
u = normalize(W v), v = normalize(W^T u) runs first and updates them.
``path`` is accepted and has no effect (plain product).
"""

from __future__ import annotations

from keras import ops

from .base import AttentionLayer, linear, max_pool_by_two
from .danet import tokens
from .registry import register_layer


def _normalize(v, eps: float):
    return v / ops.maximum(ops.sqrt(ops.sum(ops.square(v))), eps)


@register_layer("sagan")
class SAGANAttention(AttentionLayer):
    """SAGAN self-attention block (options as :class:`convattn.attention.sagan.SAGANAttention`)."""

    @classmethod
    def options_from_torch(cls, module):
        return {"spectral_norm": module.spectral_norm, "path": module.path}

    def derive(self, module):
        cfg = {"sn": module.spectral_norm}
        if module.spectral_norm:
            cfg["eps"] = float(module.theta.parametrizations.weight[0].eps)
        return cfg

    def weight(self, name: str, training: bool):
        if not self.cfg["sn"]:
            w = self.v(f"{name}.weight")
            return ops.reshape(w, tuple(w.shape[:2]))
        p = f"{name}.parametrizations.weight"
        orig = self.v(f"{p}.original")
        mat = ops.reshape(orig, tuple(orig.shape[:2]))
        u_var, v_var = self.v(f"{p}.0._u"), self.v(f"{p}.0._v")
        u, v = u_var, v_var
        if training:
            m = ops.stop_gradient(mat)
            u = _normalize(ops.matmul(m, v), self.cfg["eps"])
            v = _normalize(ops.matmul(ops.transpose(m), u), self.cfg["eps"])
            u_var.assign(u)
            v_var.assign(v)
            u, v = ops.stop_gradient(u), ops.stop_gradient(v)
        sigma = ops.sum(u * ops.matmul(mat, v))
        return mat / sigma

    def attend(self, x, training):
        shape = ops.shape(x)
        flat = tokens(x)
        q = linear(flat, self.weight("theta", training))
        k_full = ops.reshape(linear(flat, self.weight("phi", training)), tuple(shape[:-1]) + (-1,))
        v_full = ops.reshape(linear(flat, self.weight("g", training)), tuple(shape[:-1]) + (-1,))
        k, v = tokens(max_pool_by_two(k_full)), tokens(max_pool_by_two(v_full))
        y = ops.matmul(ops.softmax(ops.matmul(q, ops.transpose(k, (0, 2, 1))), axis=-1), v)
        return x + self.v("sigma") * ops.reshape(linear(y, self.weight("o", training)), shape)
