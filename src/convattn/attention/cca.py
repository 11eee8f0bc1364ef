"""Criss-cross attention (CCNet), applied ``recurrence`` times with shared weights.

Huang, Wang, Huang, Huang, Wei, Liu, "CCNet: Criss-Cross Attention for Semantic
Segmentation", ICCV 2019. Official code: speedinghzl/CCNet
(``cc_attention/functions.py``: ``CrissCrossAttention``, a CUDA kernel in the
``pytorch-1.1`` branch and a pure-PyTorch version on ``master``;
``networks/ccnet.py``: ``RCCAModule``); mmcv ``mmcv/ops/cc_attention.py`` is the
same maths in einsums.

X of shape (B, C, H, W) (2-D only: the criss-cross is a row and a column). One
criss-cross step, for the pixel u = (h, w)::

    Q = W_q X + b_q,  K = W_k X + b_k       (B, C/8, H, W)   1x1 convs
    V = W_v X + b_v                          (B, C, H, W)     1x1 conv
    e_u,(h, j) = Q_u . K_(h, j)              j = 1..W         its row (u itself included)
    e_u,(g, w) = Q_u . K_(g, w)              g = 1..H, g != h its column (u excluded)
    A_u = softmax over the H + W - 1 energies jointly
    CCA(X)_u = gamma * (sum_j A_u,(h, j) V_(h, j) + sum_{g != h} A_u,(g, w) V_(g, w)) + X_u

u lies on its row and on its column; it is counted once, on the row: the CUDA
kernel's energies run over W + (H - 1) positions, the pure-PyTorch version adds
-inf to the column's diagonal before one softmax over H + W entries. Both
versions are this equation; the order of the entries does not matter.

Recurrent criss-cross attention (RCCA), R = ``recurrence`` (default 2, the
paper's and the released models')::

    Y = CCA(CCA(... CCA(X)))   (R times, the same weights)

Two steps let every pixel reach every other (through the pixel at its row's and
the other's column's crossing). In the official code the loop lives in the head
(``RCCAModule.forward``: ``for i in range(recurrence): output = self.cca(output)``,
between its 3x3 ``conva``/``convb`` convs, with ``recurrence`` a command-line
argument, 2 in the README's commands); here it lives inside the module, so that
the shape-preserving block is the whole RCCA; ``recurrence=1`` is the official
``CrissCrossAttention`` class on its own. The head's convs are not part of the
module.

Defaults and parameters as the official class: q/k width C // 8 (``reduction``),
biases on all three convs, gamma a scalar initialised to 0 (so Y = X at
initialisation, for every R); (C/8) C + C/8 twice, C^2 + C, and 1 for gamma
(C^2 / 4 + C^2 + C / 4 + C + 1: 82,241 at C = 256). Parameter names and shapes
are the official ones (``query_conv``, ``key_conv``, ``value_conv``, ``gamma``), so
an official state dict loads as it is. The key bias b_k only adds Q_u . b_k to all
H + W - 1 energies of u, which the softmax ignores: it changes no output and
receives no gradient; it is kept for the official parameter count and state dict.
The three convs run as one batched product (:meth:`CrissCrossAttention.projections`),
the same maths as the three convs.

Memory: the energies and attention of a step are (B, H, W, H + W), computed as
one einsum over each pixel's column and one over its row; no (HW) x (HW) matrix
exists, so a step holds O(B H W (H + W)) values beside the O(B C H W) features.

Recorded maps (the last step's attention, under :func:`convattn.capture_maps`):
"spatial" (B, H, W), the mean attention each position receives
((1 / HW) sum_u A_u,., a distribution over the positions); with
``capture_maps(model, query=q)`` (a flat index or an (h, w) tuple) also
"query_row" (B, H, W), A_q spread over q's row and column (0 elsewhere).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..layers.attention_kernel import flat_query_index
from ..registry import register


@register(
    "cca",
    family="self",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation",
    authors="Huang, Wang, Huang, Huang, Wei, Liu",
    venue="ICCV",
    year=2019,
    dims=(2,),
    equation="""
        Q, K = 1x1 conv C -> C/8,  V = 1x1 conv C -> C   (biases)
        for u = (h, w): energies Q_u . K over u's row (W) and column without u (H - 1)
        A_u = softmax over the H + W - 1 energies
        CCA(X)_u = gamma * sum A_u V (over the criss-cross) + X_u,  gamma = 0 at init
        Y = CCA applied R = 2 times with the same weights (recurrence)
    """,
    url="https://arxiv.org/abs/1811.11721",
    notes="The official RCCA recurrence (R = 2) inside the module; memory O(B H W (H + W)), never an "
          "HW x HW matrix.",
)
class CrissCrossAttention(AttentionModule):
    """Recurrent criss-cross attention (2-D).

    Args:
        channels: input channels C.
        reduction: query/key width ``C // reduction`` (default 8, the official code's).
        hidden: explicit query/key width (overrides ``reduction``).
        recurrence: R, how many times the attention (the same weights) is applied
            (default 2, the paper's).
    """

    def __init__(self, channels: int, reduction: float = 8, hidden: int | None = None, recurrence: int = 2) -> None:
        super().__init__(channels)
        owner = self._owner()
        width = hidden_channels(owner, channels, reduction, hidden)
        if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
            raise ValueError(
                f"{owner}: recurrence must be a positive int (how many times the shared attention is applied), "
                f"got {recurrence!r}"
            )
        self.recurrence = recurrence
        self.query_conv = nn.Conv2d(channels, width, 1)
        self.key_conv = nn.Conv2d(channels, width, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K (B, C/8, H, W) and V (B, C, H, W): the three 1x1 convs as one product.

        Done with a per-sample batched matmul rather than the convolution kernel: oneDNN
        picks its algorithm by batch size, which makes a sample's result depend on the
        batch it is in (by ~1e-6, amplified by the softmax); ``baddbmm`` computes each
        sample the same way in any batch.
        """
        convs = (self.query_conv, self.key_conv, self.value_conv)
        weight = torch.cat([c.weight[:, :, 0, 0] for c in convs])  # (2 C/8 + C, C)
        bias = torch.cat([c.bias for c in convs])
        flat = x.flatten(2)
        B, N = flat.shape[0], flat.shape[2]
        qkv = torch.baddbmm(bias[:, None].expand(B, -1, N), weight.expand(B, -1, -1), flat)
        d = self.query_conv.out_channels
        q, k, v = torch.split(qkv.view(x.shape[0], 2 * d + self.channels, x.shape[2], x.shape[3]), [d, d, self.channels], 1)
        return q, k, v

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A over each pixel's column and row: (B, H, W, H) (0 at the pixel itself) and (B, H, W, W)."""
        H, W = q.shape[2], q.shape[3]
        e_col = torch.einsum("bdhw,bdgw->bhwg", q, k)  # query (h, w), key (g, w)
        e_row = torch.einsum("bdhw,bdhj->bhwj", q, k)  # query (h, w), key (h, j)
        rows = torch.arange(H, device=q.device)
        itself = (rows[:, None] == rows[None, :]).unsqueeze(1)  # (H, 1, H): g == h
        e_col = e_col.masked_fill(itself, float("-inf"))
        a_col, a_row = torch.split(torch.softmax(torch.cat((e_col, e_row), 3), 3), [H, W], 3)
        return a_col, a_row

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross attention: gamma * (A V) + X."""
        q, k, v = self.projections(x)
        a_col, a_row = self.attention(q, k)
        out = torch.einsum("bcgw,bhwg->bchw", v, a_col) + torch.einsum("bchj,bhwj->bchw", v, a_row)
        if self._map_sink is not None:
            self._record_maps(a_col, a_row)
        return self.gamma * out + x

    def _record_maps(self, a_col: torch.Tensor, a_row: torch.Tensor) -> None:
        B, H, W = a_col.shape[:3]
        # position (g, w) receives sum_h a_col[h, w, g]; position (h, j) receives sum_w a_row[h, w, j]
        received = a_col.sum(1).transpose(1, 2) + a_row.sum(2)
        self.record("spatial", received / (H * W))
        query = self._map_sink.options.get("query")
        if query is not None:
            idx = flat_query_index(self._owner(), query, (H, W))
            h, w = divmod(idx, W)
            row = a_col.new_zeros(B, H, W)
            row[:, h, :] = a_row[:, h, w, :]
            row[:, :, w] += a_col[:, h, w, :]  # 0 at (h, w) itself
            self.record("query_row", row)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for _ in range(self.recurrence):
            x = self.step(x)
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.query_conv.out_channels}, recurrence={self.recurrence}"
