"""FcaNet: multi-spectral pooling written out with explicit DCT filters, options, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from convattn import create_attention
from convattn.layers.dct import dct_basis_nd, fca_frequencies

# The official 'top16' (u, v) pairs on the 7x7 grid (cfzd/FcaNet model/layer.py)
TOP16 = [(0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
         (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2)]


def dct_1d(pos, freq, n):
    # orthonormal DCT-II: cos(pi f (t + 1/2) / n) / sqrt(n), times sqrt(2) for f > 0
    v = math.cos(math.pi * freq * (pos + 0.5) / n) / math.sqrt(n)
    return v if freq == 0 else v * math.sqrt(2)


def filters(C, size, freqs):
    """Per-channel filter of shape (C, *size); channel c uses freqs[c * n // C] (n = len(freqs))."""
    n = len(freqs)
    out = torch.zeros((C,) + tuple(size), dtype=torch.float64)
    for c in range(C):
        f = freqs[c * n // C]
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in size]).reshape(-1, len(size)).tolist():
            val = 1.0
            for p, u, s in zip(idx, f, size, strict=True):
                val *= dct_1d(p, u, s)
            out[(c,) + tuple(idx)] = val
    return out


def fca_reference(x, filt, w1, w2):
    # y_c = sum_s x_cs F_cs ; att = sigmoid(W2 relu(W1 y)) ; out = x * att
    B, C = x.shape[:2]
    y = (x * filt).reshape(B, C, -1).sum(-1)
    att = 1 / (1 + torch.exp(-(torch.clamp(y @ w1.T, min=0) @ w2.T)))
    return x * att.reshape(B, C, *([1] * (x.dim() - 2)))


