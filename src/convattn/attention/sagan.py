"""SAGAN self-attention.

Zhang, Goodfellow, Metaxas, Odena, "Self-Attention Generative Adversarial
Networks", ICML 2019. Official code: brain-research/self-attention-gan
(``non_local.py``, ``sn_non_local_block_sim``, TensorFlow).

As the official code, X of shape (B, C, *S), N = prod(S), M = prod(pooled S)::

    theta = W_theta X                      (B, C/8, N)   1x1 conv, no bias
    phi   = MaxPool(W_phi X)               (B, C/8, M)   conv, then 2x2 max-pool
    g     = MaxPool(W_g X)                 (B, C/2, M)
    beta  = softmax_j(theta_i^T phi_j)     (B, N, M)     no scaling
    Y     = X + sigma * W_o (beta g^T)     W_o: 1x1 conv C/2 -> C, no bias; sigma = 0 at init

The paper's text describes f, g, h all mapping to C/8 without pooling; the
released code (followed here, as BigGAN also does) uses C/8, C/8, C/2 with the
2x2 max-pool. For 1-D and 3-D inputs the 2x2 max-pool generalises to a max-pool
of 2 in every spatial dim (ceil mode, so an odd size keeps its last row instead
of the official code's requirement of even sizes). The convs are
Xavier-initialised as in the official code. The official code wraps every conv
in spectral normalisation (for GAN training); here that is
``spectral_norm=True`` (default off, since in a classifier it only rescales the
weights; ``torch.nn.utils.parametrizations.spectral_norm`` with one power
iteration per training forward).

Memory: :mod:`convattn.layers.attention_kernel` (``path="auto" | "matmul" |
"chunked" | "sdpa"``) never holds the N x M matrix at large N.

Maps recorded under :func:`convattn.capture_maps`: "spatial" (B, *S), the mean
attention each pooled key position receives, (1/N) sum_i beta_ij, spread evenly
over the input positions of its pooling cell (so the map sums to 1); with
``capture_maps(model, query=q)`` also "query_row" (B, *S), the row beta_q,
spread the same way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ..layers import AttentionModule, hidden_channels
from ..layers.attention_kernel import (
    attention,
    channels_from,
    check_path,
    qk_width,
    record_position_maps,
    tokens_from,
)
from ..registry import register
from .nonlocal_block import max_pool_by_two


@register(
    "sagan",
    family="self",
    paper="Self-Attention Generative Adversarial Networks",
    authors="Zhang, Goodfellow, Metaxas, Odena",
    venue="ICML",
    year=2019,
    equation="""
        theta = W_t X (C/8),  phi = MaxPool(W_p X) (C/8),  g = MaxPool(W_g X) (C/2)
        beta = softmax_j(theta_i^T phi_j)          (no scaling)
        Y = X + sigma * W_o (beta g^T),  W_o: C/2 -> C,  sigma = 0 at init
    """,
    url="https://arxiv.org/abs/1805.08318",
    notes="As the official code (C/8, C/8, C/2, 2x max-pool); the code's spectral norm is spectral_norm=True (default off).",
)
class SAGANAttention(AttentionModule):
    """SAGAN self-attention block.

    Args:
        channels: input channels C (at least 8).
        spectral_norm: wrap the four convs in spectral normalisation (official: on).
        path: attention kernel, ``"auto"``, ``"matmul"``, ``"chunked"`` or ``"sdpa"``.
    """

    def __init__(self, channels: int, spectral_norm: bool = False, path: str = "auto") -> None:
        super().__init__(channels)
        owner = self._owner()
        if not isinstance(spectral_norm, bool):
            raise ValueError(f"{owner}: spectral_norm must be True or False, got {spectral_norm!r}")
        qk = hidden_channels(owner, channels, 8)
        half = hidden_channels(owner, channels, 2)
        self.path = check_path(owner, path)
        self.spectral_norm = spectral_norm
        # the widths, kept so that forward reads each (spectral-normed) weight once: every
        # read of a parametrized weight runs a power iteration in training mode
        self.qk_channels, self.half_channels = qk, half
        convs = {
            "theta": nn.Conv1d(channels, qk, 1, bias=False),
            "phi": nn.Conv1d(channels, qk, 1, bias=False),
            "g": nn.Conv1d(channels, half, 1, bias=False),
            "o": nn.Conv1d(half, channels, 1, bias=False),
        }
        for name, conv in convs.items():
            nn.init.xavier_uniform_(conv.weight)
            setattr(self, name, _spectral_norm(conv) if spectral_norm else conv)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spatial = tuple(x.shape[2:])
        flat = x.flatten(2)
        n_keys = 1
        for size in spatial:
            n_keys *= (size + 1) // 2
        # theta and phi projected straight to C/2 columns (zero-padded) when SDPA will run
        w = qk_width(flat.shape[-1], n_keys, self.qk_channels, self.half_channels, self.path)
        q = tokens_from(self.theta, flat, w)
        k_tokens, v_tokens = tokens_from(self.phi, flat, w), tokens_from(self.g, flat)
        k_full = k_tokens.transpose(1, 2).reshape((x.shape[0], k_tokens.shape[-1]) + spatial)
        v_full = v_tokens.transpose(1, 2).reshape((x.shape[0], v_tokens.shape[-1]) + spatial)
        k_pooled = max_pool_by_two(k_full)
        key_spatial = tuple(k_pooled.shape[2:])
        k = k_pooled.flatten(2).transpose(1, 2)
        v = max_pool_by_two(v_full).flatten(2).transpose(1, 2)
        y = attention(q, k, v, scale=1.0, path=self.path)
        record_position_maps(self, q, k, scale=1.0, spatial=spatial, key_spatial=key_spatial)
        return x + self.sigma * channels_from(self.o, y).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spectral_norm={self.spectral_norm}, path={self.path!r}"
