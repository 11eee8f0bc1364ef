"""Segmentation networks: a DANet head on a dilated ResNet, and a small U-Net with attention decoders.

DANet (Fu et al., "Dual Attention Network for Scene Segmentation", CVPR 2019;
official head ``DANetHead`` in junfu1115/DANet ``encoding/models/sseg/danet.py``).
From the backbone features F (B, C, h, w), with C' = C / 4 (the official
2048 -> 512)::

    P = relu(bn(conv3x3(F)))   (B, C', h, w)      C -> C'
    P = pam(P)                                     position attention (registry "pam")
    P = relu(bn(conv3x3(P)))   (B, C', h, w)
    Q = relu(bn(conv3x3(F)))   (B, C', h, w)
    Q = cam(Q)                                     channel attention (registry "cam")
    Q = relu(bn(conv3x3(Q)))   (B, C', h, w)
    logits = conv1x1(dropout2d_0.1(P + Q))        (B, K, h, w), conv with bias
    output = bilinear upsampling of logits to the input size (align_corners=False)

The 3x3 convs have no bias (BN follows), as in the official code. Deviations:
the official head also returns the two branch outputs through their own
classifiers (conv6/conv7) for auxiliary losses; we train the summed output
only. The official code upsamples with ``align_corners=True``; we use False
(torchvision's segmentation models do too).

Backbone (:class:`DilatedResNet`): DANet uses a ResNet whose last two stages
trade their stride for dilation (2 and 4; output stride 8 on 512-pixel crops).
torchvision's BasicBlock refuses dilation and Bottleneck ResNets are far too
big for a CPU budget, so this is a small BasicBlock ResNet (one block per stage,
widths 8-16-32-64 by default) with the same recipe: stem stride 2, stage 2
stride 2, stages 3 and 4 stride 1 with dilation 2 and 4, i.e. output stride 4
on the small canvases (a 72-pixel input gives 18 x 18 features, N = 324
positions for the position attention).

U-Net (:class:`UNet`, Ronneberger et al., MICCAI 2015): four encoder levels
(full, 1/2, 1/4 and 1/8 resolution) and decoder blocks ``upsample x2
(bilinear) -> concat skip -> 2 x conv3x3-BN-ReLU -> attention``, where the
attention is any registry key (``scse`` as in Roy et al., "Concurrent Spatial
and Channel Squeeze & Excitation in Fully Convolutional Networks", MICCAI 2018,
who put it after every decoder block) or none. Encoder ``"plain"``: two
conv3x3-BN-ReLU per level and 2x2 max-pooling between levels (the original
U-Net). Encoder ``"residual"`` (default): level 0 is conv3x3-BN-ReLU and one
residual block, each further level one residual block with stride 2 (ResNet's
BasicBlock with a 1x1 projection shortcut), the encoder family of SMP's
``Unet("resnet18", decoder_attention_type="scse")``. Encoder widths 8-24-64-128
(most channels where the maps are small), decoder widths 32-32-16 (at 1/4, 1/2
and full resolution): the classifier reads 16 channels at full resolution;
with 8 there (decoder widths equal to the encoder's), one seed of two reached
only 50 % (no attention) and 14 % (scSE) mIoU in 7 epochs. On the multi-digit
canvases the plain encoder sometimes stays for several epochs at "background
everywhere" (one of two seeds in 6 epochs); the residual one left it within
2-3 epochs on both.

Variants (the ``attention`` argument of :func:`build_segmenter`):

- ``danet``: ``"none"`` = the same head with identity branches (a plain FCN
  head with the same convs); ``"danet"`` = PAM in the first branch and CAM in
  the second (the paper); any other registry key = that module in both branches.
- ``unet``: ``"none"`` = no attention; a registry key = that module after every
  decoder block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.pairing import separate_rng
from ..registry import create_attention

SEGMENTERS = ("danet", "unet")


def conv_bn_relu(cin: int, cout: int, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _attention(key: str | None, channels: int) -> nn.Module:
    if key in (None, "none"):
        return nn.Identity()
    with separate_rng():  # the layers around it get the same weights with or without attention
        return create_attention(key, channels)


class DilatedBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (dilated) + shortcut (1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet(nn.Module):
    """Small ResNet with dilated last stages (output stride 4); ``forward`` returns features."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, int, int, int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"DilatedResNet: widths needs 4 entries (one per stage), got {widths!r}")
        self.stem = conv_bn_relu(in_chans, widths[0], stride=2)
        self.layer1 = nn.Sequential(DilatedBlock(widths[0], widths[0]))
        self.layer2 = nn.Sequential(DilatedBlock(widths[0], widths[1], stride=2))
        self.layer3 = nn.Sequential(DilatedBlock(widths[1], widths[2], dilation=2))
        self.layer4 = nn.Sequential(DilatedBlock(widths[2], widths[3], dilation=4))
        self.out_channels = widths[3]
        self.output_stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


