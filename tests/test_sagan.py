"""SAGAN self-attention: the official code's equation written out, init, spectral norm, maps."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize
from test_nonlocal import pool2

import convattn
from convattn import create_attention


def sagan_reference(m, x):
    # theta = Wt X ; phi = pool(Wp X) ; g = pool(Wg X) ; beta = softmax_j(theta_i . phi_j)
    # Y = X + sigma * Wo (beta g)
    B, C = x.shape[:2]
    spatial = x.shape[2:]
    X = x.reshape(B, C, -1)

    def conv(c, t):
        return torch.einsum("oc,bcn->bon", c.weight[..., 0], t)

    th = conv(m.theta, X)
    ph = pool2(conv(m.phi, X).reshape(B, -1, *spatial)).reshape(B, th.shape[1], -1)
    g = pool2(conv(m.g, X).reshape(B, -1, *spatial)).reshape(B, C // 2, -1)
    e = torch.exp(torch.einsum("bdi,bdj->bij", th, ph))
    beta = e / e.sum(-1, keepdim=True)
    o = conv(m.o, torch.einsum("bij,bdj->bdi", beta, g))
    return (X + m.sigma * o).reshape(x.shape), beta


@pytest.mark.parametrize("shape", [(2, 16, 8), (2, 16, 6, 4), (2, 16, 5, 3), (1, 16, 4, 2, 3)])
@pytest.mark.parametrize("path", ["matmul", "sdpa"])
def test_sagan_matches_official_equation(shape, path):
    m = randomize(create_attention("sagan", 16, path=path), scale=0.3).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _ = sagan_reference(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_widths_and_no_bias():
    m = create_attention("sagan", 64)
    assert (m.theta.out_channels, m.phi.out_channels, m.g.out_channels, m.o.out_channels) == (8, 8, 32, 64)
    assert all(c.bias is None for c in (m.theta, m.phi, m.g, m.o))
    assert sum(p.numel() for p in m.parameters()) == 64 * 8 * 2 + 64 * 32 + 32 * 64 + 1


def test_identity_at_init():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 6, 6)
    for sn in (False, True):
        m = create_attention("sagan", 32, spectral_norm=sn)
        torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_spectral_norm_option():
    torch.manual_seed(0)
    m = create_attention("sagan", 32, spectral_norm=True).train()
    x = torch.randn(2, 32, 4, 4)
    for _ in range(30):  # power iterations run in training forwards
        m(x)
    m.eval()
    for c in (m.theta, m.phi, m.g, m.o):
        top = torch.linalg.matrix_norm(c.weight[..., 0].detach(), ord=2)
        assert abs(top.item() - 1.0) < 1e-2
    ref, _ = sagan_reference(randomize(m, scale=0.3).double(), x.double())
    torch.testing.assert_close(m.double()(x.double()), ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="spectral_norm must be True or False"):
        create_attention("sagan", 32, spectral_norm="yes")
    with pytest.raises(ValueError, match="reduction=8 leaves 0 hidden channels for channels=4"):
        create_attention("sagan", 4)


def test_maps_spread_over_pooling_cells():
    m = randomize(create_attention("sagan", 16), scale=0.3).double()
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    with convattn.capture_maps(m, query=(4, 3)) as maps:
        m(x)
    _, beta = sagan_reference(m, x)
    d = next(iter(maps.values()))
    assert d["spatial"].shape == (2, 5, 4) and d["query_row"].shape == (2, 5, 4)
    torch.testing.assert_close(d["spatial"].sum((1, 2)), torch.ones(2, dtype=torch.float64))
    # odd last row: pooled cell (2, 1) covers input (4, 2..3) -> half its mass each
    torch.testing.assert_close(d["spatial"][:, 4, 3], beta.mean(1)[:, 2 * 2 + 1] / 2)
    torch.testing.assert_close(d["query_row"][:, 0, 0], beta[:, 4 * 4 + 3, 0] / 4)
