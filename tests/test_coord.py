"""Coordinate Attention: the paper's equations written out, BN in train mode, timm parity."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def sig(t):
    return 1 / (1 + torch.exp(-t))


def h_swish(t):
    return t * torch.clamp(t + 3, 0, 6) / 6


def coord_ref(m, x, train=False):
    # z^h_c(i) = 1/W sum_j x_c(i, j) ; z^w_c(j) = 1/H sum_i x_c(i, j)
    B, C, H, W = x.shape
    z = torch.cat([x.sum(3) / W, x.sum(2) / H], dim=2)  # (B, C, H + W)
    w1 = m.conv1.weight.reshape(m.conv1.out_channels, C)
    f = torch.einsum("mc,bcp->bmp", w1, z) + m.conv1.bias[None, :, None]
    bn = m.bn1
    if train:  # BN statistics over batch and all H + W positions of the concatenation
        mean = f.mean((0, 2), keepdim=True)
        var = ((f - mean) ** 2).mean((0, 2), keepdim=True)
    else:
        mean, var = bn.running_mean[None, :, None], bn.running_var[None, :, None]
    f = (f - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None] + bn.bias[None, :, None]
    f = h_swish(f)
    f_h, f_w = f[:, :, :H], f[:, :, H:]
    wh = m.conv_h.weight.reshape(C, -1)
    ww = m.conv_w.weight.reshape(C, -1)
    g_h = sig(torch.einsum("cm,bmp->bcp", wh, f_h) + m.conv_h.bias[None, :, None])  # (B, C, H)
    g_w = sig(torch.einsum("cm,bmp->bcp", ww, f_w) + m.conv_w.bias[None, :, None])  # (B, C, W)
    return x * g_h[:, :, :, None] * g_w[:, :, None, :], g_h, g_w


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (3, 16, 8, 8)])
def test_coord_matches_equation_eval(shape):
    m = randomize(create_attention("coord", 16)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = coord_ref(m, x)[0]
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_coord_matches_equation_train_batch_stats():
    m = randomize(create_attention("coord", 16)).double().train()
    x = torch.randn(4, 16, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), coord_ref(m, x, train=True)[0], rtol=1e-10, atol=1e-12)


def test_hidden_width_follows_official_rule():
    # m = max(8, C // 32)
    assert create_attention("coord", 64).conv1.out_channels == 8
    assert create_attention("coord", 512).conv1.out_channels == 16
    assert create_attention("coord", 4).conv1.out_channels == 8
    assert create_attention("coord", 64, reduction=4).conv1.out_channels == 16
    assert create_attention("coord", 64, reduction=16, min_hidden=1).conv1.out_channels == 4
    assert create_attention("coord", 64, hidden=5).conv1.out_channels == 5


def test_coord_param_count():
    # C = 64, m = 8: conv1 64*8 + 8, BN 2*8, conv_h and conv_w 8*64 + 64 each
    m = create_attention("coord", 64)
    assert sum(p.numel() for p in m.parameters()) == 64 * 8 + 8 + 16 + 2 * (8 * 64 + 64)


def test_coord_option_errors():
    with pytest.raises(ValueError, match="reduction must be a positive number"):
        create_attention("coord", 16, reduction=0)
    with pytest.raises(ValueError, match="min_hidden must be a positive int"):
        create_attention("coord", 16, min_hidden=0)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        create_attention("coord", 16, hidden=-2)


@pytest.mark.parametrize("shape", [(2, 16, 8), (2, 16, 4, 4, 4)])
def test_coord_rejects_non_2d(shape):
    m = create_attention("coord", 16)
    with pytest.raises(ValueError, match="spatial dim"):
        m(torch.randn(shape))
    with pytest.raises(ValueError, match="not supported"):
        create_attention("coord", 16, dims=len(shape) - 2)


def test_coord_records_height_width_spatial():
    m = randomize(create_attention("coord", 16)).double().eval()
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64)
    with convattn.capture_maps(m) as maps:
        m(x)
    _, g_h, g_w = coord_ref(m, x)
    rec = maps[type(m).__name__]
    torch.testing.assert_close(rec["height"], g_h)
    torch.testing.assert_close(rec["width"], g_w)
    torch.testing.assert_close(rec["spatial"], (g_h[:, :, :, None] * g_w[:, :, None, :]).mean(1))


@pytest.mark.parametrize("train", [False, True])
def test_coord_parity_with_timm(train):
    # timm's CoordAttn defaults differ (hidden make_divisible(C/16*2/3, 8), no bias);
    # with rd_channels=m and bias=True it is the official graph.
    coord_attn = pytest.importorskip("timm.layers.coord_attn")
    ours = randomize(create_attention("coord", 64)).train(train)
    theirs = coord_attn.CoordAttn(64, rd_channels=ours.conv1.out_channels, bias=True).train(train)
    theirs.load_state_dict(ours.state_dict())  # same names: conv1, bn1, conv_h, conv_w
    x = torch.randn(3, 64, 9, 6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    if train:  # the running statistics moved the same way
        torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean)
        torch.testing.assert_close(ours.bn1.running_var, theirs.bn1.running_var)


@pytest.mark.parametrize("x_grad", [True, False])
def test_coord_gradients_match_equation(x_grad):
    # the custom backward (strip pooling, gate application) against autograd of the equation
    m = randomize(create_attention("coord", 16)).double().train()
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64, requires_grad=x_grad)
    g = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    params = list(m.parameters())
    inputs = ([x] if x_grad else []) + params
    ours = torch.autograd.grad((m(x) * g).sum(), inputs)
    ref = torch.autograd.grad((coord_ref(m, x, train=True)[0] * g).sum(), inputs)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
