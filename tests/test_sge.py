"""SGE: the equation written out group by group, the official parameter count and init, options."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

from convattn import create_attention


def _reference(m, x: torch.Tensor) -> torch.Tensor:
    """Each group of each image on its own, with explicit sums over channels and positions."""
    B, C = x.shape[:2]
    G = m.groups
    k = C // G
    N = math.prod(x.shape[2:])
    flat = x.reshape(B, C, N)
    out = torch.empty_like(flat)
    for b in range(B):
        for g in range(G):
            xg = flat[b, g * k:(g + 1) * k]  # (k, N)
            mean_feature = xg.sum(1) / N  # (k,)
            t = torch.einsum("cn,c->n", xg, mean_feature)  # (N,)
            mu = t.sum() / N
            std = torch.sqrt(((t - mu) ** 2).sum() / (N - 1))
            t_hat = (t - mu) / (std + 1e-5)
            a = 1 / (1 + torch.exp(-(m.weight[g] * t_hat + m.bias[g])))
            out[b, g * k:(g + 1) * k] = xg * a
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    "C, groups, spatial",
    [(128, 64, (5, 7)), (32, 8, (6, 5)), (24, 3, (9,)), (16, 4, (3, 4, 5)), (16, 16, (4, 4))],
)
def test_sge_matches_equation(C, groups, spatial):
    m = randomize(create_attention("sge", C, groups=groups)).double()
    x = torch.randn((2, C) + spatial, dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-10, atol=1e-10)


def test_sge_parameter_count_and_init_are_the_official_ones():
    # official SpatialGroupEnhance(groups=64) (PytorchInsight, classification/models/imagenet/
    # resnet_sge.py): weight zeros(1, G, 1, 1), bias ones(1, G, 1, 1): 2G, whatever C
    for C in (64, 256, 2048):
        m = create_attention("sge", C)
        assert sum(p.numel() for p in m.parameters()) == 2 * 64 == 128
        assert torch.equal(m.weight, torch.zeros(64)) and torch.equal(m.bias, torch.ones(64))
    assert sum(p.numel() for p in create_attention("sge", 48, groups=12).parameters()) == 24
    # at init every gate is sigmoid(0 * t^ + 1): Y = sigmoid(1) X
    x = torch.randn(2, 128, 6, 6)
    torch.testing.assert_close(create_attention("sge", 128)(x), torch.sigmoid(torch.tensor(1.0)) * x)


def test_sge_single_position_is_finite():
    # official std over one position is NaN; here t^ = 0 and Y = X * sigmoid(b)
    m = randomize(create_attention("sge", 16, groups=4)).double()
    x = torch.randn(3, 16, 1, 1, dtype=torch.float64)
    y = m(x)
    expected = x * torch.sigmoid(m.bias).repeat_interleave(4).view(1, 16, 1, 1)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_sge_groups_are_independent():
    # changing one group's input leaves the other groups' outputs as they were
    m = randomize(create_attention("sge", 16, groups=4)).double()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4:8] = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=0)
    torch.testing.assert_close(y[:, 8:], y2[:, 8:], rtol=0, atol=0)
    assert not torch.allclose(y[:, 4:8], y2[:, 4:8])


def test_sge_option_errors():
    with pytest.raises(ValueError, match=r"channels=32 is not a multiple of groups=64; valid groups for 32 channels: 1, 2, 4, 8, 16, 32"):
        create_attention("sge", 32)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create_attention("sge", 64, groups=0)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create_attention("sge", 64, groups=2.0)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        create_attention("sge", 64, eps=0)
    assert create_attention("sge", 32, groups=8).groups == 8
