"""Triplet Attention: the official three-branch permute formulation written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import convattn
from convattn import create_attention


def sig(t):
    return 1 / (1 + torch.exp(-t))


def gate_ref(t, gate, train=False):
    # Z = [max_1 T; mean_1 T] ; a = sigmoid(BN(Conv_kxk(Z))) ; T * a
    # (amax splits the gradient evenly among tied maxima, as the module does; the
    # official torch.max(T, 1)[0] gives it all to one: both are subgradients)
    z = torch.cat([t.amax(1, keepdim=True), t.sum(1, keepdim=True) / t.shape[1]], dim=1)
    k = gate.conv.weight.shape[-1]
    c = F.conv2d(z, gate.conv.weight, padding=(k - 1) // 2)
    bn = gate.bn
    if train:
        mean, var = c.mean(), ((c - c.mean()) ** 2).mean()
    else:
        mean, var = bn.running_mean, bn.running_var
    a = sig((c - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)
    return t * a, a[:, 0]


def triplet_ref(m, x, train=False):
    y1, a_cw = gate_ref(x.permute(0, 2, 1, 3), m.cw, train)  # B, H, C, W
    y2, a_hc = gate_ref(x.permute(0, 3, 2, 1), m.hc, train)  # B, W, H, C
    y1, y2 = y1.permute(0, 2, 1, 3), y2.permute(0, 3, 2, 1)
    if m.hw is None:
        return (y1 + y2) / 2, a_cw, a_hc, None
    y3, a_hw = gate_ref(x, m.hw, train)
    return (y1 + y2 + y3) / 3, a_cw, a_hc, a_hw


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (3, 9, 8, 4)])
@pytest.mark.parametrize("opts", [{}, {"kernel_size": 3}, {"no_spatial": True}])
def test_triplet_matches_equation_eval(shape, opts):
    m = randomize(create_attention("triplet", shape[1], **opts)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = triplet_ref(m, x)[0]
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_triplet_train_batch_stats_and_momentum():
    m = randomize(create_attention("triplet", 6)).double().train()
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    rm0 = m.hw.bn.running_mean.clone()
    y = m(x)
    ref = triplet_ref(m, x, train=True)[0]
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    # momentum 0.01 in PyTorch's convention: running = 0.99 running + 0.01 batch
    z = torch.cat([x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)], dim=1)
    batch_mean = F.conv2d(z, m.hw.conv.weight, padding=3).mean()
    torch.testing.assert_close(m.hw.bn.running_mean, 0.99 * rm0 + 0.01 * batch_mean)
    assert m.hw.bn.momentum == 0.01 and m.hw.bn.eps == 1e-5


def test_triplet_gradients_match_equation():
    m = randomize(create_attention("triplet", 5)).double().train()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    (gx,) = torch.autograd.grad((m(x) * g).sum(), x)
    m2 = randomize(create_attention("triplet", 5)).double().train()
    (gr,) = torch.autograd.grad((triplet_ref(m2, x, train=True)[0] * g).sum(), x)
    torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-12)


def test_triplet_param_counts():
    # 3 gates x (2 * k * k conv weights + BN weight and bias)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(create_attention("triplet", 64)) == 300
    assert count(create_attention("triplet", 64, kernel_size=3)) == 3 * (18 + 2)
    assert count(create_attention("triplet", 64, no_spatial=True)) == 200
    m = create_attention("triplet", 8)
    assert m.cw.conv.bias is None and m.hc.conv.bias is None and m.hw.conv.bias is None


@pytest.mark.parametrize("bad", [0, 4, -3, 2.0, True])
def test_triplet_bad_kernel_size(bad):
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        create_attention("triplet", 8, kernel_size=bad)


def test_triplet_bad_no_spatial():
    with pytest.raises(ValueError, match="no_spatial must be True or False"):
        create_attention("triplet", 8, no_spatial=1)


def test_triplet_rejects_non_2d():
    m = create_attention("triplet", 8)
    with pytest.raises(ValueError, match="spatial dim"):
        m(torch.randn(2, 8, 6))


def test_triplet_records_three_maps():
    m = randomize(create_attention("triplet", 6)).double().eval()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with convattn.capture_maps(m) as maps:
        m(x)
    _, a_cw, a_hc, a_hw = triplet_ref(m, x)
    rec = maps[type(m).__name__]
    assert rec["cw"].shape == (2, 6, 7) and rec["hc"].shape == (2, 5, 6) and rec["spatial"].shape == (2, 5, 7)
    torch.testing.assert_close(rec["cw"], a_cw)
    torch.testing.assert_close(rec["hc"], a_hc)
    torch.testing.assert_close(rec["spatial"], a_hw)


@pytest.mark.parametrize("relu", [False, True])
def test_triplet_all_gradients_match_equation(relu):
    # the one-pass pooling backward against autograd of the written-out branches,
    # including ties of the max (a ReLU input has whole rows of zeros)
    m = randomize(create_attention("triplet", 5)).double().train()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    if relu:
        x = torch.relu(x - 0.8)
    x.requires_grad_(True)
    g = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    inputs = [x, *m.parameters()]
    ours = torch.autograd.grad((m(x) * g).sum(), inputs)
    ref = torch.autograd.grad((triplet_ref(m, x, train=True)[0] * g).sum(), inputs)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
