"""CPCA: Channel Prior Convolutional Attention.

Huang, Chen, Zou, Lu, Chen, "Channel prior convolutional attention for medical
image segmentation", Computers in Biology and Medicine 2024 (arXiv 2306.05196).
Official code: Cuthbert-Huang/CPCANet
(``CPCANet/nnunet/network_architecture/CPCANet.py``, ``RepBlock`` with its
``ChannelAttention``); the same maths is in HZAI-ZJNU/SCSA
(``mmpretrain/models/attentions/CPCA.py``, ``CPCA``).

Forward, X of shape (B, C, H, W) (2-D only); P is one 1x1 conv C -> C with bias,
the *same* weights used three times::

    U   = GELU(P X)                                                   (B, C, H, W)
    channel prior
        MLP(z) = W2 relu(W1 z + b1) + b2,  W1: h x C, W2: C x h, h = C // r (shared)
        M_c = sigmoid(MLP(GAP U)) + sigmoid(MLP(GMP U))               (B, C), in (0, 2)
    V   = U * M_c                                                     (B, C, H, W)
    spatial prior (depthwise convs with bias, zero padding keeping the size)
        D0 = DW_5x5(V)
        D  = D0 + sum_{k = 7, 11, 21} DW_kx1(DW_1xk(D0))              (1 x k first, then k x 1)
        M_s = P D                                                     (B, C, H, W), not squashed
    Y   = P (V * M_s)                                                 (B, C, H, W)

Note the two sigmoids are added (not the sigmoid of a sum, as in CBAM), and that Y
is a 1x1 conv of the gated features rather than X times a gate; CPCANet's block puts
a BatchNorm before this and a residual connection around it.

Defaults as the official code: r = 4 (the ``channelAttention_reduce`` default of
``RepBlock``, ``Block`` and every CPCANet stage; the released CPCANet configs pass 8
(ISIC) and 16 (ACDC), and SCSA's ``CPCA`` uses 16), GELU exact (erf), ReLU in the
MLP, biases everywhere. Parameters: P C^2 + C; MLP 2 C h + h + C; depthwise 5x5 26 C
and the strip pairs 2 (8 + 12 + 22) C: in all C^2 + 2 C h + h + 112 C
(127,040 at C = 256, r = 4). The parameter names are the official ``RepBlock``'s
(``conv``, ``ca.fc1``, ``ca.fc2``, ``dconv5_5``, ``dconv1_7``, ...), so an official
state dict loads as it is. No deviation from the official maths.

Recorded maps: ``"channel"`` M_c (B, C) (values in (0, 2)); ``"spatial"`` (B, H, W)
= mean_C M_s (the real map is per channel and not bounded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..registry import register

#: the strip-conv pairs' lengths (official)
STRIPS = (7, 11, 21)


def _depthwise(channels: int, kernel_size: tuple[int, int]) -> nn.Conv2d:
    padding = (kernel_size[0] // 2, kernel_size[1] // 2)
    return nn.Conv2d(channels, channels, kernel_size, padding=padding, groups=channels)


@register(
    "cpca",
    family="combined",
    paper="Channel prior convolutional attention for medical image segmentation",
    authors="Huang, Chen, Zou, Lu, Chen",
    venue="Computers in Biology and Medicine",
    year=2024,
    dims=(2,),
    equation="""
        U = GELU(P X),  P a 1x1 conv (one set of weights, used three times)
        M_c = sigmoid(MLP(GAP U)) + sigmoid(MLP(GMP U)),  MLP C -> C/r -> C, relu, r = 4
        V = U * M_c
        D0 = DW5x5(V),  D = D0 + sum_{k in 7, 11, 21} DW_kx1(DW_1xk(D0))
        Y = P(V * P D)
    """,
    url="https://arxiv.org/abs/2306.05196",
    notes="r = 4 (the official RepBlock default; CPCANet's configs use 8 and 16, SCSA's CPCA 16); "
          "Y is a 1x1 conv of the gated features; official parameter names.",
)
class ChannelPriorConvAttention(AttentionModule):
    """Channel prior convolutional attention (2-D).

    Args:
        channels: input channels C.
        reduction: r, hidden width ``C // r`` of the channel MLP (default 4, official).
        hidden: explicit hidden width of the channel MLP (overrides ``reduction``).
    """

    def __init__(self, channels: int, reduction: float = 4, hidden: int | None = None) -> None:
        super().__init__(channels)
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.ca = nn.ModuleDict({"fc1": nn.Conv2d(channels, width, 1), "fc2": nn.Conv2d(width, channels, 1)})
        self.dconv5_5 = _depthwise(channels, (5, 5))
        for k in STRIPS:
            setattr(self, f"dconv1_{k}", _depthwise(channels, (1, k)))
            setattr(self, f"dconv{k}_1", _depthwise(channels, (k, 1)))

    def _mlp(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.ca["fc2"](F.relu(self.ca["fc1"](z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u = F.gelu(self.conv(x))
        m_c = self._mlp(u.mean((2, 3), keepdim=True)) + self._mlp(u.amax((2, 3), keepdim=True))  # (B, C, 1, 1)
        v = u * m_c
        d0 = self.dconv5_5(v)
        d = d0
        for k in STRIPS:
            d = d + getattr(self, f"dconv{k}_1")(getattr(self, f"dconv1_{k}")(d0))
        m_s = self.conv(d)
        if self._map_sink is not None:
            self.record("channel", m_c.flatten(1))
            self.record("spatial", m_s.mean(1))
        return self.conv(v * m_s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.ca['fc1'].out_channels}"
