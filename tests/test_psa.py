"""Polarized self-attention (psa_p, psa_s): both branches written out sample by sample in the
official order of operations, both variants, the official parameter counts, init, maps, options."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def _softmax(t: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(t - t.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-t))


def _layer_norm(z: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return (z - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _channel_gate(m, X: torch.Tensor, key: str) -> torch.Tensor:
    """A^ch (C,) of one sample X (C, N): V = W_v X first, then weighted by softmax_N(W_q X)."""
    p = _softmax(torch.einsum("oc,cn->on", m.ch_wq.weight, X)[0], 0)  # (N,)
    V = torch.einsum("oc,cn->on", m.ch_wv.weight, X)  # (C/2, N)
    z = torch.einsum("on,n->o", V, p)
    if m.variant == "paper":
        a = _layer_norm(torch.einsum("co,o->c", m.ch_wz[0].weight, z), m.ch_wz[1])
    elif key == "psa_p":
        a = torch.einsum("co,o->c", m.ch_wz.weight, z)
    else:  # official PSA_s: conv C/2 -> C/8 (bias), LayerNorm, ReLU, conv C/8 -> C (bias)
        w1, ln, w2 = m.ch_wz[0], m.ch_wz[1], m.ch_wz[3]
        h = _layer_norm(torch.einsum("ro,o->r", w1.weight, z) + w1.bias, ln).clamp_min(0)
        a = torch.einsum("cr,r->c", w2.weight, h) + w2.bias
    return _sigmoid(a)


def _spatial_gate(m, X: torch.Tensor, key: str) -> torch.Tensor:
    """A^sp (N,) of one sample X (C, N): g = GAP(W_q X) (conv, then pool), V = W_v X."""
    g = torch.einsum("oc,cn->on", m.sp_wq.weight, X).mean(1)  # (C/2,)
    V = torch.einsum("oc,cn->on", m.sp_wv.weight, X)  # (C/2, N)
    if m.variant == "paper":
        s = torch.einsum("o,on->n", _softmax(g, 0), V)
    elif key == "psa_p":
        s = _softmax(torch.einsum("o,on->n", g, V), 0)
    else:
        s = torch.einsum("o,on->n", g, _softmax(V, 1))
    return _sigmoid(s)


def _reference(m, x: torch.Tensor, key: str):
    B, C = x.shape[:2]
    out = torch.empty_like(x).reshape(B, C, -1)
    gates = []
    for b in range(B):
        X = x[b].reshape(C, -1)
        a_ch = _channel_gate(m, X, key)
        if key == "psa_p":
            a_sp = _spatial_gate(m, X, key)
            out[b] = X * a_ch[:, None] + X * a_sp[None, :]
        else:
            X1 = X * a_ch[:, None]
            a_sp = _spatial_gate(m, X1, key)
            out[b] = X1 * a_sp[None, :]
        gates.append((a_ch, a_sp))
    a_ch = torch.stack([g[0] for g in gates])
    a_sp = torch.stack([g[1] for g in gates]).reshape((B,) + tuple(x.shape[2:]))
    return out.reshape(x.shape), a_ch, a_sp


@pytest.mark.parametrize("key", ["psa_p", "psa_s"])
@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("shape", [(2, 16, 9), (2, 16, 5, 6), (2, 16, 3, 2, 4), (2, 13, 4, 5)])
def test_psa_matches_equation(key, variant, shape):
    m = randomize(create_attention(key, shape[1], variant=variant)).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, a_ch, a_sp = _reference(m, x, key)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)
    with convattn.capture_maps(m) as maps:
        m(x)
    (recorded,) = maps.values()
    assert set(recorded) == {"channel", "spatial"}
    torch.testing.assert_close(recorded["channel"], a_ch, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(recorded["spatial"], a_sp, rtol=1e-10, atol=1e-10)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_psa_parameter_counts_are_the_official_ones():
    for C in (8, 16, 64, 256, 512):
        h = C // 2
        r = h // 4
        # official PSA_p (DeLightCMU/PSA, semantic-segmentation/network/PSA.py): conv_q_right C -> 1,
        # conv_v_right C -> C/2, conv_up C/2 -> C, conv_q_left and conv_v_left C -> C/2, all bias=False
        assert _count(create_attention("psa_p", C)) == C + h * C + C * h + 2 * h * C
        # official PSA_s (same file): as PSA_p but conv_up = Conv2d(C/2, C/8) (bias), LayerNorm([C/8, 1, 1]),
        # ReLU, Conv2d(C/8, C) (bias)
        assert _count(create_attention("psa_s", C)) == C + h * C + (h * r + r) + 2 * r + (r * C + C) + 2 * h * C
        # the paper's branches (Fig. 2): PSA_p's convs plus a LayerNorm over C after W_z
        for key in ("psa_p", "psa_s"):
            assert _count(create_attention(key, C, variant="paper")) == C + 4 * h * C + 2 * C
    assert _count(create_attention("psa_p", 256)) == 131_328
    assert _count(create_attention("psa_s", 256)) == 111_200


def test_psa_initialisation_is_the_official_one():
    torch.manual_seed(0)
    C = 256
    m = create_attention("psa_s", C)
    # reset_parameters: kaiming_normal_(mode='fan_in', nonlinearity='relu') on the four q/v convs
    # (PyTorch's default for a Linear or a conv would be uniform with std sqrt(1 / (3 C)))
    std = math.sqrt(2 / C)
    for layer in (m.ch_wq, m.ch_wv, m.sp_wq, m.sp_wv):
        w = layer.weight
        assert w.mean().abs() < 4 * std / math.sqrt(w.numel())
        assert abs(w.std().item() / std - 1) < 4 / math.sqrt(2 * w.numel())  # 4 standard errors
    assert torch.equal(m.ch_wz[1].weight, torch.ones(C // 8)) and torch.equal(m.ch_wz[1].bias, torch.zeros(C // 8))
    p = create_attention("psa_p", C, variant="paper")
    assert torch.equal(p.ch_wz[1].weight, torch.ones(C)) and torch.equal(p.ch_wz[1].bias, torch.zeros(C))


def test_psa_variants_and_layouts_differ():
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    outs = {}
    for key in ("psa_p", "psa_s"):
        for variant in ("official", "paper"):
            outs[key, variant] = randomize(create_attention(key, 16, variant=variant)).double()(x)
    values = list(outs.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert (values[i] - values[j]).abs().max() > 1e-3


def test_psa_p_official_spatial_gate_is_a_sigmoid_of_a_distribution():
    # the released PSA_p applies the sigmoid to softmax_N(.), so its spatial gate lies in
    # (sigmoid(0), sigmoid(1)] = (0.5, 0.731] and its N values sum to N sigmoid(~1/N)
    m = randomize(create_attention("psa_p", 16)).double()
    with convattn.capture_maps(m) as maps:
        m(torch.randn(2, 16, 7, 7, dtype=torch.float64))
    (recorded,) = maps.values()
    a_sp = recorded["spatial"]
    assert a_sp.shape == (2, 7, 7)
    assert (a_sp > 0.5).all() and (a_sp <= 1 / (1 + math.exp(-1))).all()


def test_psa_option_errors():
    with pytest.raises(ValueError, match=r"variant must be one of 'official', 'paper', got 'pose'"):
        create_attention("psa_p", 16, variant="pose")
    with pytest.raises(ValueError, match=r"channels=1 leaves 0 channels for the C // 2 wide queries and values; "
                                         r"valid: channels >= 2"):
        create_attention("psa_p", 1, variant="paper")
    with pytest.raises(ValueError, match=r"channels=6 leaves 0 channels in the official channel branch's "
                                         r"bottleneck \(C // 2 // 4\); valid: channels >= 8, or variant='paper'"):
        create_attention("psa_s", 6)
    assert create_attention("psa_s", 6, variant="paper")(torch.randn(1, 6, 3, 3)).shape == (1, 6, 3, 3)
    assert create_attention("psa_p", 3)(torch.randn(1, 3, 4)).shape == (1, 3, 4)