def scaled(freqs, size):
    # official scaling u * (H // 7); our fallback below 7: keep u, clamp to H - 1
    return [tuple(min(u * max(n // 7, 1), n - 1) for u, n in zip(f, size, strict=True)) for f in freqs]


def test_top16_is_official_list():
    assert fca_frequencies("top16") == TOP16
    assert fca_frequencies("top1") == [(0, 0)]
    low = fca_frequencies("low16")
    assert low[:6] == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0)]  # zig-zag from DC
    assert len(set(fca_frequencies("bot32"))) == 32


def test_dct_basis_is_orthonormal():
    bases = torch.stack([dct_basis_nd((7, 7), (u, v)).reshape(-1) for u in range(7) for v in range(7)])
    torch.testing.assert_close(bases @ bases.T, torch.eye(49, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (14, 21), (8, 9)])
def test_fca_matches_equation_2d(size):
    C = 32
    m = randomize(create_attention("fca", C, reduction=4)).double().eval()
    x = torch.randn((2, C) + size, dtype=torch.float64)
    filt = filters(C, size, scaled(TOP16, size))
    torch.testing.assert_close(m(x), fca_reference(x, filt, m.fc1.weight, m.fc2.weight), rtol=1e-12, atol=1e-12)


def test_fca_small_input_clamps_frequencies():
    # 4 x 5 < 7: (6, 0) -> (3, 0), (1, 6) -> (1, 4), (0, 5) -> (0, 4) ...
    C, size = 16, (4, 5)
    m = randomize(create_attention("fca", C, reduction=4)).double().eval()
    x = torch.randn((2, C) + size, dtype=torch.float64)
    freqs = scaled(TOP16, size)
    assert freqs[2] == (3, 0) and freqs[9] == (1, 4) and freqs[3] == (0, 4)
    torch.testing.assert_close(
        m(x), fca_reference(x, filters(C, size, freqs), m.fc1.weight, m.fc2.weight), rtol=1e-12, atol=1e-12
    )


def test_fca_1d_and_3d_generalisation():
    C = 16
    m = randomize(create_attention("fca", C, reduction=4)).double().eval()
    # 1D: frequency u of each pair
    x1 = torch.randn(2, C, 14, dtype=torch.float64)
    f1 = [(min(u * 2, 13),) for u, _ in TOP16]
    torch.testing.assert_close(m(x1), fca_reference(x1, filters(C, (14,), f1), m.fc1.weight, m.fc2.weight))
    # 3D: (0, u, v) on (D, H, W)
    x3 = torch.randn(2, C, 3, 7, 7, dtype=torch.float64)
    f3 = [(0, u, v) for u, v in TOP16]
    torch.testing.assert_close(m(x3), fca_reference(x3, filters(C, (3, 7, 7), f3), m.fc1.weight, m.fc2.weight))


def test_fca_dc_is_gap_times_sqrt_hw():
    m = create_attention("fca", 8, reduction=2, freq_sel="top1").double()
    x = torch.randn(3, 8, 6, 10, dtype=torch.float64)
    torch.testing.assert_close(m.spectral_pool(x), x.mean((2, 3)) * math.sqrt(60), rtol=1e-12, atol=1e-12)
    # and the whole module is then SE without biases on GAP * sqrt(HW)
    y = x.mean((2, 3)) * math.sqrt(60)
    att = torch.sigmoid(m.fc2(F.relu(m.fc1(y))))
    torch.testing.assert_close(m(x), x * att[:, :, None, None])


@pytest.mark.parametrize("C,sizes", [(24, [2, 1] * 8), (40, [3, 2] * 8), (32, [2] * 16)])
def test_fca_channel_groups_not_divisible(C, sizes):
    m = create_attention("fca", C, reduction=4)
    counts = torch.bincount(torch.tensor(m.groups)).tolist()
    assert counts == sizes and len(counts) == 16
    # groups are contiguous and follow floor(c * 16 / C)
    assert m.groups == [c * 16 // C for c in range(C)]
    x = torch.randn(2, C, 7, 7, dtype=torch.float64)
    m = randomize(m).double()
    ref = fca_reference(x, filters(C, (7, 7), TOP16), m.fc1.weight, m.fc2.weight)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_fca_fewer_channels_than_frequencies_uses_the_first():
    m = create_attention("fca", 6, reduction=2)
    assert m.groups == [0, 1, 2, 3, 4, 5]
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    m = randomize(m).double()
    ref = fca_reference(x, filters(6, (7, 7), TOP16[:6]), m.fc1.weight, m.fc2.weight)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_fca_fixed_dct_size_is_official_behaviour():
    # official: a layer built for 7x7 adaptive-average-pools a 16x16 input to 7x7 first
    C = 16
    m = randomize(create_attention("fca", C, reduction=4, dct_size=7)).double().eval()
    x = torch.randn(2, C, 16, 16, dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(x, 7)
    y = (pooled * filters(C, (7, 7), TOP16)).sum((2, 3))
    att = torch.sigmoid(m.fc2(F.relu(m.fc1(y))))
    torch.testing.assert_close(m(x), x * att[:, :, None, None], rtol=1e-12, atol=1e-12)
    # at the built size nothing is pooled: same as the adaptive-basis default
    d = create_attention("fca", C, reduction=4).double()
    d.load_state_dict(m.state_dict())
    x7 = torch.randn(2, C, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x7), d(x7), rtol=1e-12, atol=1e-12)


def test_fca_basis_cache_per_size_and_dtype():
    m = create_attention("fca", 16, reduction=4)
    m(torch.randn(1, 16, 7, 7))
    m(torch.randn(1, 16, 7, 7))
    m(torch.randn(1, 16, 14, 14))
    m.double()(torch.randn(1, 16, 7, 7, dtype=torch.float64))
    assert len(m._bases) == 3
    assert all("basis" not in k and "_bases" not in k for k in m.state_dict())


def test_fca_param_count():
    # 256 -> 16 -> 256, no biases
    assert sum(p.numel() for p in create_attention("fca", 256).parameters()) == 2 * 256 * 16


def test_fca_bad_options():
    for bad in ("mid16", "top0", "top33", "top", 16, None):
        with pytest.raises(ValueError, match="freq_sel must be 'top<n>', 'low<n>' or 'bot<n>'"):
            create_attention("fca", 32, freq_sel=bad)
    with pytest.raises(ValueError, match="reduction=64 leaves 0 hidden channels for channels=32"):
        create_attention("fca", 32, reduction=64)
    for bad in (0, (7, 0), "7", (7, 7, 7, 7), 7.0):
        with pytest.raises(ValueError, match="dct_size must be None, a positive int or a tuple"):
            create_attention("fca", 32, dct_size=bad)
    m = create_attention("fca", 32, dct_size=(7, 7))
    with pytest.raises(ValueError, match=r"dct_size=\(7, 7\) has 2 dims but the input has 1 spatial dims"):
        m(torch.randn(2, 32, 12))


@pytest.mark.parametrize("size", [(7, 7), (4, 5), (14, 21), (1, 1), (12,), (30,), (3, 7, 7), (2, 3, 9)])
@pytest.mark.parametrize("freq_sel", ["top16", "low32", "top1"])
def test_traced_basis_equals_cached_basis(size, freq_sel):
    # the tensor-op filters of traced graphs are the cached eager basis (same float64 build)
    m = create_attention("fca", 40, reduction=4, freq_sel=freq_sel)
    torch.testing.assert_close(m.traced_basis(size, torch.float64), m.basis(size, torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(m.traced_basis(size, torch.float32), m.basis(size, torch.float32), rtol=0, atol=1e-7)
    # and both are the equation's filters
    ref = filters(40, size, scaled([(0,) * (len(size) - 2) + f[: len(size)] for f in TOP16], size))
    if freq_sel == "top16":
        torch.testing.assert_close(m.basis(size, torch.float64), ref.reshape(40, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dct_size", [7, (5, 9)])
def test_traced_basis_folds_the_official_adaptive_pool(dct_size):
    m = randomize(create_attention("fca", 16, reduction=4, dct_size=dct_size)).double()
    for size in [(7, 7), (16, 16), (5, 9), (20, 13), (3, 4)]:
        x = torch.randn((2, 16) + size, dtype=torch.float64)
        traced = (x.flatten(2) * m.traced_basis(size, torch.float64)).sum(-1)
        torch.testing.assert_close(traced, m.spectral_pool(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opts", [{}, {"dct_size": 7}])
def test_jit_trace_at_one_size_is_right_at_others(opts):
    """The eager path (cached basis) equals a trace made at 8x8 and run at other sizes."""
    m = randomize(create_attention("fca", 16, reduction=4, **opts)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation warning
        traced = torch.jit.trace(m, torch.randn(2, 16, 8, 8))
    for size in [(8, 8), (4, 5), (14, 21), (16, 16), (1, 1)]:
        x = torch.randn((3, 16) + size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), m(x), rtol=1e-5, atol=1e-5)
    assert not any("basis" in k for k in m.state_dict())

