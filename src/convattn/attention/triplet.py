"""Triplet Attention.

Misra, Nalamada, Arasanipalai, Hou, "Rotate to Attend: Convolutional Triplet
Attention Module", WACV 2021. Official code: landskape-ai/triplet-attention
(``MODELS/triplet_attention.py``).

One gate, applied to three "rotations" of X of shape (B, C, H, W)::

    Gate(T) = T * sigmoid(BN(Conv_kxk^{2->1}(Z(T)))),  Z(T) = [max_1 T; mean_1 T]
              (max / mean over dim 1 of T; conv without bias, padding (k-1)/2)

    Y1 = Gate_cw(X.permute(0,2,1,3)).permute(0,2,1,3)   pools over H; gate on the (C, W) plane
    Y2 = Gate_hc(X.permute(0,3,2,1)).permute(0,3,2,1)   pools over W; gate on the (H, C) plane
    Y3 = Gate_hw(X)                                     pools over C; gate on the (H, W) plane
    Y  = (Y1 + Y2 + Y3) / 3

Every branch is X times a map broadcast along the pooled axis, so we compute
Y = X * (a_cw + a_hc + a_hw) / 3 with a_cw (B, C, 1, W), a_hc (B, C, H, 1) and
a_hw (B, 1, H, W), pooling X over H, W and C directly: no permuted copies of X.

Defaults as the official code: k = 7, conv without bias, BatchNorm2d(1) with
eps 1e-5 and ``momentum=0.01`` (passed to PyTorch's BatchNorm, i.e. the PyTorch
convention: running = 0.99 running + 0.01 batch), no ReLU, max pooled map first.
Parameters: 3 x (2 k^2 + 2) = 300 for k = 7. ``no_spatial=True`` (an official
option) drops the H x W branch and averages the other two: Y = (Y1 + Y2) / 2.
Parameter names differ from the official checkpoint (``cw.conv.weight`` here vs
``cw.conv.conv.weight`` there; the BN is ``cw.bn``).

Max gradients split evenly among ties, as ``amax`` does (the official
``torch.max(T, 1)[0]`` routes a tie's gradient to one element: both are
subgradients). A fast CPU implementation of this maths is registered in
:mod:`convattn.fast.triplet`.

Recorded maps: ``"spatial"`` (B, H, W) = the H x W branch's gate (absent with
``no_spatial``), ``"cw"`` (B, C, W) = the C x W branch's gate and ``"hc"``
(B, H, C) = the H x C branch's gate, each in its branch's own layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..registry import register


class ZPoolGate(nn.Module):
    """sigmoid(BN(Conv_kxk(Z))) for a pooled (B, 2, P, Q) map Z -> (B, 1, P, Q)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.bn(self.conv(z)))


def z_pools(x: torch.Tensor, with_c: bool) -> list[torch.Tensor]:
    """[Z_cw (B, 2, C, W), Z_hc (B, 2, H, C)(, Z_hw (B, 2, H, W))]: the [max; mean]
    maps of the three rotations, pooled over H, W and C of X directly."""
    z = [torch.stack((x.amax(2), x.mean(2)), 1), torch.stack((x.amax(3), x.mean(3)), 1).transpose(2, 3)]
    if with_c:
        z.append(torch.stack((x.amax(1), x.mean(1)), 1))
    return z


@register(
    "triplet",
    family="combined",
    paper="Rotate to Attend: Convolutional Triplet Attention Module",
    authors="Misra, Nalamada, Arasanipalai, Hou",
    venue="WACV",
    year=2021,
    dims=(2,),
    equation="""
        Gate(T) = T * sigmoid(BN(Conv7x7([max_1 T; mean_1 T])))
        Y1 = Gate(X^{(0,2,1,3)})^{(0,2,1,3)},  Y2 = Gate(X^{(0,3,2,1)})^{(0,3,2,1)},  Y3 = Gate(X)
        Y = (Y1 + Y2 + Y3) / 3
    """,
    url="https://arxiv.org/abs/2010.03045",
)
class TripletAttention(AttentionModule):
    """Triplet attention (2-D).

    Args:
        channels: input channels C (checked; the parameters do not depend on C).
        kernel_size: k of the three k x k gate convs (odd, default 7).
        no_spatial: drop the H x W branch (official option, default False).
    """

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False) -> None:
        super().__init__(channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self._owner()}: kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(no_spatial, bool):
            raise ValueError(f"{self._owner()}: no_spatial must be True or False, got {no_spatial!r}")
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.cw = ZPoolGate(kernel_size)
        self.hc = ZPoolGate(kernel_size)
        self.hw = None if no_spatial else ZPoolGate(kernel_size)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The three maps in their branch layouts: (B, C, W), (B, H, C), (B, H, W) or None."""
        z = z_pools(x, self.hw is not None)
        a_cw = self.cw(z[0]).squeeze(1)  # plane (C, W)
        a_hc = self.hc(z[1]).squeeze(1)  # plane (H, C)
        a_hw = None if self.hw is None else self.hw(z[2]).squeeze(1)  # plane (H, W)
        return a_cw, a_hc, a_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a_cw, a_hc, a_hw = self.gates(x)
        if self._map_sink is not None:
            self.record("cw", a_cw)
            self.record("hc", a_hc)
            if a_hw is not None:
                self.record("spatial", a_hw)
        # Y = (Y1 + Y2 + Y3) / 3 = X * (a_cw + a_hc + a_hw) / 3, each map broadcast to X
        g = a_cw.unsqueeze(2) + a_hc.transpose(1, 2).unsqueeze(3)
        if a_hw is not None:
            g = g + a_hw.unsqueeze(1)
        return x * g / (2 if a_hw is None else 3)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
