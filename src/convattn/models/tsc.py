"""The 1-D FCN and ResNet for time-series classification of Wang, Yan & Oates 2017.

"Time Series Classification from Scratch with Deep Neural Networks: A Strong
Baseline" (IJCNN 2017), the architectures Fawaz et al. 2019 evaluate on the
UCR/UEA archives. Inputs are (B, C, L); convolutions keep the length ("same"
padding, the even kernel 8 padded 3 left and 4 right as Keras does).

- **FCN** (``fcn1d``): three blocks Conv1d -> BatchNorm -> ReLU with 128, 256, 128
  filters and kernels 8, 5, 3; global average pooling over time; a linear
  classifier. Attention attached with ``where="block"`` goes on each block's
  output (after its ReLU, where MLSTM-FCN puts its squeeze-and-excitation
  blocks); ``where="stage"`` after the first two blocks only, MLSTM-FCN's exact
  placement.
- **ResNet** (``resnet1d``): three residual blocks of three convolutions (kernels
  8, 5, 3; 64, 128, 128 filters), each conv followed by BatchNorm, ReLU after the
  first two; the shortcut is a 1x1 conv + BatchNorm where the width changes and a
  BatchNorm alone where it does not (as in Fawaz et al.'s code); ReLU after the
  add; global average pooling; a linear classifier. Attention with
  ``where="block"`` goes after each block's last BatchNorm, before the add (the
  SE-ResNet placement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SameConv1d(nn.Conv1d):
    """A Conv1d whose output keeps the input's length: (k - 1) // 2 zeros on the left,
    k // 2 on the right (Keras's "same" padding, also for even k).

    The product runs as a 2-D convolution over a (1, L) image, the same sums (PyTorch's
    CPU conv1d trained slower in one isolated measurement: 0.41 s against 0.27 s for a
    forward and backward of 16 x 128 x 150 through 256 filters of width 5).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__(c_in, c_out, kernel_size)
        self.pads = ((kernel_size - 1) // 2, kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(F.pad(x, self.pads).unsqueeze(2), self.weight.unsqueeze(2), self.bias)
        return y.squeeze(2)


def _conv_bn(c_in: int, c_out: int, k: int) -> tuple[nn.Conv1d, nn.BatchNorm1d]:
    return SameConv1d(c_in, c_out, k), nn.BatchNorm1d(c_out)


class FCN1d(nn.Module):
    """Wang et al.'s fully convolutional network for series of shape (B, C, L)."""

    attention_blocks = ("block1", "block2", "block3")

    def __init__(self, in_chans: int = 1, num_classes: int = 2, widths=(128, 256, 128), kernels=(8, 5, 3)) -> None:
        super().__init__()
        c = in_chans
        for i, (w, k) in enumerate(zip(widths, kernels, strict=True), 1):
            conv, bn = _conv_bn(c, w, k)
            setattr(self, f"block{i}", nn.Sequential(conv, bn, nn.ReLU(inplace=True)))
            c = w
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.mean(-1))


class ResBlock1d(nn.Module):
    """conv8-BN-ReLU, conv5-BN-ReLU, conv3-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, kernels=(8, 5, 3)) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, kernels[0])
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, kernels[1])
        self.conv3, self.bn3 = _conv_bn(c_out, c_out, kernels[2])
        self.relu = nn.ReLU(inplace=True)
        if c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out))
        else:
            self.downsample = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class ResNet1d(nn.Module):
    """Wang et al.'s residual network for series of shape (B, C, L)."""

    def __init__(self, in_chans: int = 1, num_classes: int = 2, widths=(64, 128, 128)) -> None:
        super().__init__()
        blocks, c = [], in_chans
        for w in widths:
            blocks.append(ResBlock1d(c, w))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(x).mean(-1))


TSC_MODELS = {"fcn1d": FCN1d, "resnet1d": ResNet1d}
