"""BAM: Bottleneck Attention Module.

Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018.
Official code: Jongchan/attention-module (``MODELS/bam.py``).

Forward, X of shape (B, C, *S), h = C // r, two parallel branches computed from X::

    channel   M_c = W2 relu(BN1d(W1 GAP(X))) + b2                      (B, C)
              W1: h x C, W2: C x h (BN on the hidden layer, as the official code;
              the paper's text puts it after the MLP)
    spatial   M_s = Conv1x1(h -> 1)                                    (B, *S)
                    o [relu o BN o Conv3x3(h -> h, dilation d, padding d)] x n
                    o relu o BN o Conv1x1(C -> h)(X)
              (the last conv has a bias; see below for the convs that feed a BN)
    merge     M = sigmoid(M_c * M_s)   (official code, merge="product", default)
              M = sigmoid(M_c + M_s)   (paper, merge="sum")                 (B, C, *S)
    Y = X * (1 + M)                                                    (B, C, *S)

Defaults: r = 16, d = 4, n = 2 dilated convs; BN with PyTorch's defaults
(momentum 0.1) everywhere, as the official code.

Deviation: the official code gives a bias to every conv/linear, including the
ones directly followed by a BN (the channel W1 and the spatial branch's first
1x1 and dilated 3x3 convs). Those biases do nothing: in training the BN
subtracts the batch mean, which removes them exactly (their gradient is exactly
zero), and in eval they are absorbed by the running mean. We leave them out by
default (4h parameters fewer per module, h = C // r); ``bias_before_bn=True``
restores the official parameter set, e.g. to load an official checkpoint
(+358,067 parameters for the three BAMs of a ResNet-50, the paper's +0.358 M;
357,619 without those biases). ``merge="product"`` is the
default because it is what the official code computes and what the released
checkpoint (76.86 top-1) was trained with (issues #1, #39, #52 discuss the
mismatch with the paper); ``merge="sum"`` gives the paper's equation. BAM goes once
at the end of each of stages 1-3 of a ResNet, not inside every block.

The BN1d on the channel branch's hidden layer needs more than one sample in
training mode (as in the official code); in eval mode any batch works.

``bam_spatial`` is the spatial branch alone, used as a standalone gate with the
same residual form: ``Y = X * (1 + sigmoid(M_s))`` (BAM's output form with the
channel term left out). It is our packaging of one branch, not a module of the
paper.

The dilated convs depend on the number of spatial dims, so both modules take
``dims`` (default 2). With d = 4 and padding 4 the spatial size is kept for any
input size, including inputs smaller than the dilation.

Recorded maps:

- ``bam``: ``"channel"`` the pre-merge channel term M_c (B, C) and ``"spatial"``
  the pre-merge spatial term M_s (B, *S). These are logits: the gate actually
  applied is sigmoid of their product (or sum), a full (B, C, *S) tensor that is
  not recorded by default (too big).
- ``bam_spatial``: ``"spatial"`` sigmoid(M_s) (B, *S), the gate applied (Y = X * (1 + it)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, batch_norm_nd, conv_nd, hidden_channels, unsqueeze_spatial
from ..registry import register

_MERGES = ("product", "sum")

_PAPER = dict(
    paper="BAM: Bottleneck Attention Module",
    authors="Park, Woo, Lee, Kweon",
    venue="BMVC",
    year=2018,
    url="https://arxiv.org/abs/1807.06514",
)


def _positive_int(owner: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


class _SpatialBranch(nn.Module):
    """BAM's spatial branch: the logits M_s (B, *S) of X (B, C, *S)."""

    def __init__(
        self,
        channels: int,
        width: int,
        dilation: int,
        num_dilated: int,
        dims: int,
        bias_before_bn: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            conv_nd(dims, channels, width, 1, bias=bias_before_bn),
            batch_norm_nd(dims, width),
            nn.ReLU(inplace=True),
        ]
        for _ in range(num_dilated):
            layers += [
                conv_nd(
                    dims, width, width, 3, padding=dilation, dilation=dilation, bias=bias_before_bn
                ),
                batch_norm_nd(dims, width),
                nn.ReLU(inplace=True),
            ]
        layers.append(conv_nd(dims, width, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(1)


def _spatial_options(owner: str, dilation, num_dilated, bias_before_bn) -> None:
    _positive_int(owner, "dilation", dilation)
    _positive_int(owner, "num_dilated", num_dilated, minimum=0)
    if not isinstance(bias_before_bn, bool):
        raise ValueError(f"{owner}: bias_before_bn must be True or False, got {bias_before_bn!r}")


@register(
    "bam_spatial",
    family="spatial",
    equation="""
        M_s = Conv1x1(h->1) o [relu BN Conv3x3_dil4(h->h)] x 2 o relu BN Conv1x1(C->h) (X),  h = C/r
        Y = X * (1 + sigmoid(M_s))
    """,
    notes="BAM's spatial branch as a standalone gate with BAM's residual output form (our packaging).",
    **_PAPER,
)
class BAMSpatial(AttentionModule):
    """BAM's spatial branch alone: Y = X * (1 + sigmoid(M_s)).

    Args:
        channels: input channels C.
        reduction: r, branch width ``C // r`` (default 16).
        hidden: explicit branch width (overrides ``reduction``).
        dilation: dilation (and padding) of the 3x3 convs (default 4).
        num_dilated: number of dilated 3x3 convs (default 2).
        bias_before_bn: give the layers that feed a BN a bias, as the official
            code (default False; see the module docstring).
        dims: number of spatial dims, 1, 2 or 3 (default 2).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        dilation: int = 4,
        num_dilated: int = 2,
        bias_before_bn: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__(channels, dims)
        owner = self._owner()
        width = hidden_channels(owner, channels, reduction, hidden)
        _spatial_options(owner, dilation, num_dilated, bias_before_bn)
        self.spatial = _SpatialBranch(channels, width, dilation, num_dilated, dims, bias_before_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        s = torch.sigmoid(self.spatial(x))
        self.record("spatial", s)
        return x * (1 + s.unsqueeze(1))


@register(
    "bam",
    family="combined",
    equation="""
        M_c = W2 relu(BN1d(W1 GAP(X))) + b2
        M_s = Conv1x1 o [relu BN Conv3x3_dil4] x 2 o relu BN Conv1x1 (X)
        M = sigmoid(M_c * M_s)  (official code; paper: sigmoid(M_c + M_s))
        Y = X * (1 + M)
    """,
    notes=(
        "merge='product' (default) is the official code, merge='sum' the paper. "
        "Placed once after each of ResNet stages 1-3 in the paper."
    ),
    **_PAPER,
)
class BAM(AttentionModule):
    """BAM: parallel channel and spatial branches, merged into one 3-D gate.

    Args:
        channels: input channels C.
        reduction: r, width ``C // r`` of both branches (default 16).
        hidden: explicit width of both branches (overrides ``reduction``).
        dilation: dilation (and padding) of the 3x3 convs (default 4).
        num_dilated: number of dilated 3x3 convs (default 2).
        merge: ``"product"`` (official code, default) or ``"sum"`` (paper).
        bias_before_bn: give the layers that feed a BN a bias, as the official
            code (default False; see the module docstring).
        dims: number of spatial dims, 1, 2 or 3 (default 2).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        dilation: int = 4,
        num_dilated: int = 2,
        merge: str = "product",
        bias_before_bn: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__(channels, dims)
        owner = self._owner()
        width = hidden_channels(owner, channels, reduction, hidden)
        _spatial_options(owner, dilation, num_dilated, bias_before_bn)
        if merge not in _MERGES:
            raise ValueError(
                f"{owner}: merge must be one of {', '.join(map(repr, _MERGES))}, got {merge!r}"
            )
        self.merge = merge
        self.fc1 = nn.Linear(channels, width, bias=bias_before_bn)
        self.bn = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, channels)
        self.spatial = _SpatialBranch(channels, width, dilation, num_dilated, dims, bias_before_bn)

    def channel_term(self, x: torch.Tensor) -> torch.Tensor:
        """M_c (B, C), before the merge (no sigmoid)."""
        z = x.mean(tuple(range(2, x.dim())))
        return self.fc2(F.relu(self.bn(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        nd = x.dim() - 2
        mc = self.channel_term(x)
        ms = self.spatial(x)
        self.record("channel", mc)
        self.record("spatial", ms)
        mc, ms = unsqueeze_spatial(mc, nd), ms.unsqueeze(1)
        m = mc * ms if self.merge == "product" else mc + ms
        return x * (1 + torch.sigmoid(m))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", merge={self.merge!r}"
