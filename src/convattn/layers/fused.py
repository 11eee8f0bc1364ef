"""Few-pass tensor helpers for the gating modules (CBAM, BAM, seed gates).

These are plain eager PyTorch (no compilation): they only choose the order of
operations so that a gate touches the full-size activation as few times as
possible. Every helper is dimension agnostic (1, 2 or 3 spatial dims) and memory
format agnostic (contiguous or channels-last).
"""

from __future__ import annotations

import math

import torch


def spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial dims of a (B, C, *S) tensor: ``(2, ..., x.dim() - 1)``."""
    return tuple(range(2, x.dim()))


def spatial_mean_amax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global average and max pool over every spatial dim: two (B, C) tensors.

    Reduces over a dims tuple instead of ``flatten(2)`` so that a channels-last
    input is not copied first.
    """
    dims = spatial_dims(x)
    return x.mean(dims), x.amax(dims)


def channel_weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``mean_c(x * w)`` for x (B, C, *S) and w (B, C), without forming ``x * w``.

    A batched matrix product (B, 1, C) @ (B, C, S): one read of x.
    Returns (B, *S).
    """
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    out = torch.bmm((w / C).unsqueeze(1).to(x.dtype), flat)
    return out.view((B,) + x.shape[2:])


def pointwise_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """The per-position MLP ``W2 relu(W1 x + b1) + b2`` over channels.

    x (B, C, *S); w1 (H, C), b1 (H,), w2 (O, H), b2 (O,). This is a 1x1 conv
    C -> H -> O written as two batched matrix products, so it works for any number
    of spatial dims without a ConvNd. Returns (B, O, *S).
    """
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    h = torch.baddbmm(b1.view(1, -1, 1), w1.unsqueeze(0).expand(B, -1, -1), flat)
    h = torch.relu(h)
    out = torch.baddbmm(b2.view(1, -1, 1), w2.unsqueeze(0).expand(B, -1, -1), h)
    return out.view((B, out.shape[1]) + x.shape[2:])


def _tracing() -> bool:
    """Whether a graph is being captured: jit trace/script (which the TorchScript-based
    ONNX exporter uses), or dynamo (torch.compile, torch.export, the dynamo ONNX exporter).
    Fast paths built from non-standard ops step aside then."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


#: positions per sample up to which ``narrow_conv`` prefers the native im2col kernel
SMALL_MAP = 256

_CONV_FN = {
    1: torch.nn.functional.conv1d,
    2: torch.nn.functional.conv2d,
    3: torch.nn.functional.conv3d,
}


def narrow_conv(conv: torch.nn.Module, p: torch.Tensor) -> torch.Tensor:
    """``conv(p)`` for a conv with one output channel and few inputs (CBAM's 2 -> 1 k x k conv).

    oneDNN, PyTorch's default CPU conv backend, handles this shape badly: a fixed
    cost of about 40-50 us even on a 2x2 map, and about 3 GMAC/s at full size.
    Two exact rewrites of the same conv are much faster (measured at 1 thread):

    - small maps (at most ``SMALL_MAP`` positions per sample, 2-D and 3-D): PyTorch's
      native im2col kernel (``thnn_conv2d`` / ``slow_conv3d``, differentiable),
      about 8 us on a 7x7 map;
    - larger maps: a depthwise conv with the batch folded into the channels,
      (1, B*I, *S) with the I kernel slices repeated B times and ``groups=B*I``,
      then a sum over the I inputs: 2-4x faster than the direct conv at
      (8, 2, 28, 28) and (32, 2, 56, 56).

    Both are the same linear map (same result up to float rounding, same
    gradients). Other devices, dilated/strided/grouped convs, other padding modes
    and traced, scripted, compiled or exported graphs use ``conv(p)`` unchanged,
    so exported models only contain the standard convolution op.
    """
    nd = p.dim() - 2
    if (
        _tracing()  # first: the size tests below would warn under torch.jit.trace
        or p.device.type != "cpu"
        or nd not in (1, 2, 3)
        or conv.out_channels != 1
        or conv.groups != 1
        or any(s != 1 for s in conv.stride)
        or any(d != 1 for d in conv.dilation)
        or isinstance(conv.padding, str)
        or conv.padding_mode != "zeros"
    ):
        return conv(p)
    k, pad = tuple(conv.kernel_size), tuple(conv.padding)
    if nd > 1 and math.prod(p.shape[2:]) <= SMALL_MAP:
        if nd == 2:
            return torch._C._nn.thnn_conv2d(p, conv.weight, k, conv.bias, (1, 1), pad)
        return torch._C._nn.slow_conv3d(p, conv.weight, k, conv.bias, (1, 1, 1), pad)
    B, n_in = p.shape[:2]
    w = conv.weight.reshape((n_in, 1) + k).repeat((B,) + (1,) * (nd + 1))
    out = _CONV_FN[nd](p.reshape((1, B * n_in) + p.shape[2:]), w, None, 1, pad, 1, B * n_in)
    out = out.view(p.shape).sum(1, keepdim=True)
    if conv.bias is not None:
        out = out + conv.bias.view((1, 1) + (1,) * nd)
    return out
