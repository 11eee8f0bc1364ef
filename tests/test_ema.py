"""EMA: the equation written out group by group, the official parameter count, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention


def _reference(m, x: torch.Tensor) -> torch.Tensor:
    """Each of the G groups of m channels on its own, with the convs as explicit sums."""
    B, C, H, W = x.shape
    G = m.groups
    k = C // G
    out = torch.empty_like(x)
    w1, b1 = m.conv1x1.weight[:, :, 0, 0], m.conv1x1.bias
    for b in range(B):
        for g in range(G):
            xg = x[b, g * k:(g + 1) * k]  # (k, H, W)
            u_h = torch.einsum("oi,ih->oh", w1, xg.mean(2)) + b1[:, None]  # (k, H)
            u_w = torch.einsum("oi,iw->ow", w1, xg.mean(1)) + b1[:, None]  # (k, W)
            t = xg * torch.sigmoid(u_h)[:, :, None] * torch.sigmoid(u_w)[:, None, :]
            mu = t.mean((1, 2), keepdim=True)
            var = ((t - mu) ** 2).mean((1, 2), keepdim=True)
            x1 = (t - mu) / torch.sqrt(var + m.gn.eps) * m.gn.weight[:, None, None] + m.gn.bias[:, None, None]
            padded = torch.nn.functional.pad(xg, (1, 1, 1, 1))
            x2 = m.conv3x3.bias[:, None, None].expand(k, H, W).clone()
            for i in range(3):
                for j in range(3):
                    x2 = x2 + torch.einsum("oi,ihw->ohw", m.conv3x3.weight[:, :, i, j], padded[:, i:i + H, j:j + W])
            s1, s2 = torch.softmax(x1.mean((1, 2)), 0), torch.softmax(x2.mean((1, 2)), 0)
            weights = torch.einsum("c,chw->hw", s1, x2) + torch.einsum("c,chw->hw", s2, x1)
            out[b, g * k:(g + 1) * k] = xg * torch.sigmoid(weights)
    return out


@pytest.mark.parametrize("C, groups", [(32, 32), (32, 8), (24, 4)])
def test_ema_matches_equation(C, groups):
    m = randomize(create_attention("ema", C, groups=groups)).double()
    x = torch.randn(2, C, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-10, atol=1e-10)


def test_ema_parameter_count_is_the_official_one():
    # official EMA(channels, factor=32): GroupNorm(m, m) 2m, Conv2d(m, m, 1) m^2 + m,
    # Conv2d(m, m, 3) 9 m^2 + m, with m = channels // 32
    for C in (32, 64, 256, 2048):
        m = C // 32
        assert sum(p.numel() for p in create_attention("ema", C).parameters()) == 2 * m + m * m + m + 9 * m * m + m
    assert sum(p.numel() for p in create_attention("ema", 256).parameters()) == 672


def test_ema_channels_must_be_a_multiple_of_the_groups():
    with pytest.raises(ValueError, match=r"channels=16 is not a multiple of groups=32; valid groups for 16 channels: 1, 2, 4, 8, 16"):
        create_attention("ema", 16)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create_attention("ema", 32, groups=0)
    assert create_attention("ema", 16, groups=8).groups == 8
