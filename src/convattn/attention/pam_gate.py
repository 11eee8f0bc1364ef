"""Position self-attention followed by a channel gate: the project brief's listing, made to run.

Source: the project's original brief (``shared/seed/``, section 4), a PyTorch
listing ``AttentionModule = SpatialAttentionModule * ChannelAttentionModule``.
Its position branch is DANet's position attention (Fu et al., "Dual Attention
Network for Scene Segmentation", CVPR 2019) without the residual; its channel
branch is CBAM's channel gate (Woo et al., "CBAM", ECCV 2018).

The listing as printed cannot run: its position branch projects the values to
C/8 channels (``conv3 = Conv2d(C, C // 8, 1)``) and returns that (B, C/8, H, W)
tensor, which is then multiplied by the (B, C, 1, 1) channel gate; C/8 and C
do not broadcast (a RuntimeError for every C >= 16). It also returns the
position output without the input, so the block would replace the features
rather than refine them.

What we changed, and why:

1. V projects C -> C (as in DANet's PAM), so the position output has C
   channels and the product with the channel gate is defined.
2. The position output is added to the input with a scalar scale gamma
   initialised to 0 (DANet's residual), so the features are kept and training
   starts from a plain channel gate.
3. Everything else is the listing's: Q, K = 1x1 convs C -> C/8 (the key bias, a no-op under the row softmax, is omitted), the
   unscaled softmax(Q^T K), and the channel gate sigma(MLP(avgpool X) +
   MLP(maxpool X)) with a shared bias-free MLP C -> C/16 -> C and ReLU, computed
   from the block's input X as in the listing (both branches read X).

Forward, X of shape (B, C, *S) with 1, 2 or 3 spatial dims, N = prod(S)::

    Q, K = W_q X + b_q, W_k X            (B, C/8, N)   (the listing's key bias is a
                                                        no-op under the row softmax: omitted)
    V = W_v X + b_v                      (B, C, N)
    P = X + gamma * (V softmax_rows(Q^T K)^T)      gamma = 0 at init
    m = sigmoid(W_2 relu(W_1 GAP(X)) + W_2 relu(W_1 GMP(X)))    (B, C)
    Y = P * m

Memory: the position attention uses :mod:`convattn.layers.attention_kernel`
(``path="auto" | "matmul" | "chunked" | "sdpa"``), so it never holds the N x N matrix at
large N.

Maps recorded under :func:`convattn.capture_maps`: "spatial" (B, *S), the mean
attention each position receives; "query_row" (B, *S) with
``capture_maps(model, query=q)``; "channel" (B, C), the gate m.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels, spatial_amax, spatial_mean, unsqueeze_spatial
from ..layers.attention_kernel import (
    check_path,
)
from ..registry import register
from .danet import position_attention


@register(
    "pam_gate",
    family="self",
    paper="Project brief listing (DANet position attention x CBAM channel gate), made to run",
    authors="convattn (after Fu et al. 2019 and Woo et al. 2018)",
    venue="convattn project brief",
    year=2026,
    equation="""
        P = X + gamma * (V softmax_rows(Q^T K)^T),  Q, K: C -> C/8, V: C -> C, gamma = 0 at init
        m = sigmoid(MLP(GAP X) + MLP(GMP X)),  MLP: C -> C/16 -> C, no bias
        Y = P * m
    """,
    notes="The listing multiplies a C/8-channel output by a C-channel gate; V now maps C -> C.",
)
class PAMGate(AttentionModule):
    """The brief's position-attention x channel-gate block, fixed.

    Args:
        channels: input channels C.
        reduction: channel-gate hidden width ``C // reduction`` (default 16, the listing's).
        qk_reduction: query/key width ``C // qk_reduction`` (default 8, the listing's).
        path: attention kernel, ``"auto"``, ``"matmul"``, ``"chunked"`` or ``"sdpa"``.
    """

    def __init__(self, channels: int, reduction: float = 16, qk_reduction: float = 8, path: str = "auto") -> None:
        super().__init__(channels)
        owner = self._owner()
        qk = hidden_channels(owner, channels, qk_reduction)
        hidden = hidden_channels(owner, channels, reduction)
        self.path = check_path(owner, path)
        self.query_conv = nn.Conv1d(channels, qk, 1)
        self.key_conv = nn.Conv1d(channels, qk, 1, bias=False)
        self.value_conv = nn.Conv1d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel gate m, shape (B, C)."""
        mlp = lambda z: self.fc2(F.relu(self.fc1(z)))  # noqa: E731
        return torch.sigmoid(mlp(spatial_mean(x)) + mlp(spatial_amax(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        p = position_attention(self, x).reshape(x.shape)
        m = self.gate(x)
        self.record("channel", m)
        return p * unsqueeze_spatial(m, x.dim() - 2)
