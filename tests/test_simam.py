"""SimAM: the paper's energy equation written out, custom backward, no parameters."""

from __future__ import annotations

import math

import pytest
import torch

import convattn
from convattn import create_attention


def simam_reference(x, lam=1e-4):
    # n = N - 1 ; d = (x - mu)^2 ; v = sum d / n ; E_inv = d / (4 (v + lam)) + 0.5 ; y = x sigmoid(E_inv)
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    N = flat.shape[-1]
    mu = flat.sum(-1, keepdim=True) / N
    d = (flat - mu) ** 2
    v = d.sum(-1, keepdim=True) / (N - 1)
    e_inv = d / (4 * (v + lam)) + 0.5
    return (flat * (1 / (1 + torch.exp(-e_inv)))).reshape(x.shape)


@pytest.mark.parametrize("shape", [(2, 8, 9), (2, 8, 5, 6), (2, 8, 3, 4, 5)])
@pytest.mark.parametrize("lam", [1e-4, 0.1])
def test_simam_matches_equation(shape, lam):
    m = create_attention("simam", 8, e_lambda=lam)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    ref = simam_reference(x, lam)
    with torch.no_grad():  # in-place inference path
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_(True)  # custom autograd path
    torch.testing.assert_close(m(xg), ref, rtol=1e-12, atol=1e-12)
    # the input is left untouched by the in-place path
    torch.testing.assert_close(xg.detach(), x, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 8, 9), (2, 8, 5, 6), (2, 4, 3, 2, 3)])
def test_simam_custom_backward_matches_autograd_of_equation(shape):
    m = create_attention("simam", shape[1])
    x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    m(x1).backward(g)
    simam_reference(x2).backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)


def test_simam_float32_matches_float64_reference():
    m = create_attention("simam", 32)
    x = torch.randn(4, 32, 14, 14) * 2 - 0.5
    ref = simam_reference(x.double()).float()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x.requires_grad_(True)), ref, rtol=1e-5, atol=1e-5)


def test_simam_has_no_parameters():
    m = create_attention("simam", 64)
    assert sum(p.numel() for p in m.parameters()) == 0
    assert len(m.state_dict()) == 0


def test_simam_constant_input_gives_sigmoid_half():
    m = create_attention("simam", 4)
    x = torch.full((2, 4, 6, 6), 3.0, dtype=torch.float64) * torch.arange(1, 5, dtype=torch.float64).view(1, 4, 1, 1)
    expected = x / (1 + math.exp(-0.5))  # sigmoid(0.5) ~ 0.6225
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)
    assert abs(1 / (1 + math.exp(-0.5)) - 0.6225) < 1e-4


def test_simam_single_position_is_finite():
    # official n = N - 1 = 0 would give 0/0; we use n = max(N - 1, 1)
    m = create_attention("simam", 4)
    x = torch.randn(3, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, x / (1 + math.exp(-0.5)))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_simam_lambda_matters_and_default_is_official():
    assert create_attention("simam", 4).e_lambda == 1e-4
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        a = create_attention("simam", 4)(x)
        b = create_attention("simam", 4, e_lambda=0.1)(x)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("bad", [0, -1.0, "0.1", True, None])
def test_simam_bad_lambda(bad):
    with pytest.raises(ValueError, match="e_lambda must be a positive number"):
        create_attention("simam", 4, e_lambda=bad)


def test_simam_records_channel_mean_of_gate():
    m = create_attention("simam", 6)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    with convattn.capture_maps(m) as maps:
        y = m(x)
    gate = simam_reference(x) / x
    torch.testing.assert_close(maps[type(m).__name__]["spatial"], gate.mean(1))
    torch.testing.assert_close(y, simam_reference(x))


def test_simam_channels_last_input():
    m = create_attention("simam", 8)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        y = m(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, simam_reference(x), rtol=1e-12, atol=1e-12)
