"""Global context (GC) block.

Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", ICCV Workshops 2019 / TPAMI 2020.
Official code: xvjiarui/GCNet (``mmdet/ops/gcb/context_block.py``).

X has shape (B, C, *S), any number of spatial dims, N = prod(S),
h = C / reduction (C/16 by default)::

    a = softmax_N(w_k^T X)                        (B, N)   context weights ("att" pooling)
    c = sum_j a_j x_j                             (B, C)
    T(c) = W_2 relu(LN(W_1 c + b_1)) + b_2        (B, C),  W_1: h x C, W_2: C x h
    Y = X + T_add(c)                              "channel_add" fusion (default)
    Y = X * sigmoid(T_mul(c))                     "channel_mul" fusion
    Y = X * sigmoid(T_mul(c)) + T_add(c)          both (each fusion has its own transform)

LN is a LayerNorm over the h bottleneck channels with an affine transform (the
official ``LayerNorm([h, 1, 1])`` on a 1x1 map). With ``pooling="avg"`` the
context is the plain spatial mean (the official ``pooling_type='avg'``).

Defaults as the official code: ``pooling="att"``, fusion ``channel_add``,
ratio 1/16 (``int(C * ratio)`` = ``C // 16``), biases on the transform convs, the mask
conv Kaiming-initialised (fan in), and the last conv of each transform
zero-initialised, so with the default ``channel_add`` fusion the block is the
identity at initialisation (with ``channel_mul`` it starts as X * 0.5, as in the
official code).

Deviation: the official mask conv has a bias; a constant added to every logit
cannot change a softmax over positions, so that bias never receives a gradient
and we omit it (outputs are identical; a checkpoint's mask bias can be dropped).

Maps recorded under :func:`convattn.capture_maps`: "spatial" (B, *S), the
softmax context weights a (att pooling only); "channel" (B, C), the gate
sigmoid(T_mul(c)) when ``channel_mul`` is used; "channel_add" (B, C), the added
term T_add(c) when ``channel_add`` is used.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import AttentionModule, hidden_channels, spatial_mean, unsqueeze_spatial
from ..registry import register

POOLINGS = ("att", "avg")
FUSIONS = ("channel_add", "channel_mul")


def _transform(channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(channels, width), nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Linear(width, channels)
    )


@register(
    "gc",
    family="self",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
    authors="Cao, Xu, Lin, Wei, Hu",
    venue="ICCV Workshops",
    year=2019,
    equation="""
        a = softmax_N(Conv1x1(C -> 1)(X)),  c = sum_j a_j x_j          (B, C)
        Y = X + W_2 relu(LN(W_1 c)),  W_1: C/r x C, W_2: C x C/r (zero at init)
    """,
    url="https://arxiv.org/abs/1904.11492",
    notes="fusion='channel_mul' (X * sigmoid(.)) or both as options; pooling='avg' as an option.",
)
class GlobalContext(AttentionModule):
    """Global context block.

    Args:
        channels: input channels C.
        reduction: bottleneck width ``C // reduction`` (default 16, ratio 1/16).
        hidden: explicit bottleneck width (overrides ``reduction``).
        pooling: ``"att"`` (softmax attention pooling, default) or ``"avg"``.
        fusion: ``"channel_add"`` (default), ``"channel_mul"``, or a tuple of both.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        pooling: str = "att",
        fusion: str | tuple[str, ...] = "channel_add",
    ) -> None:
        super().__init__(channels)
        owner = self._owner()
        if pooling not in POOLINGS:
            raise ValueError(f"{owner}: pooling must be one of {POOLINGS}, got {pooling!r}")
        fusions = (fusion,) if isinstance(fusion, str) else tuple(fusion)
        if not fusions or any(f not in FUSIONS for f in fusions) or len(set(fusions)) != len(fusions):
            raise ValueError(
                f"{owner}: fusion must be 'channel_add', 'channel_mul' or a tuple of both, got {fusion!r}"
            )
        width = hidden_channels(owner, channels, reduction, hidden)
        self.pooling = pooling
        self.fusion = fusions
        self.conv_mask = nn.Linear(channels, 1, bias=False) if pooling == "att" else None
        self.channel_add = _transform(channels, width) if "channel_add" in fusions else None
        self.channel_mul = _transform(channels, width) if "channel_mul" in fusions else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        for t in (self.channel_add, self.channel_mul):
            if t is not None:
                nn.init.zeros_(t[-1].weight)
                nn.init.zeros_(t[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled context c, shape (B, C)."""
        flat = x.flatten(2)
        if self.conv_mask is None:
            return spatial_mean(x)
        logits = torch.einsum("c,bcn->bn", self.conv_mask.weight[0], flat)
        a = torch.softmax(logits, dim=-1)
        self.record("spatial", a.reshape((x.shape[0],) + tuple(x.shape[2:])))
        return torch.bmm(flat, a.unsqueeze(-1))[..., 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        nd = x.dim() - 2
        c = self.context(x)
        out = x
        if self.channel_mul is not None:
            gate = torch.sigmoid(self.channel_mul(c))
            self.record("channel", gate)
            out = out * unsqueeze_spatial(gate, nd)
        if self.channel_add is not None:
            add = self.channel_add(c)
            self.record("channel_add", add)
            out = out + unsqueeze_spatial(add, nd)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pooling={self.pooling!r}, fusion={self.fusion!r}"

