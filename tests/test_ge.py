"""Gather-Excite: the three variants written out, timm parity, parameter counts, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import convattn
from convattn import create_attention
from convattn.attention.ge import upsample_mul, window_mean


def sig(t):
    return 1 / (1 + torch.exp(-t))


def bn_eval(t, bn):
    shape = (1, -1) + (1,) * (t.dim() - 2)
    return (t - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def avg_pool_ref(x, e):
    # window 2e-1, stride e, padding e-1, mean over the in-bounds positions only (any dims)
    S = x.shape[2:]
    out_size = [(n - 1) // e + 1 for n in S]
    out = torch.zeros(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    for o in torch.cartesian_prod(*[torch.arange(n) for n in out_size]).reshape(-1, len(S)).tolist():
        sl = tuple(slice(max(i * e - (e - 1), 0), min(i * e + e, n)) for i, n in zip(o, S, strict=True))
        out[(slice(None), slice(None)) + tuple(o)] = x[(slice(None), slice(None)) + sl].mean(
            tuple(range(2, x.dim()))
        )
    return out


def upsample_ref(g, S):
    # nearest: out[i] = g[floor(i * s / n)] per dim
    idx = [torch.tensor([i * s // n for i in range(n)]) for s, n in zip(g.shape[2:], S, strict=True)]
    return g[(slice(None), slice(None)) + tuple(torch.meshgrid(*idx, indexing="ij"))]


def depthwise_ref(x, w):
    # one full-size kernel per channel, no padding: sum over every position of x_c * w_c
    return (x * w.squeeze(1)).reshape(x.shape[0], x.shape[1], -1).sum(-1)


@pytest.mark.parametrize("dims,shape", [(1, (2, 8, 12)), (2, (2, 8, 5, 6)), (3, (2, 8, 3, 4, 2))])
def test_theta_minus_global_is_sigmoid_gap(dims, shape):
    m = create_attention("ge", 8, dims=dims)
    assert sum(p.numel() for p in m.parameters()) == 0
    x = torch.randn(shape, dtype=torch.float64)
    g = sig(x.reshape(2, 8, -1).sum(-1) / x[0, 0].numel())
    torch.testing.assert_close(m(x), x * g.reshape(2, 8, *([1] * dims)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "dims,shape,e",
    [(2, (2, 4, 8, 8), 2), (2, (2, 4, 8, 8), 4), (2, (2, 4, 7, 9), 2), (2, (2, 4, 16, 16), 8),
     (1, (2, 4, 12), 4), (3, (2, 4, 4, 6, 5), 2)],
)
def test_theta_minus_extent_matches_equation(dims, shape, e):
    m = create_attention("ge", 4, extent=e, dims=dims)
    x = torch.randn(shape, dtype=torch.float64)
    g = sig(avg_pool_ref(x, e))
    torch.testing.assert_close(m(x), x * upsample_ref(g, shape[2:]), rtol=1e-12, atol=1e-12)


def test_theta_global_matches_equation():
    m = randomize(create_attention("ge", 6, variant="theta", feat_size=(5, 7))).double().eval()
    # C*H*W depthwise weights (no bias) + BN weight and bias
    assert sum(p.numel() for p in m.parameters()) == 6 * 35 + 2 * 6
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    z = depthwise_ref(x, m.gather.conv1.weight)[:, :, None, None]
    g = sig(bn_eval(z, m.gather.norm1))
    torch.testing.assert_close(m(x), x * g, rtol=1e-12, atol=1e-12)


def test_theta_plus_global_matches_equation():
    m = randomize(create_attention("ge", 8, variant="theta-plus", feat_size=4, reduction=4)).double().eval()
    # gather: C*16 + 2C ; excite: C -> C/4 -> C with biases
    assert sum(p.numel() for p in m.parameters()) == 8 * 16 + 16 + (8 * 2 + 2) + (2 * 8 + 8)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    z = torch.clamp(bn_eval(depthwise_ref(x, m.gather.conv1.weight)[:, :, None, None], m.gather.norm1), min=0)
    z = z.flatten(1)
    h = torch.clamp(z @ m.mlp.fc1.weight.flatten(1).T + m.mlp.fc1.bias, min=0)
    g = sig(h @ m.mlp.fc2.weight.flatten(1).T + m.mlp.fc2.bias)
    torch.testing.assert_close(m(x), x * g[:, :, None, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_theta_extent_matches_equation(dims):
    # extent 4: conv3x3/s2 -> BN -> ReLU -> conv3x3/s2 -> BN, then sigmoid and nearest upsampling
    C = 4
    m = randomize(create_attention("ge", C, variant="theta", extent=4, dims=dims)).double().eval()
    assert sum(p.numel() for p in m.parameters()) == 2 * (C * 3**dims + 2 * C)
    S = {1: (16,), 2: (8, 12), 3: (8, 4, 8)}[dims]
    x = torch.randn((2, C) + S, dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    z = conv(x, m.gather.conv1.weight, None, 2, 1, 1, C)
    z = torch.clamp(bn_eval(z, m.gather.norm1), min=0)
    z = bn_eval(conv(z, m.gather.conv2.weight, None, 2, 1, 1, C), m.gather.norm2)
    torch.testing.assert_close(m(x), x * upsample_ref(sig(z), S), rtol=1e-12, atol=1e-12)


def test_theta_plus_extent_matches_equation():
    # conv3x3/s2 -> BN -> ReLU -> (1x1 C -> C/r, ReLU, 1x1 C/r -> C) per position -> sigmoid -> NN upsample
    C = 8
    m = randomize(create_attention("ge", C, variant="theta-plus", extent=2, reduction=2)).double().eval()
    assert sum(p.numel() for p in m.parameters()) == (C * 9 + 2 * C) + (C * 4 + 4) + (4 * C + C)
    x = torch.randn(2, C, 6, 10, dtype=torch.float64)
    z = torch.clamp(bn_eval(F.conv2d(x, m.gather.conv1.weight, None, 2, 1, 1, C), m.gather.norm1), min=0)
    zc = z.permute(0, 2, 3, 1)  # channels last: the 1x1 convs are matrix products
    h = torch.clamp(zc @ m.mlp.fc1.weight.flatten(1).T + m.mlp.fc1.bias, min=0)
    g = sig(h @ m.mlp.fc2.weight.flatten(1).T + m.mlp.fc2.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(m(x), x * upsample_ref(g, (6, 10)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extent", [0, 2, 4])
def test_parity_with_timm_parameter_free(extent):
    layers = pytest.importorskip("timm.layers")
    ours = create_attention("ge", 16, extent=extent)
    theirs = layers.GatherExcite(16, extent=extent, use_mlp=False)
    for shape in [(2, 16, 8, 8), (2, 16, 7, 10)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_parity_with_timm_parametric_extent():
    layers = pytest.importorskip("timm.layers")
    from timm.layers import create_conv2d

    C = 16
    ours = randomize(create_attention("ge", C, variant="theta", extent=4)).eval()
    # timm 1.0.31's constructor fails for extra_params=True (TypeError from ``*dd``), so
    # build the module without them and add the gather its constructor intends.
    theirs = layers.GatherExcite(C, extent=4, use_mlp=False)
    theirs.gather = torch.nn.Sequential()
    for i in (1, 2):
        theirs.gather.add_module(f"conv{i}", create_conv2d(C, C, kernel_size=3, stride=2, depthwise=True))
        theirs.gather.add_module(f"norm{i}", torch.nn.BatchNorm2d(C))
        if i == 1:
            theirs.gather.add_module("act1", torch.nn.ReLU())
    theirs.load_state_dict(ours.state_dict())  # same parameter names
    theirs.eval()
    with torch.no_grad():
        for shape in [(2, C, 16, 16), (2, C, 14, 9)]:
            x = torch.randn(shape)
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("S,s", [((8, 8), (2, 2)), ((7, 9), (4, 5)), ((12,), (3,)), ((4, 6, 2), (2, 3, 1))])
def test_upsample_mul_is_nearest_interpolation(S, s):
    x = torch.randn((2, 3) + S)
    g = torch.rand((2, 3) + s)
    torch.testing.assert_close(upsample_mul(x, g), x * F.interpolate(g, size=S, mode="nearest"), rtol=0, atol=0)


@pytest.mark.parametrize("e", [2, 3, 4, 8])
@pytest.mark.parametrize("S", [(13,), (8, 7), (5, 9, 4)])
def test_window_mean_is_avg_pool_without_padding(S, e):
    x = torch.randn((2, 3) + S, dtype=torch.float64)
    torch.testing.assert_close(window_mean(x, e), avg_pool_ref(x, e), rtol=1e-12, atol=1e-12)
    if min(S) >= 2 * e - 1:  # torch's pooling refuses inputs smaller than the window
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(S)]
        ref = pool(x, 2 * e - 1, e, e - 1, count_include_pad=False)
        torch.testing.assert_close(window_mean(x, e), ref, rtol=1e-12, atol=1e-12)


def test_capture_maps_kinds():
    block = torch.nn.Sequential(create_attention("ge", 8, extent=2))
    x = torch.randn(2, 8, 8, 6)
    with convattn.capture_maps(block) as maps:
        block(x)
    (kinds,) = maps.values()
    assert set(kinds) == {"channel_local"} and kinds["channel_local"].shape == (2, 8, 4, 3)
    torch.testing.assert_close(kinds["channel_local"], sig(avg_pool_ref(x.double(), 2)).float())
    block = torch.nn.Sequential(create_attention("ge", 8))
    with convattn.capture_maps(block) as maps:
        block(x)
    (kinds,) = maps.values()
    torch.testing.assert_close(kinds["channel"], torch.sigmoid(x.mean((2, 3))))


def test_ge_errors():
    with pytest.raises(ValueError, match="variant must be one of 'theta-minus', 'theta', 'theta-plus'"):
        create_attention("ge", 8, variant="theta+")
    for bad in (1, -2, 2.0, True):
        with pytest.raises(ValueError, match="extent must be 0 \\(global\\) or an int >= 2"):
            create_attention("ge", 8, extent=bad)
    with pytest.raises(ValueError, match="must be 0 \\(global\\) or a power of two"):
        create_attention("ge", 8, variant="theta", extent=6)
    with pytest.raises(ValueError, match="needs feat_size="):
        create_attention("ge", 8, variant="theta")
    with pytest.raises(ValueError, match="feat_size must be a positive int or a tuple of 2"):
        create_attention("ge", 8, variant="theta", feat_size=(7, 7, 7))
    with pytest.raises(ValueError, match="feat_size is only used by the parametric variants"):
        create_attention("ge", 8, feat_size=7)
    with pytest.raises(ValueError, match="reduction=16 leaves 0 hidden channels for channels=8"):
        create_attention("ge", 8, variant="theta-plus", extent=2)
    m = create_attention("ge", 8, variant="theta", feat_size=7)
    with pytest.raises(ValueError, match=r"built for feat_size=\(7, 7\)"):
        m(torch.randn(2, 8, 8, 8))
    # extent 6 is fine without parameters (no stride-2 stack needed)
    x = torch.randn(1, 8, 12, 12)
    assert create_attention("ge", 8, extent=6)(x).shape == x.shape
    assert math.isfinite(float(create_attention("ge", 8, extent=6)(x).sum()))
