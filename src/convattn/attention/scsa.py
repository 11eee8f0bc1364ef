"""SCSA: Spatial and Channel Synergistic Attention.

Si, Xu, Wang, Chen, Zhou, Liu, "SCSA: Exploring the Synergistic Effects Between
Spatial and Channel Attention", arXiv 2407.05128, 2024 (Neurocomputing 2025).
Official code: HZAI-ZJNU/SCSA (``mmpretrain/models/attentions/SCSA.py``, class ``SCSA``).

Forward, X of shape (B, C, H, W) (2-D only), C = 4 g channels in 4 groups X_i of g
channels, kernel sizes k_i = (3, 5, 7, 9)::

    SMSA (shared multi-semantic spatial attention)
      z^h = mean_W X (B, C, H),  z^w = mean_H X (B, C, W)
      u^h = cat_i DW_{k_i}(z^h_i),  u^w = cat_i DW_{k_i}(z^w_i)   (B, C, H), (B, C, W)
            DW_k: depthwise Conv1d along the strip, zero padding k // 2, with bias;
            the same four convs serve both strips
      a^h = sigmoid(GN^h(u^h)),  a^w = sigmoid(GN^w(u^w))         GroupNorm with 4 groups
      X_s = X * a^h[..., :, None] * a^w[..., None, :]             (B, C, H, W)

    PCSA (progressive channel-wise self-attention), n heads of d = C / n channels
      P = Pool_{k x k, stride k}(X_s)                  (B, C, h, w),  N = h w,  k = window_size
      Q, K, V = w_q * GN_1(P), w_k * GN_1(P), w_v * GN_1(P)   depthwise 1x1 convs (a scale per
            channel, no bias), reshaped to (B, n, d, N); GN_1: GroupNorm with 1 group
      M = softmax(Q K^T / sqrt(d)) V                   (B, n, d, N), softmax over the last axis
      g = sigmoid(mean_N M)                            (B, C)

    Y = X_s * g[:, :, None, None]                      (B, C, H, W)

Defaults as the official code and its ImageNet configs (the official constructor has no
default for ``head_num``; every config passes 1): ``head_num=1``, ``window_size=7``,
``group_kernel_sizes=(3, 5, 7, 9)``, ``qkv_bias=False``, ``gate_layer="sigmoid"``,
``down_sample_mode="avg_pool"``. ``gate_layer="softmax"`` replaces the strip sigmoids by
a softmax along the strip and the channel sigmoid by a softmax over C (the official
alternative); ``down_sample_mode="max_pool"`` pools with the maximum; ``window_size=-1``
pools to 1 x 1 (the official adaptive pool, here a mean over H and W).

Pooling. The official pool is a fixed window, ``AvgPool2d(k, stride=k)`` (not an
adaptive pool to a fixed size), and so is ours, the default: h = floor(H / k),
w = floor(W / k), the last H mod k rows and W mod k columns left out as the official
pool leaves them. Where we differ: an axis shorter than k (the official pool fails with
an empty output there) is pooled whole, as one window of its length; the input is padded
to k along that axis and the padding left out of the mean (or of the max). Any input
size >= 1 works, also in traced, compiled and exported graphs with dynamic H and W.

Other differences: the official constructor's ``fuse_bn``, ``norm_cfg`` and ``act_cfg``
are unused there and absent here; its ``attn_drop_ratio`` (0 in every config) is
absent (no dropout); its ``"recombination"`` mode refers to a method the official code
does not define, so it cannot run there and is refused here. The official code asserts
only C >= 4; its split into 4 groups and GroupNorm(4, C) need C to be a multiple of 4,
which is checked here with a clear error, as is that ``head_num`` divides C.

Parameters: the four convs g (k_1 + ... + k_4) + 4 g (7 C for the default kernels),
three GroupNorms 6 C, q, k, v 3 C (6 C with ``qkv_bias``): 16 C by default.

Recorded maps: ``"spatial"`` (B, H, W) = mean_c (a^h ⊗ a^w), the channel mean of the
SMSA gate; ``"channel"`` (B, C) = g.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule
from ..layers.ops import recording_graph
from ..registry import register

_GATES = ("sigmoid", "softmax")


def _shortfall(length, k: int):
    """max(k - length, 0), kept symbolic in traced graphs: ``length`` is an int, a SymInt
    (dynamo) or a size tensor (the TorchScript-based ONNX exporter's tracer)."""
    if isinstance(length, torch.Tensor):
        return (k - length).clamp(min=0)
    return torch.sym_max(k - length, 0)
_DOWN_SAMPLE = ("avg_pool", "max_pool")


@register(
    "scsa",
    family="combined",
    paper="SCSA: Exploring the Synergistic Effects Between Spatial and Channel Attention",
    authors="Si, Xu, Wang, Chen, Zhou, Liu",
    venue="Neurocomputing",
    year=2025,
    dims=(2,),
    equation="""
        4 channel groups, depthwise Conv1d k_i = 3, 5, 7, 9 (shared by both strips):
        a^h = sigmoid(GN_4(cat_i DW_{k_i}(mean_W X_i))),  a^w = sigmoid(GN_4(cat_i DW_{k_i}(mean_H X_i)))
        X_s = X * a^h * a^w
        P = GN_1(AvgPool_{7x7, stride 7}(X_s)),  Q, K, V = depthwise 1x1 of P   (C x N, heads over C)
        g = sigmoid(mean_N softmax(Q K^T / sqrt(C / heads)) V)
        Y = X_s * g
    """,
    url="https://arxiv.org/abs/2407.05128",
    notes="Official defaults (head_num 1 as every official config, window_size 7, kernels 3/5/7/9, "
          "no qkv bias, sigmoid gates, avg_pool); C must be a multiple of 4. An axis shorter than "
          "the window is pooled whole (the official pool fails there).",
)
class SCSA(AttentionModule):
    """Spatial and channel synergistic attention (2-D).

    Args:
        channels: input channels C, a multiple of 4 and of ``head_num``.
        head_num: heads of the channel self-attention (default 1, the official configs').
        window_size: k of the k x k, stride k pool before the channel self-attention
            (default 7); -1 pools to 1 x 1.
        group_kernel_sizes: the four odd kernel sizes of the strip convs (default (3, 5, 7, 9)).
        qkv_bias: biases on the q, k, v depthwise 1x1 convs (default False).
        gate_layer: ``"sigmoid"`` (default) or ``"softmax"``.
        down_sample_mode: ``"avg_pool"`` (default) or ``"max_pool"``.
    """

    def __init__(
        self,
        channels: int,
        head_num: int = 1,
        window_size: int = 7,
        group_kernel_sizes: tuple[int, ...] = (3, 5, 7, 9),
        qkv_bias: bool = False,
        gate_layer: str = "sigmoid",
        down_sample_mode: str = "avg_pool",
    ) -> None:
        super().__init__(channels)
        owner = self._owner()
        if channels % 4:
            raise ValueError(
                f"{owner}: channels={channels} is not a multiple of 4 (the channels are split into "
                f"4 groups, one per kernel size); valid: 4, 8, 12, ..."
            )
        if isinstance(head_num, bool) or not isinstance(head_num, int) or head_num < 1:
            raise ValueError(f"{owner}: head_num must be a positive int, got {head_num!r}")
        if channels % head_num:
            valid = [h for h in range(1, min(channels, 64) + 1) if channels % h == 0]
            raise ValueError(
                f"{owner}: channels={channels} is not a multiple of head_num={head_num}; "
                f"valid head_num for {channels} channels: {', '.join(map(str, valid))}"
            )
        if isinstance(window_size, bool) or not isinstance(window_size, int) or not (window_size >= 1 or window_size == -1):
            raise ValueError(f"{owner}: window_size must be a positive int or -1 (pool to 1 x 1), got {window_size!r}")
        kernels = tuple(group_kernel_sizes) if isinstance(group_kernel_sizes, (list, tuple)) else None
        if kernels is None or len(kernels) != 4 or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels
        ):
            raise ValueError(
                f"{owner}: group_kernel_sizes must be 4 positive odd ints (one per channel group), "
                f"got {group_kernel_sizes!r}"
            )
        if not isinstance(qkv_bias, bool):
            raise ValueError(f"{owner}: qkv_bias must be True or False, got {qkv_bias!r}")
        if gate_layer not in _GATES:
            raise ValueError(f"{owner}: gate_layer must be one of {', '.join(map(repr, _GATES))}, got {gate_layer!r}")
        if down_sample_mode == "recombination":
            raise ValueError(
                f"{owner}: down_sample_mode='recombination' is not available (the official code refers "
                f"to a space_to_chans method it does not define); valid: {', '.join(map(repr, _DOWN_SAMPLE))}"
            )
        if down_sample_mode not in _DOWN_SAMPLE:
            raise ValueError(
                f"{owner}: down_sample_mode must be one of {', '.join(map(repr, _DOWN_SAMPLE))}, "
                f"got {down_sample_mode!r}"
            )
        self.head_num, self.window_size, self.group_kernel_sizes = head_num, window_size, kernels
        self.gate_layer, self.down_sample_mode = gate_layer, down_sample_mode
        self.scale = (channels // head_num) ** -0.5
        g = channels // 4
        self.group_chans = g
        self.local_dwc, self.global_dwc_s, self.global_dwc_m, self.global_dwc_l = (
            nn.Conv1d(g, g, k, padding=k // 2, groups=g) for k in kernels
        )
        self.norm_h = nn.GroupNorm(4, channels)
        self.norm_w = nn.GroupNorm(4, channels)
        self.norm = nn.GroupNorm(1, channels)
        self.q = nn.Conv2d(channels, channels, 1, groups=channels, bias=qkv_bias)
        self.k = nn.Conv2d(channels, channels, 1, groups=channels, bias=qkv_bias)
        self.v = nn.Conv2d(channels, channels, 1, groups=channels, bias=qkv_bias)

    def _gate(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.sigmoid(t) if self.gate_layer == "sigmoid" else torch.softmax(t, dim)

    def strip_gate(self, z: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        """a^h or a^w, (B, C, L), from a pooled strip z (B, C, L)."""
        convs = (self.local_dwc, self.global_dwc_s, self.global_dwc_m, self.global_dwc_l)
        parts = torch.split(z, self.group_chans, 1)
        return self._gate(norm(torch.cat([conv(p) for conv, p in zip(convs, parts, strict=True)], 1)), 2)

    def down_sample(self, x: torch.Tensor) -> torch.Tensor:
        """P, (B, C, h, w): the k x k, stride k pool; an axis shorter than k is pooled whole."""
        k = self.window_size
        if k == -1:
            return x.mean((2, 3), keepdim=True)
        H, W = x.shape[2], x.shape[3]
        pad = recording_graph() or H < k or W < k
        if pad:
            ph, pw = _shortfall(H, k), _shortfall(W, k)
        if self.down_sample_mode == "max_pool":
            if pad:
                x = F.pad(x, (0, pw, 0, ph), value=float("-inf"))
            return F.max_pool2d(x, k, k)
        if not pad:
            return F.avg_pool2d(x, k, k)
        # the mean over the valid part of each window: pool the padded input and a padded
        # mask of ones (1 everywhere when nothing is padded)
        ones = torch.ones_like(x[:1, :1])
        return F.avg_pool2d(F.pad(x, (0, pw, 0, ph)), k, k) / F.avg_pool2d(F.pad(ones, (0, pw, 0, ph)), k, k)

    def channel_gate(self, xs: torch.Tensor) -> torch.Tensor:
        """g, (B, C), from the spatially gated input X_s."""
        p = self.norm(self.down_sample(xs))
        heads = (self.head_num, self.channels // self.head_num)
        q, k, v = (conv(p).flatten(2).unflatten(1, heads) for conv in (self.q, self.k, self.v))  # (B, n, d, N)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, -1)  # (B, n, d, d)
        return self._gate(torch.matmul(attn, v).mean(-1).flatten(1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a_h = self.strip_gate(x.mean(3), self.norm_h)  # (B, C, H)
        a_w = self.strip_gate(x.mean(2), self.norm_w)  # (B, C, W)
        xs = x * a_h.unsqueeze(3) * a_w.unsqueeze(2)
        g = self.channel_gate(xs)
        if self._map_sink is not None:
            self.record("spatial", torch.matmul(a_h.transpose(1, 2), a_w) / self.channels)
            self.record("channel", g)
        return xs * g[:, :, None, None]

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, head_num={self.head_num}, window_size={self.window_size}, "
                f"group_kernel_sizes={self.group_kernel_sizes}, gate_layer={self.gate_layer!r}, "
                f"down_sample_mode={self.down_sample_mode!r}")
