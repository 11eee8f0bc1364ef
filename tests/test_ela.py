"""ELA: the equation written out, both implementations' parameter counts, timm parity, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention
from convattn.attention.ela import ELA


def _depthwise_taps(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_j w[c, j] z[b, c, i + j - k // 2] with zeros outside: (B, C, L) -> (B, C, L)."""
    k = w.shape[-1]
    p = k // 2
    padded = torch.cat((z.new_zeros(z.shape[:2] + (p,)), z, z.new_zeros(z.shape[:2] + (p,))), 2)
    out = torch.zeros_like(z)
    for j in range(k):
        out += w[:, 0, j].view(1, -1, 1) * padded[:, :, j : j + z.shape[2]]
    return out


def _group_norm(v: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    B, C, L = v.shape
    g = v.reshape(B, groups, -1)
    mu = g.mean(-1, keepdim=True)
    var = ((g - mu) ** 2).mean(-1, keepdim=True)
    return ((g - mu) / torch.sqrt(var + eps)).reshape(B, C, L) * weight.view(1, -1, 1) + bias.view(1, -1, 1)


@pytest.mark.parametrize("shared, groups, act", [(True, 16, None), (False, 1, "silu"), (True, 4, "relu")])
def test_ela_matches_equation(shared, groups, act):
    m = randomize(create_attention("ela", 32, shared=shared, norm_groups=groups, act=act)).double()
    x = torch.randn(3, 32, 9, 11, dtype=torch.float64)
    f = {None: lambda t: t, "silu": lambda t: t * torch.sigmoid(t), "relu": lambda t: t.clamp_min(0)}[act]
    conv_w, norm_w = (m.conv_h, m.norm_h) if shared else (m.conv_w, m.norm_w)
    a_h = torch.sigmoid(f(_group_norm(_depthwise_taps(x.mean(3), m.conv_h.weight), groups, m.norm_h.weight,
                                      m.norm_h.bias, 1e-5)))
    a_w = torch.sigmoid(f(_group_norm(_depthwise_taps(x.mean(2), conv_w.weight), groups, norm_w.weight,
                                      norm_w.bias, 1e-5)))
    ref = x * a_h[:, :, :, None] * a_w[:, :, None, :]
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_ela_parameter_counts():
    # the authors' code: one depthwise Conv1d (C k) + one GroupNorm (2 C) = 9 C for k = 7;
    # timm's EfficientLocalAttn: two of each = 18 C
    for C in (16, 64, 256):
        assert sum(p.numel() for p in create_attention("ela", C).parameters()) == 9 * C
        assert sum(p.numel() for p in ELA.timm(C).parameters()) == 18 * C


def test_ela_parity_with_timm():
    coord_attn = pytest.importorskip("timm.layers.coord_attn")
    ours = randomize(ELA.timm(48)).eval()
    theirs = coord_attn.EfficientLocalAttn(48).eval()
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    with torch.no_grad():
        theirs.conv_h.weight.copy_(ours.conv_h.weight.view(48, 1, 7, 1))
        theirs.conv_w.weight.copy_(ours.conv_w.weight.view(48, 1, 1, 7))
        for t_norm, o_norm in ((theirs.norm_h, ours.norm_h), (theirs.norm_w, ours.norm_w)):
            t_norm.weight.copy_(o_norm.weight)
            t_norm.bias.copy_(o_norm.bias)
        x = torch.randn(2, 48, 13, 10)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_ela_option_errors():
    with pytest.raises(ValueError, match=r"channels=24 is not divisible by norm_groups=16; valid norm_groups .*: 1, 2, 3, 4, 6, 8, 12, 24"):
        create_attention("ela", 24)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        create_attention("ela", 32, kernel_size=4)
    with pytest.raises(ValueError, match="act must be one of None, 'silu', 'relu'"):
        create_attention("ela", 32, act="gelu")
    with pytest.raises(ValueError, match="shared must be True or False"):
        create_attention("ela", 32, shared="yes")
    assert create_attention("ela", 24, norm_groups=8).norm_h.num_groups == 8
