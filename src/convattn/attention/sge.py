"""SGE: Spatial Group-wise Enhance.

Li, Hu, Yang, "Spatial Group-wise Enhance: Improving Semantic Feature Learning in
Convolutional Networks", arXiv 1905.09646 (2019). Official code:
implus/PytorchInsight (``classification/models/imagenet/resnet_sge.py``,
``SpatialGroupEnhance``).

Forward, X of shape (B, C, *S) (S = (L,), (H, W) or (D, H, W)), G groups of
m = C / G channels, each group X_g (m, *S) handled alone, N = prod(S) positions::

    g   = mean_S X_g                                   (m,)     the group's mean feature
    t   = sum_c X_g[c] * g[c]                          (*S)     similarity of each position to g
    t^  = (t - mean_S t) / (std_S t + eps)             (*S)     std unbiased (N - 1), eps outside the sqrt
    a   = sigmoid(w_g t^ + b_g)                        (*S)     one scale and one shift per group
    Y_g = X_g * a                                      (m, *S)

Defaults as the official code: G = 64, eps = 1e-5, w = 0 and b = 1 at init (so
a = sigmoid(1) everywhere and Y = 0.731 X before training). Parameters: 2G
(``weight`` and ``bias``, one value per group).

Deviations from the official code:

- C must be a multiple of G: the official code reshapes without a check and
  fails inside ``view``; here a clear error says which groups fit.
- with a single spatial position (N = 1) the official unbiased std is 0/0 = NaN;
  we divide by ``max(N - 1, 1)``, so t^ = 0 and a = sigmoid(b). Identical for N > 1.
- ``weight`` and ``bias`` have shape (G,) (official (1, G, 1, 1)), so one module
  serves 1, 2 and 3 spatial dims; an official state dict loads after ``view(-1)``.
- the official module is 2-D; the maths is the same over any set of positions.

Recorded maps: ``"spatial"`` (B, *S) = mean over the groups of a.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..layers.base import check_groups
from ..registry import register


@register(
    "sge",
    family="spatial",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks",
    authors="Li, Hu, Yang",
    venue="arXiv",
    year=2019,
    equation="""
        per group X_g of m = C/G channels (G = 64):
        t = sum_c X_g[c] * mean_S X_g[c]                     (*S)
        t^ = (t - mean_S t) / (std_S t + 1e-5)               (unbiased std)
        Y_g = X_g * sigmoid(w_g t^ + b_g),  w = 0, b = 1 at init
    """,
    url="https://arxiv.org/abs/1905.09646",
    notes="groups = 64 (official); C must be a multiple of groups; 2G parameters.",
)
class SpatialGroupEnhance(AttentionModule):
    """Spatial group-wise enhance.

    Args:
        channels: input channels C, a multiple of ``groups``.
        groups: G, the number of channel groups (default 64, the official value).
        eps: added to the std of the similarity map (default 1e-5, official).
    """

    def __init__(self, channels: int, groups: int = 64, eps: float = 1e-5) -> None:
        super().__init__(channels)
        owner = self._owner()
        check_groups(owner, channels, groups)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"{owner}: eps must be a positive number, got {eps!r}")
        self.groups = groups
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.zeros(groups))
        self.bias = nn.Parameter(torch.ones(groups))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """a, shape (B, G, *S)."""
        nd = x.dim() - 2
        xg = x.unflatten(1, (self.groups, self.channels // self.groups))  # (B, G, m, *S)
        s = tuple(range(3, 3 + nd))
        t = (xg * xg.mean(s, keepdim=True)).sum(2)  # (B, G, *S)
        flat = t.flatten(2)
        centred = flat - flat.mean(-1, keepdim=True)
        # N - 1 (at least 1) counted with tensor ops: a Python int from the shape would be
        # frozen by tracing (and ones_like by the TorchScript-based ONNX exporter)
        n = (centred.detach() * 0 + 1).sum(-1, keepdim=True).sub(1).clamp_min(1)
        std = ((centred * centred).sum(-1, keepdim=True) / n).sqrt()
        t_hat = centred / (std + self.eps)
        a = torch.sigmoid(t_hat * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1))
        return a.view_as(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a = self.gate(x)
        if self._map_sink is not None:
            self.record("spatial", a.mean(1))
        xg = x.unflatten(1, (self.groups, self.channels // self.groups))
        return (xg * a.unsqueeze(2)).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
