"""Gather-Excite (GE).

Hu, Shen, Albanie, Sun, Vedaldi, "Gather-Excite: Exploiting Feature Context in
Convolutional Neural Networks", NeurIPS 2018. Official code (Caffe prototxt
only): hujie-frank/GENet (``models/RN50-GEPF.prototxt`` = theta-minus,
``RN50-GEP.prototxt`` = theta, ``RN50-GEPP.prototxt`` = theta-plus).

Forward, X of shape (B, C, *S)::

    G = gather(X)                       (B, C, *S')   S' = 1 (global extent) or ceil(S / e)
    g = sigmoid(excite(G))              (B, C, *S')
    Y = X * upsample_NN(g, S)           (B, C, *S)    nearest-neighbour upsampling

Variants (``variant=``):

* ``"theta-minus"`` (default, GE-theta^-, parameter free): gather = average pooling.
  Global extent (``extent=0``, the default and the official GEPF model): GAP, so
  Y = X * sigmoid(GAP(X)). Extent e >= 2: average pooling with window 2e - 1,
  stride e, padding e - 1, not counting the padding (timm's window; the paper
  only says the pooling covers an extent of e and we could not confirm its exact
  window), output ceil(S / e). Computed as a depthwise ones-kernel convolution
  divided by the in-bounds counts (same numbers as ``avg_pool2d(...,
  count_include_pad=False)``, several times faster on CPU, and it also accepts
  inputs smaller than the window, which torch's pooling rejects).
* ``"theta"`` (GE-theta): gather = depthwise convolution (no bias) + BatchNorm.
  Global extent, as the official GEP model: one depthwise conv whose kernel is
  the whole feature map (56/28/14/7 in ResNet-50), so the input size must be
  known: pass ``feat_size=`` and feed inputs of exactly that size. Extent e (a
  power of two): log2(e) depthwise 3^d convs with stride 2, padding 1, each
  followed by BatchNorm, with ReLU between them (timm's construction; the paper
  describes "strided depthwise convolutions" without the exact stack).
* ``"theta-plus"`` (GE-theta^+): the theta gather, then ReLU and an SE-style
  excite ``1x1 conv C -> C/r (bias) -> ReLU -> 1x1 conv C/r -> C (bias)`` applied
  at every gathered position, as the official GEPP model (BN, ReLU after the
  gather; r = 16).

Defaults as the official code: global extent, r = 16, no bias in the gather
conv, BN after it. Parameters with global theta: C * prod(feat_size) + 2C.

Deviations and notes: timm's ``GatherExcite`` with parameters and global extent
pads its full-size kernel by (k - 1) // 2 (so the "global" gather is a same-size
map, not the official 1x1); we follow the official unpadded conv. timm's
theta-plus has no ReLU between the gather and the MLP; we follow the official
prototxt. Works on 1D, 2D and 3D inputs; the module is built for one
dimensionality (``dims``, default 2) because the parametric gathers are ConvNd.

Attention maps: a global gate is recorded as ``"channel"`` (B, C); a gate with
extent is recorded as ``"channel_local"`` with shape (B, C, *S'), i.e. before
the nearest-neighbour upsampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, batch_norm_nd, conv_nd, hidden_channels
from ..registry import register

_VARIANTS = ("theta-minus", "theta", "theta-plus")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def window_mean(x: torch.Tensor, e: int) -> torch.Tensor:
    """Average pooling, window 2e - 1, stride e, padding e - 1, padding not counted.

    Equal to ``avg_pool{1,2,3}d(x, 2e - 1, e, e - 1, count_include_pad=False)``,
    computed as a depthwise convolution with a ones kernel divided by the number
    of in-bounds positions: on CPU the NCHW average-pooling kernel is several
    times slower than the (oneDNN) depthwise convolution.
    """
    nd = x.dim() - 2
    k = 2 * e - 1
    ones = x.new_ones((x.shape[1], 1) + (k,) * nd)
    s = _CONV[nd](x, ones, None, e, e - 1, 1, x.shape[1])
    count = x.new_ones(())
    for n, m in zip(x.shape[2:], s.shape[2:], strict=True):
        start = torch.arange(m, device=x.device) * e - (e - 1)
        c = (torch.clamp(start + k, max=n) - torch.clamp(start, min=0)).to(x.dtype)
        count = count[..., None] * c
    return s / count


def upsample_mul(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x * interpolate(g, size=x.shape[2:], mode="nearest")`` without the full-size gate.

    When every input side is a multiple of the gate's side, nearest upsampling
    is a block repeat: g is repeated along the last dim only (a 1/r-size copy,
    so the multiply keeps a long contiguous inner dim), x is viewed as
    (B, C, s1, r1, ..., W) and multiplied by g viewed as (B, C, s1, 1, ..., W).
    """
    size, small = x.shape[2:], g.shape[2:]
    if all(n % s == 0 for n, s in zip(size, small, strict=True)):
        r = size[-1] // small[-1]
        if r > 1:
            g = g.unsqueeze(-1).expand(g.shape + (r,)).reshape(g.shape[:-1] + (size[-1],))
        xs, gs = list(x.shape[:2]), list(g.shape[:2])
        for n, s in zip(size[:-1], small[:-1], strict=True):
            xs += [s, n // s]
            gs += [s, 1]
        xs.append(size[-1])
        gs.append(size[-1])
        return (x.reshape(xs) * g.reshape(gs)).reshape(x.shape)
    return x * F.interpolate(g, size=size, mode="nearest")


@register(
    "ge",
    family="channel",
    paper="Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks",
    authors="Hu, Shen, Albanie, Sun, Vedaldi",
    venue="NeurIPS",
    year=2018,
    equation="""
        G = gather(X): avg pool (theta-minus) | depthwise conv + BN (theta) | theta + SE MLP (theta-plus)
        Y = X * upsample_NN(sigmoid(G), H x W)
        global extent (default): Y = X * sigmoid(GAP(X))
    """,
    url="https://arxiv.org/abs/1810.12348",
    notes="variant='theta-minus' (default, parameter free) | 'theta' | 'theta-plus'; extent=0 is global.",
)
class GatherExcite(AttentionModule):
    """Gather-Excite: gather context over an extent, excite with a sigmoid gate.

    Args:
        channels: input channels C.
        variant: ``"theta-minus"`` (default), ``"theta"`` or ``"theta-plus"``.
        extent: 0 (default) for a global gather; e >= 2 for local windows (e must be
            a power of two for the parametric variants).
        feat_size: the input's spatial size (int or tuple), required by the
            parametric variants with global extent (kernel = whole feature map).
        reduction: r of the theta-plus MLP (hidden width ``C // r``, default 16).
        hidden: explicit hidden width of the theta-plus MLP.
        dims: number of spatial dims the module is built for (default 2).
    """

    def __init__(
        self,
        channels: int,
        variant: str = "theta-minus",
        extent: int = 0,
        feat_size: int | tuple[int, ...] | None = None,
        reduction: float = 16,
        hidden: int | None = None,
        dims: int = 2,
    ) -> None:
        super().__init__(channels, dims)
        owner = self._owner()
        if variant not in _VARIANTS:
            raise ValueError(f"{owner}: variant must be one of {', '.join(map(repr, _VARIANTS))}, got {variant!r}")
        parametric = variant != "theta-minus"
        if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or extent == 1:
            raise ValueError(f"{owner}: extent must be 0 (global) or an int >= 2, got {extent!r}")
        if parametric and extent and extent & (extent - 1):
            raise ValueError(
                f"{owner}: extent for variant={variant!r} must be 0 (global) or a power of two "
                f"(2, 4, 8, ...: log2(e) stride-2 convs), got {extent!r}"
            )
        self.variant = variant
        self.extent = extent
        self.feat_size: tuple[int, ...] | None = None

        self.gather: nn.Sequential | None = None
        if parametric:
            self.gather = nn.Sequential()
            if extent == 0:
                self.feat_size = self._check_feat_size(feat_size, dims, variant)
                self.gather.add_module(
                    "conv1", conv_nd(dims, channels, channels, self.feat_size, groups=channels, bias=False)
                )
                self.gather.add_module("norm1", batch_norm_nd(dims, channels))
            else:
                n = int(math.log2(extent))
                for i in range(1, n + 1):
                    self.gather.add_module(
                        f"conv{i}", conv_nd(dims, channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
                    )
                    self.gather.add_module(f"norm{i}", batch_norm_nd(dims, channels))
                    if i < n:
                        self.gather.add_module(f"act{i}", nn.ReLU())
        elif feat_size is not None:
            raise ValueError(f"{owner}: feat_size is only used by the parametric variants 'theta' and 'theta-plus'")

        self.mlp: nn.Sequential | None = None
        if variant == "theta-plus":
            width = hidden_channels(owner, channels, reduction, hidden)
            self.mlp = nn.Sequential()
            self.mlp.add_module("fc1", conv_nd(dims, channels, width, 1))
            self.mlp.add_module("act", nn.ReLU())
            self.mlp.add_module("fc2", conv_nd(dims, width, channels, 1))

    def _check_feat_size(self, feat_size, dims: int, variant: str) -> tuple[int, ...]:
        if feat_size is None:
            raise ValueError(
                f"{self._owner()}: variant={variant!r} with global extent (extent=0) needs "
                f"feat_size= (the input's spatial size; 56/28/14/7 in ResNet-50), or use extent=2/4/8"
            )
        sizes = (feat_size,) * dims if isinstance(feat_size, int) and not isinstance(feat_size, bool) else feat_size
        if (
            not isinstance(sizes, (tuple, list))
            or len(sizes) != dims
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
        ):
            raise ValueError(
                f"{self._owner()}: feat_size must be a positive int or a tuple of {dims} positive ints, "
                f"got {feat_size!r}"
            )
        return tuple(sizes)

    def gather_excite(self, x: torch.Tensor) -> torch.Tensor:
        """The gate sigmoid(excite(gather(X))) before upsampling, shape (B, C, *S')."""
        if self.gather is None:
            if self.extent == 0:
                g = x.mean(tuple(range(2, x.dim())), keepdim=True)
            else:
                g = window_mean(x, self.extent)
        else:
            if self.feat_size is not None and tuple(x.shape[2:]) != self.feat_size:
                raise ValueError(
                    f"{self._owner()}: built for feat_size={self.feat_size} (global gather kernel), "
                    f"got input shape {tuple(x.shape)}"
                )
            g = self.gather(x)
        if self.mlp is not None:
            g = self.mlp(F.relu(g))
        return torch.sigmoid(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        g = self.gather_excite(x)
        if math.prod(g.shape[2:]) == 1:
            self.record("channel", g.flatten(1))
            return x * g
        self.record("channel_local", g)
        return upsample_mul(x, g)

    def extra_repr(self) -> str:
        s = f"{super().extra_repr()}, variant={self.variant!r}, extent={self.extent}"
        if self.feat_size is not None:
            s += f", feat_size={self.feat_size}"
        return s
