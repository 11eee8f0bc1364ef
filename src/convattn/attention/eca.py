"""Efficient Channel Attention (ECA).

Wang, Wu, Zhu, Li, Zuo, Hu, "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020. Official code: BangguWu/ECANet
(``models/eca_module.py``, ``models/eca_resnet.py``).

Forward, X of shape (B, C, *S)::

    y = GAP(X)                                  (B, C), seen as a sequence (B, 1, C)
    w = sigmoid(Conv1d(1 -> 1, k, zero padding (k - 1) // 2, no bias)(y))   (B, 1, C)
    Y = X * w                                   (B, C, *S), w broadcast over S

The only parameters are the k taps of the 1D convolution across channels, so the
parameter count is k whatever C is.

Kernel size. The paper picks k from C with gamma = 2, b = 1::

    k = psi(C) = | log2(C) / gamma + b / gamma |_odd

where |t|_odd is "the nearest odd number to t". We compute it exactly as timm's
``EcaModule`` does (the formula most ECA users run), so that parity holds:

    t = int(|log2(C) + b| / gamma)      (truncation towards zero)
    k = t if t is odd else t + 1        (even t goes *up* to the next odd number)
    k = max(k, 3)                       (timm's lower bound; without it C < 8 gives k = 1)

Truncating and then moving an even t up by one is exactly "the nearest odd number"
with the ties (t an even integer, e.g. C = 128 or 2048) broken upwards.
Examples: C = 64 -> 3, 128 -> 5, 256 -> 5, 512 -> 5, 1024 -> 5, 2048 -> 7. For the
ResNet-50 stage outputs (256, 512, 1024, 2048) this gives (5, 5, 5, 7), while the
released ECA-ResNet-50 hard-codes k = (3, 5, 5, 7) per stage (80 parameters in
total, the paper's "80"); the official module itself never computes k (its
default is 3). Pass ``kernel_size=`` to choose k explicitly (e.g. to reproduce
the released model stage by stage).

A fast CPU implementation of this maths is registered in :mod:`convattn.fast.channel`.

Two variants that timm ships (neither is in the paper) are options:

- ``padding="circular"``: the channel sequence wraps around (timm's ``CecaModule``,
  key ``ceca``): the first and last channels are neighbours;
- ``mlp=True``: the k-tap conv is preceded by a 1x1 conv 1 -> r with bias and a ReLU,
  and itself maps r -> 1 with bias, r = ``make_divisible(C * mlp_ratio, 8)``,
  ``mlp_ratio = 1/8`` (timm's ``EcaModule(use_mlp=True)``, key ``ecam``; "a timm
  experiment, not in paper" in timm's own words).

Deviations: none in the maths. Works on 1D, 2D and 3D inputs (the pooling is over
every spatial dim; the convolution runs across channels, so it does not depend on
the number of spatial dims).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, make_divisible, spatial_mean, unsqueeze_spatial
from ..registry import register

_PADDINGS = ("zeros", "circular")


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1, min_size: int = 3) -> int:
    """ECA's adaptive kernel size (see the module docstring for the rounding)."""
    t = int(abs(math.log2(channels) + b) / gamma)
    k = t if t % 2 else t + 1
    return max(k, min_size)


@register(
    "eca",
    family="channel",
    paper="ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
    authors="Wang, Wu, Zhu, Li, Zuo, Hu",
    venue="CVPR",
    year=2020,
    equation="""
        y = GAP(X) in R^{B x 1 x C}
        w = sigmoid(Conv1d_k(y)),  1 -> 1 channel, zero pad (k-1)/2, no bias
        k = |log2(C)/gamma + b/gamma|_odd, gamma = 2, b = 1
        Y = X * w
    """,
    url="https://arxiv.org/abs/1910.03151",
    notes="k rounded as timm's EcaModule: t = int((log2 C + b) / gamma), odd-up, min 3. "
          "padding='circular' is timm's ceca, mlp=True timm's ecam (neither in the paper).",
)
class ECA(AttentionModule):
    """Efficient Channel Attention: a k-tap 1D convolution across pooled channels.

    Args:
        channels: input channels C.
        kernel_size: explicit odd k; ``None`` (default) picks k from C (see module doc).
        gamma, b: the mapping constants of the adaptive k (paper: 2 and 1).
        padding: ``"zeros"`` (default, the paper's) or ``"circular"`` (timm's ``ceca``).
        mlp: a 1 -> r -> 1 conv bottleneck across channels instead of the single conv
            (timm's ``ecam``; default False).
        mlp_ratio: r = ``make_divisible(C * mlp_ratio, 8)`` with ``mlp`` (default 1/8).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        gamma: float = 2,
        b: float = 1,
        padding: str = "zeros",
        mlp: bool = False,
        mlp_ratio: float = 1 / 8,
    ) -> None:
        super().__init__(channels)
        if padding not in _PADDINGS:
            raise ValueError(f"{self._owner()}: padding must be one of {', '.join(map(repr, _PADDINGS))}, got {padding!r}")
        if not isinstance(mlp, bool):
            raise ValueError(f"{self._owner()}: mlp must be True or False, got {mlp!r}")
        if kernel_size is None:
            for name, v in (("gamma", gamma), ("b", b)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{self._owner()}: {name} must be a finite number, got {v!r}")
            if gamma <= 0:
                raise ValueError(f"{self._owner()}: gamma must be > 0, got {gamma!r}")
            kernel_size = eca_kernel_size(channels, gamma, b)
        elif isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"{self._owner()}: kernel_size must be a positive odd int (1, 3, 5, ...) or None "
                f"for the adaptive size, got {kernel_size!r}"
            )
        self.kernel_size, self.padding = kernel_size, padding
        pad = (kernel_size - 1) // 2
        if mlp:
            if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
                raise ValueError(f"{self._owner()}: mlp_ratio must be a positive number, got {mlp_ratio!r}")
            width = make_divisible(channels * mlp_ratio, 8)
            self.conv = nn.Conv1d(1, width, 1, bias=True)
            self.conv2 = nn.Conv1d(width, 1, kernel_size, padding=pad, padding_mode=padding, bias=True)
        else:
            self.conv = nn.Conv1d(1, 1, kernel_size, padding=pad, padding_mode=padding, bias=False)
            self.conv2 = None

    def gate_from_mean(self, z: torch.Tensor, _unused: torch.Tensor | None = None) -> torch.Tensor:
        """w from the pooled vector z = GAP(X), (B, C)."""
        y = self.conv(z.unsqueeze(1))
        if self.conv2 is not None:
            y = self.conv2(F.relu(y))
        return torch.sigmoid(y).squeeze(1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights w, shape (B, C)."""
        return self.gate_from_mean(spatial_mean(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        w = self.gate(x)
        self.record("channel", w)
        return x * unsqueeze_spatial(w, x.dim() - 2)

    def extra_repr(self) -> str:
        extra = f", padding={self.padding!r}" if self.padding != "zeros" else ""
        extra += f", mlp_width={self.conv.out_channels}" if self.conv2 is not None else ""
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}{extra}"
