"""sSE and scSE: the paper's / official code's equations written out, options, timm parity."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize
from torch import nn

import convattn
from convattn import create_attention


def sig(t):
    return 1 / (1 + torch.exp(-t))


def sse_ref(x, w, b):
    # q_n = sigmoid(sum_c w_c x_cn + b) ; y_cn = x_cn q_n
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    q = sig((flat * w.reshape(1, C, 1)).sum(1) + b)  # (B, N)
    return (flat * q[:, None, :]).reshape(x.shape), q.reshape((B,) + x.shape[2:])


def cse_ref(x, w1, b1, w2, b2):
    # z = GAP(x) ; s = sigmoid(W2 relu(W1 z + b1) + b2) ; y_cn = x_cn s_c
    B, C = x.shape[:2]
    z = x.reshape(B, C, -1).sum(-1) / x[0, 0].numel()
    s = sig(torch.clamp(z @ w1.T + b1, min=0) @ w2.T + b2)
    return x * s.reshape(B, C, *([1] * (x.dim() - 2))), s


def scse_ref(m, x):
    y_c, s = cse_ref(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    y_s, q = sse_ref(x, m.proj.weight.reshape(-1), m.proj.bias)
    y = torch.maximum(y_c, y_s) if m.merge == "max" else y_c + y_s
    return y, s, q


SHAPES = [(2, 8, 7), (2, 8, 5, 6), (2, 8, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_sse_matches_equation(shape):
    m = randomize(create_attention("sse", 8)).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _ = sse_ref(x, m.proj.weight.reshape(-1), m.proj.bias)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_sse_equals_official_1x1_conv(dims):
    # the official sSE: sigmoid(ConvNd(C, 1, 1)(x)) * x
    m = randomize(create_attention("sse", 8))
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(8, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(m.proj.weight.reshape(conv.weight.shape))
        conv.bias.copy_(m.proj.bias)
        x = torch.randn((2, 8) + (5,) * dims)
        torch.testing.assert_close(m(x), x * torch.sigmoid(conv(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("merge", ["max", "sum"])
def test_scse_matches_equation(shape, merge):
    m = randomize(create_attention("scse", 8, merge=merge)).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _, _ = scse_ref(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)  # autograd path
    with torch.no_grad():  # in-place inference path
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_scse_max_and_sum_differ_and_default_is_official_max():
    assert create_attention("scse", 8).merge == "max"
    a = randomize(create_attention("scse", 8))
    b = randomize(create_attention("scse", 8, merge="sum"))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_scse_gradients_match_equation():
    m = randomize(create_attention("scse", 8)).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    (gx,) = torch.autograd.grad((m(x) * g).sum(), x)
    (gr,) = torch.autograd.grad((scse_ref(m, x)[0] * g).sum(), x)
    torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-12)


def test_param_counts():
    # cSE 64 -> 32 -> 64 with biases, sSE 64 -> 1 with bias
    assert sum(p.numel() for p in create_attention("scse", 64).parameters()) == 64 * 32 + 32 + 32 * 64 + 64 + 65
    assert sum(p.numel() for p in create_attention("scse", 64, reduction=16).parameters()) == 64 * 4 + 4 + 4 * 64 + 64 + 65
    assert sum(p.numel() for p in create_attention("sse", 64).parameters()) == 65


def test_scse_option_errors():
    with pytest.raises(ValueError, match=r"merge must be one of 'max', 'sum', got 'mul'"):
        create_attention("scse", 16, merge="mul")
    with pytest.raises(ValueError, match="reduction=32 leaves 0 hidden channels for channels=16"):
        create_attention("scse", 16, reduction=32)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        create_attention("scse", 16, hidden=0)
    assert create_attention("scse", 16, hidden=5).fc1.out_features == 5


def test_scse_records_channel_and_spatial_maps():
    m = randomize(create_attention("scse", 8)).double()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    with convattn.capture_maps(m) as maps:
        m(x)
    _, s, q = scse_ref(m, x)
    rec = maps[type(m).__name__]
    torch.testing.assert_close(rec["channel"], s)
    torch.testing.assert_close(rec["spatial"], q)


def test_scse_channel_branch_parity_with_timm_se():
    # cSE is SE with r = 2: timm's SEModule with the same weights gives X * s
    layers = pytest.importorskip("timm.layers")
    ours = randomize(create_attention("scse", 16)).eval()
    theirs = layers.SEModule(16, rd_channels=8).eval()
    with torch.no_grad():
        theirs.fc1.weight.copy_(ours.fc1.weight[:, :, None, None])
        theirs.fc1.bias.copy_(ours.fc1.bias)
        theirs.fc2.weight.copy_(ours.fc2.weight[:, :, None, None])
        theirs.fc2.bias.copy_(ours.fc2.bias)
        x = torch.randn(3, 16, 7, 7)
        s, _ = ours.gates(x)
        torch.testing.assert_close(x * s[:, :, None, None], theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", ["max", "sum"])
def test_scse_parameter_gradients_match_equation(merge):
    # the custom max-merge backward against autograd of the written-out equation
    m = randomize(create_attention("scse", 8, merge=merge)).double()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    inputs = [x, *m.parameters()]
    ours = torch.autograd.grad((m(x) * g).sum(), inputs)
    ref = torch.autograd.grad((scse_ref(m, x)[0] * g).sum(), inputs)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
