"""Efficient Local Attention (ELA).

Xu, Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
arXiv 2403.01123 (2024). Two implementations are in use: the authors' code and
timm's ``EfficientLocalAttn`` (``timm/layers/coord_attn.py``, key ``ela``). Both
are offered here.

Forward, X of shape (B, C, H, W) (2-D only: the strips are the H and W axes)::

    z^h = mean_W X                                  (B, C, H)
    z^w = mean_H X                                  (B, C, W)
    a^h = sigmoid(act(GN_h(Conv_h(z^h))))           (B, C, H)
    a^w = sigmoid(act(GN_w(Conv_w(z^w))))           (B, C, W)
    Y = X * a^h[..., :, None] * a^w[..., None, :]   (B, C, H, W)

Conv is a depthwise 1-D convolution (one k-tap filter per channel, zero padding
k // 2, no bias) along the strip; GN a GroupNorm over (C, strip).

- ``shared=True`` (default, the authors' code): one Conv and one GN(``norm_groups``
  = 16) serve both strips, no ``act``: C k + 2 C parameters (9 C for k = 7).
- ``shared=False, norm_groups=1, act="silu"``: timm's ``ela`` exactly (separate H
  and W convs and norms, GroupNorm with one group, SiLU before the sigmoid):
  2 (C k + 2 C) parameters (18 C for k = 7); see :meth:`ELA.timm`.

No channel reduction and no BatchNorm, so batch size 1 and any input size work.
GroupNorm's groups must divide C (a clear error says which values do).

Recorded maps: ``"height"`` (B, C, H) = a^h, ``"width"`` (B, C, W) = a^w and
``"spatial"`` (B, H, W) = mean_C (a^h ⊗ a^w), the channel mean of the separable
per-element gate.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule
from ..registry import register

_ACTS = {None: nn.Identity, "silu": nn.SiLU, "relu": nn.ReLU}


def _depthwise_1d(channels: int, kernel_size: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False)


@register(
    "ela",
    family="combined",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks",
    authors="Xu, Wan",
    venue="arXiv",
    year=2024,
    dims=(2,),
    equation="""
        z^h = mean_W X (B, C, H),  z^w = mean_H X (B, C, W)
        a^h = sigmoid(GN(Conv1d_k(z^h))),  a^w = sigmoid(GN(Conv1d_k(z^w)))  (depthwise, k = 7)
        Y = X * a^h * a^w
    """,
    url="https://arxiv.org/abs/2403.01123",
    notes="Default: the authors' code (one shared depthwise conv and GroupNorm(16), 9C parameters). "
          "timm's ela: shared=False, norm_groups=1, act='silu' (18C parameters).",
)
class ELA(AttentionModule):
    """Efficient local attention (2-D).

    Args:
        channels: input channels C.
        kernel_size: k of the depthwise 1-D convs (odd, default 7).
        shared: one conv and one GroupNorm for both strips (the authors' code, default)
            or separate ones (timm).
        norm_groups: GroupNorm groups (default 16, the authors'; timm uses 1); must divide C.
        act: activation between the GroupNorm and the sigmoid: None (default, the
            authors'), ``"silu"`` (timm) or ``"relu"``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        shared: bool = True,
        norm_groups: int = 16,
        act: str | None = None,
    ) -> None:
        super().__init__(channels)
        owner = self._owner()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{owner}: kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(shared, bool):
            raise ValueError(f"{owner}: shared must be True or False, got {shared!r}")
        if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
            raise ValueError(f"{owner}: norm_groups must be a positive int, got {norm_groups!r}")
        if channels % norm_groups:
            valid = [g for g in range(1, min(channels, 64) + 1) if channels % g == 0]
            raise ValueError(
                f"{owner}: channels={channels} is not divisible by norm_groups={norm_groups}; "
                f"valid norm_groups for {channels} channels: {', '.join(map(str, valid))}"
            )
        if act not in _ACTS:
            raise ValueError(f"{owner}: act must be one of {', '.join(map(repr, _ACTS))}, got {act!r}")
        self.kernel_size, self.shared, self.norm_groups, self.act_name = kernel_size, shared, norm_groups, act
        self.conv_h = _depthwise_1d(channels, kernel_size)
        self.norm_h = nn.GroupNorm(norm_groups, channels)
        self.conv_w = None if shared else _depthwise_1d(channels, kernel_size)
        self.norm_w = None if shared else nn.GroupNorm(norm_groups, channels)
        self.act = _ACTS[act]()

    @classmethod
    def timm(cls, channels: int, kernel_size: int = 7) -> ELA:
        """timm's ``EfficientLocalAttn`` configuration (its defaults)."""
        return cls(channels, kernel_size=kernel_size, shared=False, norm_groups=1, act="silu")

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a^h (B, C, H), a^w (B, C, W))."""
        conv_w = self.conv_h if self.shared else self.conv_w
        norm_w = self.norm_h if self.shared else self.norm_w
        a_h = torch.sigmoid(self.act(self.norm_h(self.conv_h(x.mean(3)))))
        a_w = torch.sigmoid(self.act(norm_w(conv_w(x.mean(2)))))
        return a_h, a_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a_h, a_w = self.gates(x)
        if self._map_sink is not None:
            self.record("height", a_h)
            self.record("width", a_w)
            self.record("spatial", torch.matmul(a_h.transpose(1, 2), a_w) / self.channels)
        return x * a_h.unsqueeze(3) * a_w.unsqueeze(2)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, kernel_size={self.kernel_size}, shared={self.shared}, "
                f"norm_groups={self.norm_groups}, act={self.act_name!r}")
