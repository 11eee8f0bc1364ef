"""Frequency Channel Attention (FcaNet, multi-spectral channel attention).

Qin, Zhang, Wu, Li, "FcaNet: Frequency Channel Attention Networks", ICCV 2021.
Official code: cfzd/FcaNet (``model/layer.py``: ``MultiSpectralAttentionLayer``,
``MultiSpectralDCTLayer``, ``get_freq_indices``).

Forward, X of shape (B, C, H, W), n frequencies (u_i, v_i) (16 for 'top16')::

    channel c belongs to group i(c) = floor(c * n / C)        (contiguous groups)
    B^{u,v}_{h,w} = b_u(h) b_v(w)                             orthonormal 2D DCT-II basis (H x W)
    y_c  = sum_{h,w} x_{c,h,w} B^{u_i(c), v_i(c)}_{h,w}       (B, C)   multi-spectral pooling
    att  = sigmoid(W2 relu(W1 y))                             (B, C),  W1: C/r x C, W2: C x C/r, no bias
    Y    = X * att                                            (B, C, H, W)

with b_u(t) = cos(pi u (t + 1/2) / n) / sqrt(n), times sqrt(2) for u > 0 (see
``convattn.layers.dct``). Frequency (0, 0) gives y_c = GAP(x_c) * sqrt(HW): with
'top1' FcaNet is SE without biases and with a rescaled input to W1.

Defaults as the official code: r = 16 (hidden width ``C // r``, no rounding), no
biases in the MLP, frequency selection 'top16' (the 16 best single frequencies
of the paper's ablation, on a 7x7 grid; the lists are the official code's, also
'low<n>' and 'bot<n>' for n <= 32). The official code scales a 7x7-grid frequency
to an H-point axis as ``u * (H // 7)`` ("(2, 2) in 14x14 is identical to (1, 1)
in 7x7").

Input sizes (where we differ from the official code). The official layer is
built for one fixed size (56/28/14/7 in ResNet) and adaptive-average-pools any
other input to that size first. By default we instead build the DCT basis for the
input's own size, with the official scaling ``u * (H // 7)``; for an axis shorter
than 7 the official factor is 0 (every group would collapse onto DC), so there we
keep u and clamp it to H - 1. Pass ``dct_size=7`` (or 14, (28, 28), ...) to get
the official behaviour exactly: inputs of another size are adaptive-average-pooled
to ``dct_size`` first. For inputs whose sides are multiples of 7 and equal to the
official per-stage size the two agree.

Supported sizes: any spatial size >= 1 per dim (1, 2 or 3 spatial dims), in
eager mode and in traced, compiled and exported graphs alike. In eager mode the
basis is built once per (size, dtype, device) and cached (never in the state
dict). While a tracer records the forward (``torch.jit.trace``, ``torch.compile``,
``torch.export`` and the ONNX exporter) the cache is bypassed and the filters
are computed with tensor ops from ``torch.arange`` of the input's (symbolic) size
(``traced_basis``; with ``dct_size`` the adaptive pool is folded into the filter
as a pooling matrix), so an exported graph with dynamic H, W computes the right
filters, including the frequency scaling and the clamp, at every size. The two
paths agree to float rounding (both are built in float64 and cast).

Channels not divisible by the number of frequencies: the official code asserts
``C % n == 0``. We use the same contiguous split ``i(c) = floor(c * n / C)``,
which is the official assignment when n divides C and otherwise gives groups of
floor(C/n) or ceil(C/n) channels. When C < n only the first C frequencies of the
ranking are used (``n := C``), one channel each.

1D and 3D inputs (our generalisation, not the paper's): a 1D input of length L
is treated as an L x 1 image, so its frequencies are u_i (v_i would be scaled by
1 // 7 = 0 anyway); a 3D input (D, H, W) uses (0, u_i, v_i), i.e. the DC
component along the first spatial dim and the 2D frequency over the last two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule, hidden_channels, unsqueeze_spatial
from ..layers.dct import dct_basis_nd, dct_filters_traceable, fca_frequencies, scale_frequency
from ..layers.ops import recording_graph
from ..registry import register

_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def _symbolic_shapes(x: torch.Tensor) -> bool:
    """True while a tracer records the forward: torch.jit.trace (and the legacy ONNX
    exporter built on it), torch.compile, or torch.export / the dynamo ONNX exporter
    (fake tensors with SymInt sizes)."""
    if recording_graph():
        return True
    for s in x.shape[2:]:
        if type(s) is not int:
            return True
    return False


def fca_channel_groups(channels: int, num_freq: int) -> list[int]:
    """The frequency index of each channel: ``floor(c * n / C)`` with n = min(num_freq, C)."""
    n = min(num_freq, channels)
    return [c * n // channels for c in range(channels)]


def fca_frequency_nd(freq: tuple[int, int], size: tuple[int, ...]) -> tuple[int, ...]:
    """A 7x7-grid pair (u, v) placed and scaled on a 1D/2D/3D input of ``size``."""
    u, v = freq
    placed = {1: (u,), 2: (u, v), 3: (0, u, v)}[len(size)]
    return tuple(scale_frequency(f, n) for f, n in zip(placed, size, strict=True))


@register(
    "fca",
    family="channel",
    paper="FcaNet: Frequency Channel Attention Networks",
    authors="Qin, Zhang, Wu, Li",
    venue="ICCV",
    year=2021,
    equation="""
        y_c = sum_{h,w} X_{c,h,w} B^{u_i, v_i}_{h,w},  channel c in group i of 16, B = 2D DCT-II
        att = sigmoid(W2 relu(W1 y)),  no biases, r = 16
        Y = X * att
    """,
    url="https://arxiv.org/abs/2012.11879",
    notes="DCT basis built for the input size by default; dct_size= reproduces the official fixed size.",
)
class FcaNet(AttentionModule):
    """Multi-spectral channel attention: DCT-frequency pooling per channel group + MLP.

    Args:
        channels: input channels C.
        reduction: r, hidden width ``C // r`` (default 16).
        hidden: explicit hidden width (overrides ``reduction``).
        freq_sel: ``"top16"`` (default), ``"low16"``, ``"top1"`` (= GAP * sqrt(N)),
            any of ``"top<n>"``, ``"low<n>"``, ``"bot<n>"`` with n <= 32.
        dct_size: ``None`` (default) builds the basis for each input size; an int
            or tuple fixes the basis size and adaptive-average-pools other inputs
            to it (the official behaviour).
    """

    def __init__(
        self,
        channels: int,
        reduction: float = 16,
        hidden: int | None = None,
        freq_sel: str = "top16",
        dct_size: int | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(channels)
        width = hidden_channels(self._owner(), channels, reduction, hidden)
        try:
            self.freqs = fca_frequencies(freq_sel)
        except ValueError as e:
            raise ValueError(f"{self._owner()}: {e}") from None
        if dct_size is not None:
            sizes = (dct_size,) if isinstance(dct_size, int) else dct_size
            if (
                not isinstance(sizes, (tuple, list))
                or not 1 <= len(sizes) <= 3
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
            ):
                raise ValueError(
                    f"{self._owner()}: dct_size must be None, a positive int or a tuple of 1-3 "
                    f"positive ints, got {dct_size!r}"
                )
            dct_size = tuple(sizes) if not isinstance(dct_size, int) else dct_size
        self.freq_sel = freq_sel
        self.dct_size = dct_size
        self.groups = fca_channel_groups(channels, len(self.freqs))
        self.register_buffer("group_index", torch.tensor(self.groups), persistent=False)
        # the used 7x7-grid pairs (u, v), for the traced basis (see spectral_pool)
        used = self.freqs[: self.groups[-1] + 1]
        self.register_buffer("grid_freqs", torch.tensor(used, dtype=torch.long), persistent=False)
        self.fc1 = nn.Linear(channels, width, bias=False)
        self.fc2 = nn.Linear(width, channels, bias=False)
        self._bases: dict[tuple, torch.Tensor] = {}

    def basis(self, size: tuple[int, ...], dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The per-channel DCT filters for spatial ``size``, shape (C, prod(size)); cached."""
        size = tuple(size)
        key = (size, dtype, torch.device(device) if device is not None else torch.device("cpu"))
        b = self._bases.get(key)
        if b is None:
            used = self.freqs[: self.groups[-1] + 1]
            per_freq = torch.stack([dct_basis_nd(size, fca_frequency_nd(f, size)).reshape(-1) for f in used])
            b = per_freq.to(dtype=dtype, device=device)[self.group_index]
            if not torch.compiler.is_compiling():  # torch.export: no attribute writes
                self._bases[key] = b
        return b

    def traced_basis(self, size, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The per-channel filters for an input of spatial ``size``, built with tensor ops; not cached.

        ``size`` may be ints, SymInts or traced sizes. This is what traced,
        compiled and exported graphs contain, so that they compute the filters
        for whatever size they are run at. Without ``dct_size`` it equals
        :meth:`basis` (``size``); with ``dct_size`` it is the filter of
        "adaptive-average-pool to ``dct_size``, then ``basis(dct_size)``".
        """
        nd = len(size)
        g = self.grid_freqs.to(device) if device is not None else self.grid_freqs
        placed = {1: g[:, :1], 2: g, 3: torch.cat((torch.zeros_like(g[:, :1]), g), 1)}[nd]  # as fca_frequency_nd
        # float64 as the cached basis (cos(pi u (t + 1/2) / n) loses ~1e-6 in float32 at n = 56);
        # MPS has no float64
        work = torch.float32 if g.device.type == "mps" else torch.float64
        pooled_to = self._dct_size_for(nd, size) if self.dct_size is not None else None
        b = dct_filters_traceable(size, placed, dtype=work, device=g.device, pooled_to=pooled_to)
        return b[self.group_index].to(dtype)

    def _dct_size_for(self, nd: int, shape) -> tuple[int, ...]:
        size = (self.dct_size,) * nd if isinstance(self.dct_size, int) else self.dct_size
        if len(size) != nd:
            raise ValueError(
                f"{self._owner()}: dct_size={self.dct_size!r} has {len(size)} dims but the input "
                f"has {nd} spatial dims (shape {tuple(shape)})"
            )
        return size

    def spectral_pool(self, x: torch.Tensor) -> torch.Tensor:
        """y_c = sum_S x_c B_c over every spatial position: (B, C, *S) -> (B, C)."""
        if _symbolic_shapes(x):
            # traced / compiled / exported: filters as a function of the (symbolic) size
            return (x.flatten(2) * self.traced_basis(x.shape[2:], x.dtype, x.device)).sum(-1)
        xp = x
        if self.dct_size is not None:
            size = self._dct_size_for(x.dim() - 2, x.shape)
            if tuple(x.shape[2:]) != size:
                xp = _ADAPTIVE_POOL[x.dim() - 2](x, size)
        b = self.basis(xp.shape[2:], xp.dtype, xp.device)
        # a per-channel dot product. Measured on CPU, multiply-then-sum (one temporary of x's
        # size) is 2-4x faster than einsum's bmm over C (C gemv calls) or a depthwise conv.
        return (xp.flatten(2) * b).sum(-1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights att, shape (B, C)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(self.spectral_pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        a = self.gate(x)
        self.record("channel", a)
        return x * unsqueeze_spatial(a, x.dim() - 2)

    def extra_repr(self) -> str:
        s = f"{super().extra_repr()}, hidden={self.fc1.out_features}, freq_sel={self.freq_sel!r}"
        if self.dct_size is not None:
            s += f", dct_size={self.dct_size!r}"
        return s

