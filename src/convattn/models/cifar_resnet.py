"""CIFAR-style ResNets (He, Zhang, Ren, Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2).

The CIFAR variant of the paper: a 3x3 stem conv with 16 filters, then three
stages of ``n`` basic blocks with 16, 32 and 64 channels (the first block of
stages 2 and 3 halves the resolution with stride 2), global average pooling and
a fully connected classifier: ``6n + 2`` weighted layers. ResNet-20/32/56 have
n = 3/5/9; ``resnet8`` (n = 1) is a very small extra for demos and tests.

Shortcuts follow the paper's CIFAR experiments: option A, an identity with
stride-2 subsampling and zero-padded extra channels (no parameters), giving
0.27 M parameters for ResNet-20. ``shortcut="B"`` uses a 1x1 conv + BN projection
instead. Attention is not built in here: :func:`convattn.models.create_model`
inserts it with :func:`convattn.models.attach` (after ``bn2``, before the add).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_DEPTHS = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56}


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.downsample = None
        elif shortcut == "A":
            self.downsample = PadShortcut(in_channels, out_channels, stride)
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images (CIFAR 32x32, MNIST 28x28, ...).

    Args:
        depth: 6n + 2 (8, 20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        in_chans: input channels (1 for grey-scale, 3 for colour).
        widths: channels of the three stages (paper: 16, 32, 64).
        shortcut: ``"A"`` (zero-padded identity, the paper's CIFAR choice) or
            ``"B"`` (1x1 conv + BN projection).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 with n >= 1 (8, 20, 32, 56, ...), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"CifarResNet: shortcut must be 'A' or 'B', got {shortcut!r}")
        for what, v in (("num_classes", num_classes), ("in_chans", in_chans)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CifarResNet: {what} must be a positive int, got {v!r}")
        if len(widths) != 3:
            raise ValueError(f"CifarResNet: widths must have 3 entries (one per stage), got {widths!r}")
        n = (depth - 2) // 6
        self.depth, self.num_classes, self.in_chans = depth, num_classes, in_chans
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c, w, stride, shortcut))
                c = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))