class DANetHead(nn.Module):
    """The DANet head (see the module docstring); ``pam``/``cam`` are registry keys or ``"none"``."""

    def __init__(self, in_channels: int, num_classes: int, pam: str | None = "pam", cam: str | None = "cam",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if in_channels % 4 or in_channels < 4:
            raise ValueError(f"DANetHead: in_channels must be a positive multiple of 4, got {in_channels}")
        inter = in_channels // 4
        self.inter_channels = inter
        self.conv5a = conv_bn_relu(in_channels, inter)
        self.sa = _attention(pam, inter)
        self.conv51 = conv_bn_relu(inter, inter)
        self.conv5c = conv_bn_relu(in_channels, inter)
        self.sc = _attention(cam, inter)
        self.conv52 = conv_bn_relu(inter, inter)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.conv51(self.sa(self.conv5a(x)))
        q = self.conv52(self.sc(self.conv5c(x)))
        return self.classifier(p + q)


class DANet(nn.Module):
    """Dilated ResNet + DANet head, logits upsampled (bilinear) to the input size."""

    def __init__(self, num_classes: int, in_chans: int = 1, attention: str | None = "danet",
                 widths: tuple[int, int, int, int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        self.backbone = DilatedResNet(in_chans, widths)
        if attention in (None, "none"):
            pam = cam = None
        elif attention == "danet":
            pam, cam = "pam", "cam"
        else:
            pam = cam = attention
        self.head = DANetHead(self.backbone.out_channels, num_classes, pam, cam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DecoderBlock(nn.Module):
    """upsample x2 -> concat skip -> 2 x conv3x3-BN-ReLU -> attention."""

    def __init__(self, cin: int, skip: int, cout: int, attention: str | None) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(cin + skip, cout), conv_bn_relu(cout, cout))
        self.attention = _attention(attention, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.attention(self.conv(torch.cat([x, skip], 1)))


UNET_ENCODERS = ("residual", "plain")


class UNet(nn.Module):
    """A small U-Net (4 levels) whose decoder blocks end with ``attention`` (any registry key)."""

    def __init__(self, num_classes: int, in_chans: int = 1, attention: str | None = "scse",
                 widths: tuple[int, int, int, int] = (8, 24, 64, 128), encoder: str = "residual",
                 decoder_widths: tuple[int, int, int] = (32, 32, 16)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"UNet: widths needs 4 entries, got {widths!r}")
        if len(decoder_widths) != 3:
            raise ValueError(f"UNet: decoder_widths needs 3 entries (1/4, 1/2 and full resolution), "
                             f"got {decoder_widths!r}")
        if encoder not in UNET_ENCODERS:
            raise ValueError(f"UNet: unknown encoder {encoder!r}; valid: {', '.join(UNET_ENCODERS)}")
        w = widths
        self.encoder = encoder
        self.enc = nn.ModuleList()
        cin = in_chans
        for i, c in enumerate(w):
            if encoder == "plain":
                self.enc.append(nn.Sequential(conv_bn_relu(cin, c), conv_bn_relu(c, c)))
            elif i == 0:
                self.enc.append(nn.Sequential(conv_bn_relu(cin, c), DilatedBlock(c, c)))
            else:
                self.enc.append(DilatedBlock(cin, c, stride=2))
            cin = c
        self.dec = nn.ModuleList()
        cin = w[3]
        for skip, cout in zip((w[2], w[1], w[0]), decoder_widths, strict=True):
            self.dec.append(DecoderBlock(cin, skip, cout, attention))
            cin = cout
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            if i and self.encoder == "plain":
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        return self.classifier(x)


def build_segmenter(model: str, attention: str | None, num_classes: int, in_chans: int = 1,
                    **options: Any) -> nn.Module:
    """``model`` in :data:`SEGMENTERS` with ``attention`` (see the module docstring)."""
    if model == "danet":
        return DANet(num_classes, in_chans, attention, **options)
    if model == "unet":
        return UNet(num_classes, in_chans, attention, **options)
    raise ValueError(f"unknown segmentation --model {model!r}; valid: {', '.join(SEGMENTERS)}")
