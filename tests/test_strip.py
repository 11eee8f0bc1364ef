"""strip and scoord (timm's StripAttn and SimpleCoordAttn): equations written out, parameter
counts, weight-copied timm parity, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention
from convattn.layers import make_divisible


def _dw(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Depthwise zero-padded cross-correlation along the last dim, (B, C, L), w (C, 1, k)."""
    k = w.shape[-1]
    p = k // 2
    zp = torch.nn.functional.pad(z, (p, p))
    return sum(w[:, 0, j].view(1, -1, 1) * zp[:, :, j : j + z.shape[2]] for j in range(k))


@pytest.mark.parametrize("refine", [True, False])
def test_strip_matches_equation(refine):
    m = randomize(create_attention("strip", 16, kernel_size=5, refine=refine)).double()
    x = torch.randn(2, 16, 7, 9, dtype=torch.float64)
    z_h, z_w = x.mean(3), x.mean(2)
    if refine:
        z_h, z_w = _dw(z_h, m.conv_h.weight), _dw(z_w, m.conv_w.weight)
    g = 1 / (1 + torch.exp(-(z_h[:, :, :, None] + z_w[:, :, None, :])))
    torch.testing.assert_close(m(x), x * g, rtol=1e-12, atol=1e-12)


def test_scoord_matches_equation():
    m = randomize(create_attention("scoord", 48)).double()
    x = torch.randn(2, 48, 5, 6, dtype=torch.float64)

    def lin(layer, v):  # v (B, L, C_in) -> (B, L, C_out)
        return v @ layer.weight.T + layer.bias

    def silu(t):
        return t / (1 + torch.exp(-t))

    u_h, u_w = silu(lin(m.fc1, x.mean(3).transpose(1, 2))), silu(lin(m.fc1, x.mean(2).transpose(1, 2)))
    a_h, a_w = lin(m.fc_h, u_h).transpose(1, 2), lin(m.fc_w, u_w).transpose(1, 2)
    ref = x / (1 + torch.exp(-(a_h[:, :, :, None] + a_w[:, :, None, :])))
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_parameter_counts():
    for C in (16, 64, 256):
        assert sum(p.numel() for p in create_attention("strip", C).parameters()) == 2 * C * 3
        m = make_divisible(C * 0.25 * (2 / 3), 8, round_limit=0.0)
        assert sum(p.numel() for p in create_attention("scoord", C).parameters()) == C * m + m + 2 * (m * C + C)


@pytest.mark.parametrize("C", [16, 72, 256])
def test_parity_with_timm(C):
    coord_attn = pytest.importorskip("timm.layers.coord_attn")
    x = torch.randn(2, C, 9, 7)
    ours = randomize(create_attention("strip", C)).eval()
    theirs = coord_attn.StripAttn(C).eval()
    with torch.no_grad():
        theirs.conv_h.weight.copy_(ours.conv_h.weight.view(C, 1, 3, 1))
        theirs.conv_w.weight.copy_(ours.conv_w.weight.view(C, 1, 1, 3))
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    ours = randomize(create_attention("scoord", C)).eval()
    theirs = coord_attn.SimpleCoordAttn(C).eval()
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    with torch.no_grad():
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_option_errors():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        create_attention("strip", 16, kernel_size=2)
    with pytest.raises(ValueError, match="refine must be True or False"):
        create_attention("strip", 16, refine="no")
    with pytest.raises(ValueError, match="rd_ratio must be a positive number"):
        create_attention("scoord", 16, rd_ratio=0)
    assert create_attention("scoord", 16, hidden=5).fc1.out_features == 5
