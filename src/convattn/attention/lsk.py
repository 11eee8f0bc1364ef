"""LSK: the large selective kernel attention of LSKNet.

Li, Hou, Wang, Li, Yang, "Large Selective Kernel Network for Remote Sensing Object
Detection", ICCV 2023. Official code: zcablii/LSKNet
(``mmrotate/models/backbones/lsknet.py``, class ``LSKblock``).

Module boundary. The official ``LSKblock`` is the attention unit itself, and that is
what is registered here. LSKNet wraps it in an ``Attention`` class (a 1x1 conv
``proj_1``, GELU, the ``LSKblock`` as ``spatial_gating_unit``, a 1x1 conv ``proj_2``
and a shortcut) inside its ``Block`` (norms, layer scales, an MLP): those belong to the
LSKNet block, not to the mechanism, and are not part of this module.

Forward, X of shape (B, C, H, W) (2-D only), C/2 meaning ``C // 2``::

    U1 = DW5x5(X)                                   (B, C, H, W)   depthwise, padding 2
    U2 = DW7x7,d=3(U1)                              (B, C, H, W)   depthwise, dilation 3, padding 9
    V1 = W1 U1 + b1,  V2 = W2 U2 + b2               (B, C/2, H, W) 1x1 convs C -> C/2
    P  = [mean_c [V1; V2], max_c [V1; V2]]          (B, 2, H, W)   over the 2 (C/2) channels
    [S1; S2] = sigmoid(Conv7x7_{2->2}(P))           (B, 2, H, W)   padding 3
    A  = W3 (S1 * V1 + S2 * V2) + b3                (B, C, H, W)   1x1 conv C/2 -> C
    Y  = X * A                                      (B, C, H, W)

Every conv has a bias, as in the official code. The official block has no options;
neither has this one. A is not squashed: like the official code, Y = X * A with A the
raw output of the last 1x1 conv. The mean over [V1; V2] is computed as
(mean_c V1 + mean_c V2) / 2 (both halves have C/2 channels), the same number.
Parameters: 76 C (the depthwise convs) + 2 (C (C/2) + C/2) + 198 + (C/2) C + C,
i.e. 1.5 C^2 + 78 C + 198 for even C.

Recorded maps: ``"spatial"`` (B, H, W) = mean_c A, the channel mean of the
selection-weighted attention that multiplies X; ``"selection"`` (B, 2, H, W) =
[S1; S2], the weights of the small (5x5) and the large (5x5 then dilated 7x7)
receptive field at each position.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..registry import register


@register(
    "lsk",
    family="spatial",
    paper="Large Selective Kernel Network for Remote Sensing Object Detection",
    authors="Li, Hou, Wang, Li, Yang",
    venue="ICCV",
    year=2023,
    dims=(2,),
    equation="""
        U1 = DW5x5(X),  U2 = DW7x7,dilation 3(U1)
        V1 = Conv1x1_{C->C/2}(U1),  V2 = Conv1x1_{C->C/2}(U2)
        [S1; S2] = sigmoid(Conv7x7_{2->2}([mean_c [V1; V2], max_c [V1; V2]]))
        Y = X * Conv1x1_{C/2->C}(S1 * V1 + S2 * V2)
    """,
    url="https://openaccess.thecvf.com/content/ICCV2023/papers/Li_Large_Selective_Kernel_Network_for_Remote_Sensing_Object_Detection_ICCV_2023_paper.pdf",
    notes="The official LSKblock (the attention unit; LSKNet's proj_1/GELU/proj_2 and shortcut "
          "around it are not included); every conv with a bias, as the official code.",
)
class LSK(AttentionModule):
    """Large selective kernel attention, LSKNet's ``LSKblock`` (2-D).

    Args:
        channels: input channels C, at least 2 (the selection branches have C // 2).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        if channels < 2:
            raise ValueError(
                f"{self._owner()}: channels={channels} leaves 0 channels in the C // 2 selection branches; "
                f"valid: channels >= 2"
            )
        half = channels // 2
        self.conv0 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels)
        self.conv_spatial = nn.Conv2d(channels, channels, 7, padding=9, dilation=3, groups=channels)
        self.conv1 = nn.Conv2d(channels, half, 1)
        self.conv2 = nn.Conv2d(channels, half, 1)
        self.conv_squeeze = nn.Conv2d(2, 2, 7, padding=3)
        self.conv = nn.Conv2d(half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u1 = self.conv0(x)
        u2 = self.conv_spatial(u1)
        v1, v2 = self.conv1(u1), self.conv2(u2)
        pooled = torch.stack(((v1.mean(1) + v2.mean(1)) * 0.5, torch.maximum(v1.amax(1), v2.amax(1))), 1)
        s = torch.sigmoid(self.conv_squeeze(pooled))  # (B, 2, H, W)
        a = self.conv(v1 * s[:, 0:1] + v2 * s[:, 1:2])
        if self._map_sink is not None:
            self.record("spatial", a.mean(1))
            self.record("selection", s)
        return x * a
