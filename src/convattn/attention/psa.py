"""Polarized self-attention (PSA): a channel-only and a spatial-only branch,
composed in parallel (``psa_p``) or in sequence (``psa_s``).

Liu, Liu, Fan, Huang, "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", arXiv 2107.00782, 2021 (journal version: Neurocomputing, 2022).
Official code: DeLightCMU/PSA (``semantic-segmentation/network/PSA.py``: classes
``PSA_p`` and ``PSA_s``; there the channel-only branch is the method named
``spatial_pool`` and the spatial-only branch the one named ``channel_pool``).

X of shape (B, C, *S), N = prod(S) positions, X viewed as (B, C, N); m = C // 2,
r = m // 4. Every W is a 1x1 conv (a matrix over channels), without bias unless
a bias b is written::

    channel-only branch   A^ch(X)                                           (B, C)
        p = softmax_N(W_q^ch X)                 W_q^ch: 1 x C                (B, 1, N)
        z = (W_v^ch X) p^T                      W_v^ch: m x C                (B, m)
        official psa_p:  A^ch = sigmoid(W_z z)                               W_z: C x m
        official psa_s:  A^ch = sigmoid(W_2 relu(LN_r(W_1 z + b_1)) + b_2)   W_1: r x m, W_2: C x r
        paper:           A^ch = sigmoid(LN_C(W_z z))                         W_z: C x m

    spatial-only branch   A^sp(X)                                           (B, N)
        g = W_q^sp mean_N X  (= mean_N W_q^sp X)  W_q^sp: m x C              (B, m)
        V = W_v^sp X                            W_v^sp: m x C                (B, m, N)
        official psa_p:  A^sp = sigmoid(softmax_N(g^T V))
        official psa_s:  A^sp = sigmoid(g^T softmax_N(V))     (each row of V over the positions)
        paper:           A^sp = sigmoid(softmax_m(g)^T V)

    psa_p (parallel):    Y = X * A^ch(X) + X * A^sp(X)
    psa_s (sequential):  X1 = X * A^ch(X);  Y = X1 * A^sp(X1)

LN_k is a LayerNorm over k channels (affine, eps 1e-5). ``variant="official"``
(default) is the released code, the maths of the released Cityscapes models:
the two official classes differ in more than the layout, so each key follows its
own class. ``variant="paper"`` is the paper's Eqs. (1)-(4) and Fig. 2 for both
layouts: LayerNorm after W_z, the spatial softmax over the m channels of the
pooled query. The official code differs from the paper in three places:
``PSA_p`` has no LayerNorm in the channel branch; ``PSA_s`` replaces W_z by the
bottleneck W_1, LN, ReLU, W_2 (``ratio = 4`` on m, with biases); both put the
spatial softmax over the positions, after the product (``PSA_p``) or on V before
it (``PSA_s``), instead of over the channels of g.

Initialisation as the official ``reset_parameters``: the four query and value
weights Kaiming-normal, fan_in, ReLU gain; W_z (and the bottleneck) PyTorch's
default; LayerNorm weight 1, bias 0. (The official HRNet's ``init_weights`` then
redraws every conv weight of the network from N(0, 0.001^2); that is the
network's initialisation, not the module's.)

Parameters: official psa_p C + 4 C m (131,328 at C = 256); official psa_s
C + 3 C m + m r + r + 2 r + r C + C (111,200 at C = 256); paper C + 4 C m + 2 C.
C must leave m >= 1 (C >= 2), and the official psa_s r >= 1 (C >= 8).

Deviations from the official code, none of which changes the maths:

- shape-preserving: the official ``planes`` (output width) is the input width C;
  its unused ``kernel_size`` and ``stride`` (1) are not options;
- the 1x1 convs act on the flattened positions and are stored as ``nn.Linear``
  weights (m, C) instead of conv weights (m, C, 1, 1) (a reshape maps one onto
  the other); so 1-D and 3-D inputs work as 2-D ones (the official code is 2-D);
- the products are associated the cheap way: (W_v X) p^T = W_v (X p^T) and
  g^T (W_v X) = (W_v^T g)^T X, so no (B, m, N) tensor is formed, except in the
  official psa_s spatial branch, whose softmax acts on V itself.

Recorded maps: ``"channel"`` A^ch (B, C); ``"spatial"`` A^sp (B, *S) (in psa_s
computed from X1).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..registry import register

VARIANTS = ("official", "paper")

_PAPER = dict(
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
    authors="Liu, Liu, Fan, Huang",
    venue="Neurocomputing",
    year=2022,
    dims=(1, 2, 3),
    url="https://arxiv.org/abs/2107.00782",
)


class _PolarizedSelfAttention(AttentionModule):
    """The two branches; the subclass composes them (``layout``)."""

    layout = ""

    def __init__(self, channels: int, variant: str = "official") -> None:
        super().__init__(channels)
        owner = self._owner()
        if variant not in VARIANTS:
            raise ValueError(f"{owner}: variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        m = channels // 2
        if m < 1:
            raise ValueError(
                f"{owner}: channels={channels} leaves 0 channels for the C // 2 wide queries and values; "
                "valid: channels >= 2"
            )
        official_s = variant == "official" and self.layout == "sequential"
        if official_s and m // 4 < 1:
            raise ValueError(
                f"{owner}: channels={channels} leaves 0 channels in the official channel branch's bottleneck "
                f"(C // 2 // 4); valid: channels >= 8, or variant='paper'"
            )
        self.variant = variant
        self.ch_wq = nn.Linear(channels, 1, bias=False)
        self.ch_wv = nn.Linear(channels, m, bias=False)
        if official_s:
            r = m // 4
            self.ch_wz = nn.Sequential(nn.Linear(m, r), nn.LayerNorm(r), nn.ReLU(), nn.Linear(r, channels))
        elif variant == "official":
            self.ch_wz = nn.Linear(m, channels, bias=False)
        else:
            self.ch_wz = nn.Sequential(nn.Linear(m, channels, bias=False), nn.LayerNorm(channels))
        self.sp_wq = nn.Linear(channels, m, bias=False)
        self.sp_wv = nn.Linear(channels, m, bias=False)
        for layer in (self.ch_wq, self.ch_wv, self.sp_wq, self.sp_wv):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")

    def channel_gate(self, flat: torch.Tensor) -> torch.Tensor:
        """A^ch (B, C) from X viewed as (B, C, N)."""
        p = torch.softmax(torch.matmul(self.ch_wq.weight, flat), -1)  # (B, 1, N)
        z = self.ch_wv(torch.matmul(flat, p.transpose(1, 2)).squeeze(2))  # W_v (X p^T): (B, m)
        return torch.sigmoid(self.ch_wz(z))

    def spatial_gate(self, flat: torch.Tensor) -> torch.Tensor:
        """A^sp (B, N) from X viewed as (B, C, N)."""
        g = self.sp_wq(flat.mean(2))  # (B, m)
        if self.variant == "official" and self.layout == "sequential":
            v = torch.softmax(torch.matmul(self.sp_wv.weight, flat), -1)  # softmax_N(V): (B, m, N)
            return torch.sigmoid(torch.matmul(g.unsqueeze(1), v).squeeze(1))
        if self.variant == "paper":
            g = torch.softmax(g, -1)
        s = torch.matmul(torch.matmul(g, self.sp_wv.weight).unsqueeze(1), flat).squeeze(1)  # (W_v^T g)^T X: (B, N)
        if self.variant == "official":
            s = torch.softmax(s, -1)
        return torch.sigmoid(s)

    def _record(self, x: torch.Tensor, a_ch: torch.Tensor, a_sp: torch.Tensor) -> None:
        if self._map_sink is not None:
            self.record("channel", a_ch)
            self.record("spatial", a_sp.reshape((x.shape[0],) + tuple(x.shape[2:])))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}"


@register(
    "psa_p",
    family="self",
    equation="""
        A^ch = sigmoid(W_z (W_v X) softmax_N(W_q X)^T)                       (B, C)
        A^sp = sigmoid(softmax_N((W_q' mean_N X)^T W_v' X))                  (B, N)
        Y = X * A^ch + X * A^sp
        W_q: 1 x C, W_v, W_q', W_v': C/2 x C, W_z: C x C/2, no biases (official PSA_p);
        variant='paper': LayerNorm over C after W_z, and softmax over the C/2 channels of W_q' mean_N X
    """,
    notes="Parallel layout. variant='official' (default) is the released PSA_p class; "
          "variant='paper' the paper's equations (LayerNorm after W_z, spatial softmax over channels).",
    **_PAPER,
)
class ParallelPolarizedSelfAttention(_PolarizedSelfAttention):
    """Polarized self-attention, parallel layout: Y = X * A^ch(X) + X * A^sp(X).

    Args:
        channels: input channels C (at least 2).
        variant: ``"official"`` (the released ``PSA_p``, default) or ``"paper"``.
    """

    layout = "parallel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        flat = x.flatten(2)
        a_ch, a_sp = self.channel_gate(flat), self.spatial_gate(flat)
        self._record(x, a_ch, a_sp)
        return (flat * (a_ch.unsqueeze(2) + a_sp.unsqueeze(1))).reshape(x.shape)


@register(
    "psa_s",
    family="self",
    equation="""
        A^ch = sigmoid(W_2 relu(LN(W_1 (W_v X) softmax_N(W_q X)^T + b_1)) + b_2)   (B, C)
        X1 = X * A^ch
        A^sp = sigmoid((W_q' mean_N X1)^T softmax_N(W_v' X1))                     (B, N)
        Y = X1 * A^sp
        W_q: 1 x C, W_v, W_q', W_v': C/2 x C, W_1: C/8 x C/2, W_2: C x C/8 (official PSA_s);
        variant='paper': A^ch = sigmoid(LN(W_z z)), W_z: C x C/2, and A^sp = sigmoid(softmax_C/2(W_q' mean_N X1)^T W_v' X1)
    """,
    notes="Sequential layout. variant='official' (default) is the released PSA_s class (a C/2 -> C/8 -> C "
          "bottleneck with LayerNorm and ReLU as W_z); variant='paper' the paper's equations.",
    **_PAPER,
)
class SequentialPolarizedSelfAttention(_PolarizedSelfAttention):
    """Polarized self-attention, sequential layout: X1 = X * A^ch(X), Y = X1 * A^sp(X1).

    Args:
        channels: input channels C (at least 8 for the official variant, 2 for the paper's).
        variant: ``"official"`` (the released ``PSA_s``, default) or ``"paper"``.
    """

    layout = "sequential"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        flat = x.flatten(2)
        a_ch = self.channel_gate(flat)
        x1 = flat * a_ch.unsqueeze(2)
        a_sp = self.spatial_gate(x1)
        self._record(x, a_ch, a_sp)
        return (x1 * a_sp.unsqueeze(1)).reshape(x.shape)
