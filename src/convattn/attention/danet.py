"""DANet position attention (PAM), channel attention (CAM) and both together.

Fu, Liu, Tian, Li, Bao, Fang, Lu, "Dual Attention Network for Scene
Segmentation", CVPR 2019. Official code: junfu1115/DANet
(``encoding/nn/da_att.py``, ``encoding/models/sseg/danet.py``).

X has shape (B, C, *S) with 1, 2 or 3 spatial dims; N = prod(S); X is viewed
as (B, C, N).

PAM (``pam``)::

    Q = W_q X + b_q,  K = W_k X            (B, C/8, N)   1x1 convs
    V = W_v X + b_v                        (B, C, N)     1x1 conv
    S = softmax_rows(Q^T K)                (B, N, N)     no 1/sqrt(d) scaling
    Y = gamma * (V S^T) + X                gamma a scalar, initialised to 0

CAM (``cam``), no convolutions::

    E = X X^T                              (B, C, C)
    A = softmax_rows(rowmax(E) - E)        official code (energy="official")
      = softmax_rows(E)                    paper (energy="paper")
    Y = beta * (A X) + X                   beta a scalar, initialised to 0

Note that ``softmax(rowmax(E) - E) = softmax(-E)`` (softmax ignores a per-row
shift), so the official code attends to the *least* correlated channels, while
the paper's formula attends to the most correlated ones. We follow the code by
default because the released models were trained with it.

Deviation: the official key conv has a bias b_k; it adds q_i^T b_k to every
score of row i, which the row softmax ignores, so it never receives a gradient
and we omit it (outputs are identical). The same holds in ``pam_gate`` and for
the non-local block's phi.

DANet (``danet``): the two attentions applied to the same input in parallel,
sharing one residual::

    Y = X + gamma * (V S^T) + beta * (A X)  =  PAM(X) + CAM(X) - X

The official head puts a 3x3 conv + BN + ReLU before and after each branch and
sums the two branch outputs; those convs belong to the segmentation head, not to
a shape-preserving attention module. Summing PAM(X) + CAM(X) as they stand would
count X twice (the block would double its input at initialisation); sharing the
residual keeps the block the identity at initialisation, like each branch on its
own, and keeps both learned terms exactly as in the paper.

Memory: the position attention never holds the N x N matrix for large N; see
:mod:`convattn.layers.attention_kernel` (``path="auto" | "matmul" | "chunked" | "sdpa"``).
The matmul and chunked paths compute in the (B, C, N) layout of X
(:func:`~convattn.layers.attention_kernel.position_attention_channels`): the three
convs as one product, and X + gamma V S^T as one product seeded with X; a
backward with ``create_graph=True`` (second derivatives) holds the N x N matrix.

Maps recorded under :func:`convattn.capture_maps`:

- ``pam``: "spatial" (B, *S), the mean attention each position receives
  ((1/N) sum_i S_ij, a distribution over positions); with
  ``capture_maps(model, query=q)`` (q a flat index or a coordinate tuple) also
  "query_row" (B, *S), the attention row of that query. The full N x N matrix is
  never recorded.
- ``cam``: "channel_matrix" (B, C, C), the matrix A.
- ``danet``: its two children record under ``<path>.pam`` and ``<path>.cam``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..layers.attention_kernel import (
    attention,
    check_path,
    position_attention_channels,
    qk_width,
    record_position_maps,
    select_path,
    tokens_from,
)
from ..registry import register

ENERGIES = ("official", "paper")


class _PositionAttention(AttentionModule):
    """Shared by PAM and DANet: the convs, gamma, and X + gamma * (V S^T) with or without X."""

    def _build_position(self, channels: int, reduction: float, path: str) -> None:
        width = hidden_channels(self._owner(), channels, reduction)
        self.path = check_path(self._owner(), path)
        # 1x1 convs on the flattened (B, C, N) view work for every spatial dim
        self.query_conv = nn.Conv1d(channels, width, 1)
        self.key_conv = nn.Conv1d(channels, width, 1, bias=False)
        self.value_conv = nn.Conv1d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def position_term(self, x: torch.Tensor) -> torch.Tensor:
        """gamma * (V S^T), shape of ``x``."""
        return position_attention(self, x, residual=False).reshape(x.shape)

    def residual_position(self, x: torch.Tensor) -> torch.Tensor:
        """X + gamma * (V S^T), shape of ``x`` (the residual add fused into the last product)."""
        return position_attention(self, x).reshape(x.shape)


def _stacked_projections(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """[W_q; W_k; gamma W_v] and [b_q; 0; gamma b_v]: the three 1x1 convs as one product.

    gamma is folded into V's rows, gamma (V S^T) = (gamma V) S^T, at the cost of a
    C x C product instead of a (B, C, N) one.
    """
    convs = (m.query_conv, m.key_conv, m.value_conv)
    ref = m.value_conv.weight
    weight = torch.cat([m.query_conv.weight, m.key_conv.weight, m.value_conv.weight * m.gamma]).squeeze(-1)
    biases = [c.bias if c.bias is not None else ref.new_zeros(c.out_channels) for c in convs]
    biases[2] = biases[2] * m.gamma
    return weight, torch.cat(biases)


def position_attention(m: nn.Module, x: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """DANet's position attention, shared by ``pam``, ``danet`` and ``pam_gate``.

    ``m`` has ``query_conv``, ``key_conv``, ``value_conv``, ``gamma``, ``channels``
    and ``path``. Returns X + gamma * V S^T (``residual=False``: gamma * V S^T)
    as (B, C, N).

    The matmul and chunked paths run :func:`position_attention_channels` (the layout
    of X, the three projections as one product, the residual fused, in-place
    softmax; while tracing or compiling, the matmul path's products as plain ops).
    The SDPA path (also the chunked path while tracing or compiling: one op
    without the N x N matrix) computes tokens (B, N, .) and calls :func:`attention`.
    """
    flat = x.flatten(2)
    n = flat.shape[-1]
    d = m.query_conv.out_channels
    chosen = select_path(n, n, m.path)
    if getattr(m, "_map_sink", None) is not None:
        # the maps need Q and K as tokens; computed only while a capture is active
        record_position_maps(
            m, tokens_from(m.query_conv, flat), tokens_from(m.key_conv, flat), scale=1.0, spatial=tuple(x.shape[2:])
        )
    if chosen != "sdpa":  # while tracing, select_path has made "chunked" into "sdpa"
        weight, bias = _stacked_projections(m)
        return position_attention_channels(flat, weight, bias, d, path=chosen, residual=residual)
    # q and k are projected straight to C columns (zero-padded) when SDPA will run
    w = qk_width(n, n, d, m.channels, m.path)
    q = tokens_from(m.query_conv, flat, w)
    k = tokens_from(m.key_conv, flat, w)
    # gamma folded into V's weights: gamma (V S^T) = (gamma V) S^T, no (B, N, C) product
    v = tokens_from(m.value_conv, flat, scale=m.gamma)
    out = attention(q, k, v, scale=1.0, path=chosen).transpose(1, 2)
    return flat + out if residual else out


@register(
    "pam",
    family="self",
    paper="Dual Attention Network for Scene Segmentation (position attention module)",
    authors="Fu, Liu, Tian, Li, Bao, Fang, Lu",
    venue="CVPR",
    year=2019,
    equation="""
        Q, K = 1x1 conv C -> C/8,  V = 1x1 conv C -> C     (B, ., N)
        S = softmax_rows(Q^T K)                            (B, N, N), no scaling
        Y = gamma * (V S^T) + X,  gamma = 0 at init
    """,
    url="https://arxiv.org/abs/1809.02983",
    notes="Linear memory at large N (chunked softmax attention with recomputation in the backward).",
)
class PAM(_PositionAttention):
    """DANet position attention.

    Args:
        channels: input channels C.
        reduction: query/key width ``C // reduction`` (default 8, the official code's).
        path: attention kernel, ``"auto"`` (by size), ``"matmul"``, ``"chunked"`` or ``"sdpa"``.
    """

    def __init__(self, channels: int, reduction: float = 8, path: str = "auto") -> None:
        super().__init__(channels)
        self._build_position(channels, reduction, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.residual_position(x)


class _ChannelAttention(AttentionModule):
    def _build_channel(self, energy: str) -> None:
        if energy not in ENERGIES:
            raise ValueError(f"{self._owner()}: energy must be one of {ENERGIES}, got {energy!r}")
        self.energy = energy
        self.beta = nn.Parameter(torch.zeros(1))

    def channel_term(self, x: torch.Tensor) -> torch.Tensor:
        """beta * (A X), shape of ``x``."""
        flat = x.flatten(2)
        e = torch.bmm(flat, flat.transpose(1, 2))
        if self.energy == "official":
            e = e.amax(-1, keepdim=True) - e
        a = torch.softmax(e, dim=-1)
        self.record("channel_matrix", a)
        return self.beta * torch.bmm(a, flat).reshape(x.shape)


@register(
    "cam",
    family="self",
    paper="Dual Attention Network for Scene Segmentation (channel attention module)",
    authors="Fu, Liu, Tian, Li, Bao, Fang, Lu",
    venue="CVPR",
    year=2019,
    equation="""
        E = X X^T                                   (B, C, C)
        A = softmax_rows(rowmax(E) - E)   (official code; paper: softmax_rows(E))
        Y = beta * (A X) + X,  beta = 0 at init
    """,
    url="https://arxiv.org/abs/1809.02983",
)
class CAM(_ChannelAttention):
    """DANet channel attention (no parameters but the scale ``beta``).

    Args:
        channels: input channels C.
        energy: ``"official"`` (softmax(rowmax(E) - E), the released code) or
            ``"paper"`` (softmax(E)).
    """

    def __init__(self, channels: int, energy: str = "official") -> None:
        super().__init__(channels)
        self._build_channel(energy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x + self.channel_term(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, energy={self.energy!r}"


@register(
    "danet",
    family="self",
    paper="Dual Attention Network for Scene Segmentation",
    authors="Fu, Liu, Tian, Li, Bao, Fang, Lu",
    venue="CVPR",
    year=2019,
    equation="""
        Y = X + gamma * (V S^T) + beta * (A X)  =  PAM(X) + CAM(X) - X
        (one shared residual; gamma = beta = 0 at init, so Y = X)
    """,
    url="https://arxiv.org/abs/1809.02983",
    notes="The head's 3x3 convs around each branch are not part of the module.",
)
class DANet(AttentionModule):
    """PAM and CAM in parallel on the same input, with one shared residual.

    Args:
        channels: input channels C.
        reduction: PAM query/key width ``C // reduction`` (default 8).
        energy: CAM energy, ``"official"`` or ``"paper"``.
        path: PAM attention kernel, ``"auto"``, ``"matmul"``, ``"chunked"`` or ``"sdpa"``.
    """

    def __init__(self, channels: int, reduction: float = 8, energy: str = "official", path: str = "auto") -> None:
        super().__init__(channels)
        self.pam = PAM(channels, reduction=reduction, path=path)
        self.cam = CAM(channels, energy=energy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.pam.residual_position(x) + self.cam.channel_term(x)
