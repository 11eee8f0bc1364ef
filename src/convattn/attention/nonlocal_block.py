"""Non-local block.

Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018.
Official code: facebookresearch/video-nonlocal-net (``lib/models/nonlocal_helper.py``,
``lib/core/config.py``).

X has shape (B, C, *S) with 1, 2 or 3 spatial dims, N = prod(S). With
``subsample=True`` the keys and values come from P = MaxPool(X), a max-pool of
2 per spatial dim (the official code pools the input before the phi and g
convs), M = prod(pooled S); otherwise P = X and M = N. d = C / reduction
(C/2 by default)::

    theta = W_t X + b_t        (B, d, N)
    phi   = W_p P (+ b_p)      (B, d, M)   (bias only in dot product, see below)
    g     = W_g P + b_g        (B, d, M)
    f     = softmax_j(s * theta_i^T phi_j)    embedded Gaussian (default)
          = softmax_j(s * x_i^T p_j)           Gaussian (theta, phi = identity)
          = theta_i^T phi_j / M                dot product (no softmax, no s)
    Y     = X + BN(W_z (f g^T) + b_z)          BN gamma initialised to 0

s = d^-1/2 as the official code (``USE_SCALE=True``; the paper does not mention
it): ``scale=True`` (default), ``False`` (s = 1) or an explicit float. In the
Gaussian variant the compared vectors have C entries, so ``scale=True`` uses
C^-1/2 there. Defaults as the official code: inner width C/2, max-pool
subsampling on, biases on (but see phi below), convs initialised N(0, 0.01) with zero bias, BN
(eps 1e-5, momentum 0.1 in PyTorch's convention) with gamma = 0 and beta = 0, so
the block is the identity at initialisation.

Differences from the official code: the video code pools 1x2x2 (space only,
not time); ours pools every spatial dim by 2 (also a 3-D volume's depth), with
``ceil_mode`` so odd sizes keep their last row. The concatenation variant is not
offered. The phi conv's bias is omitted: it adds theta_i^T b_p to every score
of row i, which the softmax ignores (it never receives a gradient); the
dot-product variant, which has no softmax, keeps it. The dot-product variant
is computed as ``theta (phi^T g) / M``, the same product without the N x M
matrix.

Memory: the softmax variants use :mod:`convattn.layers.attention_kernel`
(``path="auto" | "matmul" | "chunked" | "sdpa"``), which never holds the N x M matrix at
large N.

Maps recorded under :func:`convattn.capture_maps`: "spatial" (B, *S), the mean
attention each position receives, (1/N) sum_i f_ij; with subsampling each
pooled key's share is spread evenly over the input positions of its pooling
cell, so the map still sums to 1 (softmax variants). With
``capture_maps(model, query=q)`` also "query_row" (B, *S), the row f_q. (Dot
product: the same column mean of f, which is not a distribution.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels
from ..layers.attention_kernel import (
    attention,
    channels_from,
    check_path,
    check_scale,
    flat_query_index,
    record_position_maps,
    spread_to_grid,
    tokens_from,
)
from ..registry import register

MODES = ("embedded_gaussian", "gaussian", "dot_product")

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def max_pool_by_two(x: torch.Tensor) -> torch.Tensor:
    """Max-pool (B, C, *S) by 2 in every spatial dim (ceil mode: odd sizes keep their last slice)."""
    return _MAX_POOL[x.dim() - 2](x, kernel_size=2, stride=2, ceil_mode=True)


@register(
    "nonlocal",
    family="self",
    paper="Non-local Neural Networks",
    authors="Wang, Girshick, Gupta, He",
    venue="CVPR",
    year=2018,
    equation="""
        theta = W_t X,  phi = W_p MaxPool(X),  g = W_g MaxPool(X)     (d = C/2)
        f = softmax_j(d^-1/2 theta_i^T phi_j)      (embedded Gaussian)
        Y = X + BN(W_z f g^T),  BN gamma = 0 at init
    """,
    url="https://arxiv.org/abs/1711.07971",
    notes="Embedded Gaussian by default; 'gaussian' and 'dot_product' as options.",
)
class NonLocal(AttentionModule):
    """Non-local block (embedded Gaussian by default).

    Args:
        channels: input channels C.
        reduction: inner width ``C // reduction`` (default 2, the official code's).
        hidden: explicit inner width (overrides ``reduction``).
        mode: ``"embedded_gaussian"``, ``"gaussian"`` or ``"dot_product"``.
        subsample: max-pool keys and values by 2 per spatial dim (official: on).
        scale: ``True`` (d^-1/2, official), ``False`` (1) or a positive float.
        path: attention kernel, ``"auto"``, ``"matmul"``, ``"chunked"`` or ``"sdpa"``.
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 2,
        hidden: int | None = None,
        mode: str = "embedded_gaussian",
        subsample: bool = True,
        scale: bool | float = True,
        path: str = "auto",
    ) -> None:
        super().__init__(channels)
        owner = self._owner()
        if mode not in MODES:
            raise ValueError(f"{owner}: mode must be one of {MODES}, got {mode!r}")
        if not isinstance(subsample, bool):
            raise ValueError(f"{owner}: subsample must be True or False, got {subsample!r}")
        width = hidden_channels(owner, channels, reduction, hidden)
        self.mode = mode
        self.subsample = subsample
        self.path = check_path(owner, path)
        compared = channels if mode == "gaussian" else width
        if scale is True:
            self.scale = compared**-0.5
        elif scale is False:
            self.scale = 1.0
        else:
            self.scale = check_scale(owner, scale)
        if mode != "gaussian":
            self.theta = nn.Conv1d(channels, width, 1)
            # the phi bias only matters without a softmax (see the module docstring)
            self.phi = nn.Conv1d(channels, width, 1, bias=mode == "dot_product")
        self.g = nn.Conv1d(channels, width, 1)
        self.out = nn.Conv1d(width, channels, 1)
        # BatchNorm1d on the flattened (B, C, N) view = BatchNormNd on (B, C, *S)
        self.bn = nn.BatchNorm1d(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        spatial = tuple(x.shape[2:])
        flat = x.flatten(2)
        pooled = max_pool_by_two(x) if self.subsample else x
        key_spatial = tuple(pooled.shape[2:])
        pflat = pooled.flatten(2)
        if self.mode == "gaussian":
            q, k = flat.transpose(1, 2), pflat.transpose(1, 2)
        else:
            q, k = tokens_from(self.theta, flat), tokens_from(self.phi, pflat)
        v = tokens_from(self.g, pflat)
        if self.mode == "dot_product":
            m = k.shape[1]
            y = torch.bmm(q, torch.bmm(k.transpose(1, 2), v)) / m
            self._record_dot(q, k, spatial, key_spatial)
        else:
            y = attention(q, k, v, scale=self.scale, path=self.path)
            record_position_maps(self, q, k, scale=self.scale, spatial=spatial, key_spatial=key_spatial)
        z = self.bn(channels_from(self.out, y))
        return x + z.reshape(x.shape)

    def _record_dot(self, q, k, spatial, key_spatial) -> None:
        sink = self._map_sink
        if sink is None:
            return
        m = k.shape[1]
        received = torch.bmm(q.mean(1, keepdim=True), k.transpose(1, 2))[:, 0] / m
        self.record("spatial", spread_to_grid(received, key_spatial, spatial))
        query = sink.options.get("query")
        if query is not None:
            idx = flat_query_index(self._owner(), query, spatial)
            row = torch.bmm(q[:, idx : idx + 1], k.transpose(1, 2))[:, 0] / m
            self.record("query_row", spread_to_grid(row, key_spatial, spatial))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, mode={self.mode!r}, subsample={self.subsample}, "
            f"scale={self.scale:.4g}, path={self.path!r}"
        )

