"""CBAM: the paper's equations written out, on the plain forward and the fast path, options, timm parity."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import randomize

from convattn import capture_maps, create_attention, fast

SHAPES = [(2, 32, 9), (2, 32, 6, 7), (2, 32, 4, 5, 3)]


def naive_conv(p, w):
    """Cross-correlation of p (B, I, *S) with w (O, I, *K), zero padding K // 2, stride 1."""
    nd = p.dim() - 2
    k = w.shape[2:]
    pad = [kk // 2 for kk in k]
    padded = torch.zeros(
        p.shape[:2] + tuple(s + 2 * q for s, q in zip(p.shape[2:], pad, strict=True)), dtype=p.dtype
    )
    padded[
        (slice(None), slice(None))
        + tuple(slice(q, q + s) for q, s in zip(pad, p.shape[2:], strict=True))
    ] = p
    out = torch.zeros((p.shape[0], w.shape[0]) + p.shape[2:], dtype=p.dtype)
    for off in itertools.product(*(range(kk) for kk in k)):
        window = padded[
            (slice(None), slice(None))
            + tuple(slice(o, o + s) for o, s in zip(off, p.shape[2:], strict=True))
        ]
        tap = w[(slice(None), slice(None)) + off]  # (O, I)
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                out[:, o] += tap[o, i] * window[:, i]
    assert out.dim() == nd + 2
    return out


def sig(v):
    return 1 / (1 + torch.exp(-v))


def channel_ref(x, fc1, fc2):
    # M_c = sigma(MLP(GAP x) + MLP(GMP x)), MLP(z) = W2 relu(W1 z + b1) + b2
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    avg = flat.sum(-1) / flat.shape[-1]
    mx = flat.max(-1).values

    def mlp(z):
        return torch.clamp(z @ fc1.weight.T + fc1.bias, min=0) @ fc2.weight.T + fc2.bias

    return sig(mlp(avg) + mlp(mx))


def spatial_ref(x, conv_w, bn, order="max_mean"):
    # M_s = sigma(BN(conv(cat[max_c x, mean_c x]))), BN in eval mode
    mx = x.max(1).values
    mean = x.sum(1) / x.shape[1]
    p = torch.stack((mx, mean) if order == "max_mean" else (mean, mx), 1)
    v = naive_conv(p, conv_w)
    v = (v - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return sig(v)[:, 0]


def bcast_c(m, x):
    return m.reshape(m.shape + (1,) * (x.dim() - 2))


@pytest.mark.parametrize("shape", SHAPES)
def test_cbam_channel_matches_equation(shape):
    m = randomize(create_attention("cbam_channel", 32, reduction=4)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = x * bcast_c(channel_ref(x, m.fc1, m.fc2), x)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["max_mean", "mean_max"])
@pytest.mark.parametrize("shape", SHAPES)
def test_cbam_spatial_matches_equation(shape, order):
    dims = len(shape) - 2
    m = (
        randomize(create_attention("cbam_spatial", 32, dims=dims, kernel_size=3, pool_order=order))
        .double()
        .eval()
    )
    x = torch.randn(shape, dtype=torch.float64)
    ref = x * spatial_ref(x, m.conv.weight, m.bn, order).unsqueeze(1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fast_paths", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_cbam_matches_equation(shape, fast_paths):
    dims = len(shape) - 2
    k = 7 if dims < 3 else 3
    m = create_attention("cbam", 32, dims=dims, reduction=4, kernel_size=k)
    m = randomize(m).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    # sequential: X1 = X * M_c(X); Y = X1 * M_s(X1)
    x1 = x * bcast_c(channel_ref(x, m.channel.fc1, m.channel.fc2), x)
    ref = x1 * spatial_ref(x1, m.spatial.conv.weight, m.spatial.bn).unsqueeze(1)
    with fast.use(fast_paths):
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():  # the whole-module eval kernel on the fast path
            torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_cbam_fast_and_plain_agree_in_training(memory_format):
    quick = randomize(create_attention("cbam", 64)).train()
    plain = create_attention("cbam", 64).train()
    plain.load_state_dict(quick.state_dict())
    x = torch.randn(4, 64, 10, 9).to(memory_format=memory_format)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    ya = quick(xa)
    with fast.disabled():
        yb = plain(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for (n, pa), pb in zip(quick.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-4, msg=n)
    # both updated the BN running statistics the same way
    torch.testing.assert_close(quick.spatial.bn.running_mean, plain.spatial.bn.running_mean)
    with torch.no_grad():
        quick.eval(), plain.eval()
        yq = quick(x)
        with fast.disabled():
            torch.testing.assert_close(yq, plain(x), rtol=1e-5, atol=1e-6)


def test_cbam_records_channel_then_spatial_of_gated_input():
    m = randomize(create_attention("cbam", 32, reduction=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    with capture_maps(m) as maps:
        y = m(x)
    mc, ms = maps[next(iter(maps))]["channel"], maps[next(iter(maps))]["spatial"]
    assert mc.shape == (2, 32) and ms.shape == (2, 8, 8)
    torch.testing.assert_close(y, x * mc[:, :, None, None] * ms[:, None])
    # the spatial map comes from X * M_c (sequential), not from X
    with torch.no_grad():
        torch.testing.assert_close(ms, m.spatial.gate(x * mc[:, :, None, None]))
        assert not torch.allclose(ms, m.spatial.gate(x), atol=1e-3)


def test_cbam_param_count_by_hand():
    # channel MLP 256 -> 16 -> 256 with biases: 256*16 + 16 + 16*256 + 256 = 8464
    # spatial conv 2 -> 1, 7x7, no bias: 2*7*7 = 98; BN(1): gamma + beta = 2
    mlp = 256 * 16 + 16 + 16 * 256 + 256
    assert mlp == 8464
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_attention("cbam_channel", 256)) == mlp
    assert count(create_attention("cbam_spatial", 256)) == 2 * 49 + 2
    assert count(create_attention("cbam", 256)) == mlp + 2 * 49 + 2 == 8564
    assert count(create_attention("cbam", 256, dims=3)) == mlp + 2 * 343 + 2
    assert count(create_attention("cbam", 256, dims=1, kernel_size=3)) == mlp + 2 * 3 + 2


def test_cbam_bn_momentum_is_pytorch_convention():
    m = randomize(create_attention("cbam_spatial", 8)).train()
    m.bn.running_mean.zero_()
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        pre = m.conv(torch.stack((x.amax(1), x.mean(1)), 1))
        m(x)
    # running = (1 - 0.01) * running + 0.01 * batch mean
    torch.testing.assert_close(m.bn.running_mean, 0.01 * pre.mean().reshape(1))


def test_cbam_zero_init_bn_gives_half_gate():
    m = create_attention("cbam", 32, zero_init_bn=True)
    assert torch.all(m.spatial.bn.weight == 0)
    assert torch.all(create_attention("cbam", 32).spatial.bn.weight == 1)
    x = torch.randn(2, 32, 8, 8)
    for mode in (m.train, m.eval):
        mode()
        with capture_maps(m) as maps:
            m(x)
        torch.testing.assert_close(maps[next(iter(maps))]["spatial"], torch.full((2, 8, 8), 0.5))


def test_cbam_option_errors():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        create_attention("cbam", 32, kernel_size=4)
    with pytest.raises(ValueError, match="pool_order must be one of 'max_mean', 'mean_max'"):
        create_attention("cbam_spatial", 32, pool_order="avg_max")
    with pytest.raises(ValueError, match=r"bn_momentum must be a number in \[0, 1\]"):
        create_attention("cbam", 32, bn_momentum=1.5)
    with pytest.raises(ValueError, match="reduction=64 leaves 0 hidden channels for channels=32"):
        create_attention("cbam", 32, reduction=64)
    with pytest.raises(ValueError, match="dims=4 is not supported"):
        create_attention("cbam", 32, dims=4)
    with pytest.raises(ValueError, match=r"built with dims=2"):
        create_attention("cbam", 32)(torch.randn(1, 32, 4, 4, 4))


def _timm_cbam(ours, C):
    cbam = pytest.importorskip("timm.layers.cbam")
    theirs = cbam.CbamModule(C, rd_channels=ours.channel.fc1.out_features, mlp_bias=True).eval()
    with torch.no_grad():
        theirs.channel.fc1.weight.copy_(ours.channel.fc1.weight[:, :, None, None])
        theirs.channel.fc1.bias.copy_(ours.channel.fc1.bias)
        theirs.channel.fc2.weight.copy_(ours.channel.fc2.weight[:, :, None, None])
        theirs.channel.fc2.bias.copy_(ours.channel.fc2.bias)
        w = ours.spatial.conv.weight
        if ours.spatial.pool_order == "max_mean":  # timm concatenates [mean, max]
            w = w.flip(1)
        theirs.spatial.conv.conv.weight.copy_(w)
        bn_t, bn_o = theirs.spatial.conv.bn, ours.spatial.bn
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn_t, name).copy_(getattr(bn_o, name))
    return theirs


@pytest.mark.parametrize("order", ["max_mean", "mean_max"])
@pytest.mark.parametrize("fast_paths", [True, False])
def test_cbam_parity_with_timm(order, fast_paths):
    ours = randomize(create_attention("cbam", 64, pool_order=order)).eval()
    theirs = _timm_cbam(ours, 64)
    x = torch.randn(3, 64, 9, 11)
    with torch.no_grad(), fast.use(fast_paths):
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
        # training mode: BN uses batch statistics in both
        ours.train(), theirs.train()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_cbam_spatial_parity_with_timm_gate():
    cbam = pytest.importorskip("timm.layers.cbam")
    ours = randomize(create_attention("cbam_spatial", 16, pool_order="mean_max")).eval()
    theirs = cbam.SpatialAttn(7).eval()
    with torch.no_grad():
        theirs.conv.conv.weight.copy_(ours.conv.weight)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(theirs.conv.bn, name).copy_(getattr(ours.bn, name))
        x = torch.randn(2, 16, 12, 10)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_light_cbam_matches_equation_and_timm():
    """lcbam: M_c from the averaged pools, M_s from the averaged channel pools of X * M_c;
    timm's LightCbamModule with the weights copied, in eval and with BN batch statistics."""
    m = randomize(create_attention("lcbam", 64)).double().eval()
    x = torch.randn(2, 64, 9, 7, dtype=torch.float64)
    z = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
    mc = torch.sigmoid(torch.relu(z @ m.fc1.weight.T) @ m.fc2.weight.T)
    x1 = x * mc[:, :, None, None]
    p = 0.5 * (x1.mean(1, keepdim=True) + x1.amax(1, keepdim=True))
    v = torch.nn.functional.conv2d(p, m.conv.weight, padding=3)
    bn = m.bn
    ms = torch.sigmoid((v - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(m(x), x1 * ms, rtol=1e-12, atol=1e-12)
    assert sum(q.numel() for q in m.parameters()) == 2 * 64 * 4 + 49 + 2  # hidden round(64 / 16) = 4

    cbam = pytest.importorskip("timm.layers.cbam")
    ours = randomize(create_attention("lcbam", 64)).eval()
    theirs = cbam.LightCbamModule(64).eval()
    with torch.no_grad():
        theirs.channel.fc1.weight.copy_(ours.fc1.weight[:, :, None, None])
        theirs.channel.fc2.weight.copy_(ours.fc2.weight[:, :, None, None])
        theirs.spatial.conv.conv.weight.copy_(ours.conv.weight)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(theirs.spatial.conv.bn, name).copy_(getattr(ours.bn, name))
        xf = torch.randn(3, 64, 10, 11)
        torch.testing.assert_close(ours(xf), theirs(xf), rtol=1e-5, atol=1e-6)
        ours.train(), theirs.train()
        torch.testing.assert_close(ours(xf), theirs(xf), rtol=1e-5, atol=1e-5)
    assert sum(q.numel() for q in theirs.parameters()) == sum(q.numel() for q in ours.parameters())
