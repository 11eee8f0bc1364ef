"""CBAM: Convolutional Block Attention Module.

Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018.
Official code: Jongchan/attention-module (``MODELS/cbam.py``, ``model_resnet.py``).

Forward, X of shape (B, C, *S) (S = (L,), (H, W) or (D, H, W))::

    channel gate   M_c = sigmoid(MLP(GAP X) + MLP(GMP X))            (B, C)
                   MLP(z) = W2 relu(W1 z + b1) + b2,  W1: C/r x C, W2: C x C/r
                   (one MLP shared by both pooled vectors, so b2 counts twice)
    X1 = X * M_c                                                      (B, C, *S)
    spatial gate   P   = cat[max_c X1, mean_c X1]                     (B, 2, *S)
                   M_s = sigmoid(BN(Conv_kxk(P)))                     (B, *S)
                   Conv: 2 -> 1 channel, padding k // 2, no bias; no ReLU
    Y = X1 * M_s                                                      (B, C, *S)

Three registered modules: ``cbam_channel`` (Y = X * M_c), ``cbam_spatial``
(Y = X * M_s computed from X) and ``cbam`` (the sequential pair above); ``lcbam``
is timm's lighter variant (each gate's two pools averaged into one input).

Defaults as the official code:

- r = 16, hidden width ``C // r`` (no rounding), biases on both MLP layers;
- k = 7; channel pooling order [max; mean] (``pool_order="max_mean"``); the paper
  writes [avg; max] (``pool_order="mean_max"``, the order timm uses);
- the spatial BN has momentum 0.01. The official code is PyTorch, so this is
  already PyTorch's convention (running = 0.99 running + 0.01 batch); no
  conversion. (In the Keras/TF convention the same BN would be momentum 0.99.)
- the spatial BN starts with gamma = 1 (PyTorch's default, what the official
  ``cbam.py`` module itself builds). The official ``model_resnet.py`` then sets
  every spatial-gate BN gamma to 0, so M_s = sigmoid(beta) = 0.5 everywhere at
  init; ``zero_init_bn=True`` reproduces that. It is not the default because it is
  a property of the official ResNet's init, not of the module, and because model
  builders such as timm re-initialise every BN gamma to 1 anyway.

The spatial gate's conv depends on the number of spatial dims, so ``cbam`` and
``cbam_spatial`` take ``dims`` (default 2); ``cbam_channel`` accepts any.

A fast CPU implementation of this maths is registered in :mod:`convattn.fast.cbam`.

Recorded maps: ``"channel"`` M_c (B, C); ``"spatial"`` M_s (B, *S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import (
    AttentionModule,
    batch_norm_nd,
    conv_nd,
    hidden_channels,
    make_divisible,
    spatial_amax,
    spatial_mean,
    unsqueeze_spatial,
)
from ..registry import register

_POOL_ORDERS = ("max_mean", "mean_max")

_PAPER = dict(
    paper="CBAM: Convolutional Block Attention Module",
    authors="Woo, Park, Lee, Kweon",
    venue="ECCV",
    year=2018,
    url="https://arxiv.org/abs/1807.06521",
)


def _check_choice(owner: str, name: str, value, valid: tuple) -> None:
    if value not in valid:
        raise ValueError(
            f"{owner}: {name} must be one of {', '.join(map(repr, valid))}, got {value!r}"
        )


@register(
    "cbam_channel",
    family="channel",
    equation="""
        M_c = sigmoid(MLP(GAP X) + MLP(GMP X)),  MLP(z) = W2 relu(W1 z + b1) + b2
        Y = X * M_c
    """,
    notes="Shared MLP C -> C/r -> C with biases, r = 16 (official code).",
    **_PAPER,
)
class CBAMChannel(AttentionModule):
    """CBAM channel gate: a shared MLP on the average- and max-pooled vectors.

    Args:
        channels: input channels C.
        reduction: r, hidden width ``C // r`` (default 16).
        hidden: explicit hidden width (overrides ``reduction``).
    """

    def __init__(self, channels: int, reduction: float = 16, hidden: int | None = None) -> None:
        super().__init__(channels)
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        self.fc1 = nn.Linear(channels, width)
        self.fc2 = nn.Linear(width, channels)

    def gate_from_pools(self, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """M_c (B, C) from the pooled vectors GAP X and GMP X, both (B, C)."""
        B = avg.shape[0]
        # both pooled vectors through the shared MLP in one batched call
        h = self.fc2(F.relu(self.fc1(torch.cat((avg, mx), 0))))
        return torch.sigmoid(h[:B] + h[B:])

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """M_c, shape (B, C)."""
        return self.gate_from_pools(spatial_mean(x), spatial_amax(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = self.gate(x)
        self.record("channel", s)
        return x * unsqueeze_spatial(s, x.dim() - 2)


@register(
    "cbam_spatial",
    family="spatial",
    equation="""
        P = cat[max_c X, mean_c X]   (B, 2, *S)
        M_s = sigmoid(BN(Conv_kxk(P))),  2 -> 1 channel, no bias, k = 7
        Y = X * M_s
    """,
    notes="BN momentum 0.01 (official, PyTorch convention). pool_order='mean_max' gives the paper's [avg; max].",
    **_PAPER,
)
class CBAMSpatial(AttentionModule):
    """CBAM spatial gate: a k x k conv + BN on the channel-pooled [max; mean] maps.

    Args:
        channels: input channels C (the gate has no per-channel parameters).
        kernel_size: k, odd (default 7).
        pool_order: ``"max_mean"`` (official code, default) or ``"mean_max"`` (paper).
        bn_momentum: PyTorch-convention BN momentum (default 0.01, official).
        zero_init_bn: start with BN gamma = 0 (M_s = 0.5), as the official ResNet init.
        dims: number of spatial dims, 1, 2 or 3 (default 2).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        pool_order: str = "max_mean",
        bn_momentum: float = 0.01,
        zero_init_bn: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__(channels, dims)
        owner = self._owner()
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or kernel_size < 1
            or kernel_size % 2 == 0
        ):
            raise ValueError(
                f"{owner}: kernel_size must be a positive odd int (e.g. 3 or 7), got {kernel_size!r}"
            )
        _check_choice(owner, "pool_order", pool_order, _POOL_ORDERS)
        if (
            isinstance(bn_momentum, bool)
            or not isinstance(bn_momentum, (int, float))
            or not 0 <= bn_momentum <= 1
        ):
            raise ValueError(
                f"{owner}: bn_momentum must be a number in [0, 1], got {bn_momentum!r}"
            )
        self.kernel_size = kernel_size
        self.pool_order = pool_order
        self.conv = conv_nd(dims, 2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = batch_norm_nd(dims, 1, eps=1e-5, momentum=bn_momentum)
        if zero_init_bn:
            nn.init.zeros_(self.bn.weight)

    def gate_from_pools(self, mx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """M_s (B, *S) from max_c and mean_c of the gated input, both (B, *S)."""
        pair = (mx, mean) if self.pool_order == "max_mean" else (mean, mx)
        return torch.sigmoid(self.bn(self.conv(torch.stack(pair, 1)))).squeeze(1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """M_s, shape (B, *S)."""
        return self.gate_from_pools(x.amax(1), x.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = self.gate(x)
        self.record("spatial", s)
        return x * s.unsqueeze(1)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", kernel_size={self.kernel_size}, pool_order={self.pool_order!r}"
        )


@register(
    "cbam",
    family="combined",
    equation="""
        M_c = sigmoid(MLP(GAP X) + MLP(GMP X));  X1 = X * M_c
        M_s = sigmoid(BN(Conv_kxk(cat[max_c X1, mean_c X1])))
        Y = X1 * M_s
    """,
    notes=(
        "Sequential: channel gate first, spatial gate computed from X * M_c. "
        "Defaults from the official code (r=16, k=7, [max; mean], BN momentum 0.01)."
    ),
    **_PAPER,
)
class CBAM(AttentionModule):
    """CBAM: channel gate, then a spatial gate computed from the channel-gated input.

    Args:
        channels: input channels C.
        reduction: r of the channel MLP (default 16).
        hidden: explicit hidden width of the channel MLP (overrides ``reduction``).
        kernel_size: k of the spatial conv, odd (default 7).
        pool_order: ``"max_mean"`` (official code, default) or ``"mean_max"`` (paper).
        bn_momentum: spatial BN momentum, PyTorch convention (default 0.01).
        zero_init_bn: spatial BN gamma = 0 at init (official ResNet init), default False.
        dims: number of spatial dims, 1, 2 or 3 (default 2).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        kernel_size: int = 7,
        pool_order: str = "max_mean",
        bn_momentum: float = 0.01,
        zero_init_bn: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__(channels, dims)
        self.channel = CBAMChannel(channels, reduction=reduction, hidden=hidden)
        self.spatial = CBAMSpatial(
            channels,
            kernel_size=kernel_size,
            pool_order=pool_order,
            bn_momentum=bn_momentum,
            zero_init_bn=zero_init_bn,
            dims=dims,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        mc = self.channel.gate(x)
        x1 = x * unsqueeze_spatial(mc, x.dim() - 2)
        ms = self.spatial.gate(x1)
        self.record("channel", mc)
        self.record("spatial", ms)
        return x1 * ms.unsqueeze(1)


@register(
    "lcbam",
    family="combined",
    paper="Light CBAM (timm's LightCbamModule; no paper)",
    authors="Wightman (timm)",
    venue="timm",
    year=2025,
    dims=(2,),
    equation="""
        M_c = sigmoid(W2 relu(W1 (GAP X + GMP X) / 2)),  W1: C/r x C, no biases
        X1 = X * M_c
        M_s = sigmoid(BN(Conv_kxk((mean_c X1 + max_c X1) / 2))),  1 -> 1 channel, no bias
        Y = X1 * M_s
    """,
    url="https://github.com/huggingface/pytorch-image-models/blob/main/timm/layers/cbam.py",
    notes="timm's LightCbamModule with its defaults: one MLP on the averaged pools, one conv on "
          "the averaged channel pools; hidden width round(C / 16), no MLP biases, BN momentum 0.1.",
)
class LightCBAM(AttentionModule):
    """CBAM with each gate's two pools averaged into one input (2-D).

    Args:
        channels: input channels C.
        reduction: hidden width ``round(C / reduction)``, at least 1 (default 16, timm's).
        hidden: explicit hidden width (overrides ``reduction``).
        kernel_size: k of the spatial conv, odd (default 7).
    """

    def __init__(self, channels: int, reduction: float = 16, hidden: int | None = None, kernel_size: int = 7) -> None:
        super().__init__(channels)
        owner = self._owner()
        if hidden is None:
            if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not reduction > 0:
                raise ValueError(f"{owner}: reduction must be a positive number, got {reduction!r}")
            hidden = make_divisible(channels / reduction, 1, round_limit=0.0)
        width = hidden_channels(owner, channels, None, hidden)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{owner}: kernel_size must be a positive odd int (e.g. 3 or 7), got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.fc1 = nn.Linear(channels, width, bias=False)
        self.fc2 = nn.Linear(width, channels, bias=False)
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        z = 0.5 * (spatial_mean(x) + spatial_amax(x))
        mc = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))
        x1 = x * unsqueeze_spatial(mc, 2)
        p = 0.5 * (x1.mean(1, keepdim=True) + x1.amax(1, keepdim=True))
        ms = torch.sigmoid(self.bn(self.conv(p))).squeeze(1)
        self.record("channel", mc)
        self.record("spatial", ms)
        return x1 * ms.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.fc1.out_features}, kernel_size={self.kernel_size}"
