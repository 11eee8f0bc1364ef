"""GCT: the paper's (l2) and the official l1 equations written out, identity at init."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention


def gct_reference(x, alpha, gamma, beta, mode="l2", eps=1e-5):
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    if mode == "l2":
        # s_c = alpha_c sqrt(sum x^2 + eps) ; s^_c = gamma_c s_c / sqrt(1/C sum_c s_c^2 + eps)
        s = alpha * torch.sqrt((flat * flat).sum(-1) + eps)
        s_hat = gamma * s / torch.sqrt((s * s).sum(1, keepdim=True) / C + eps)
    else:
        # s_c = alpha_c sum |x| ; s^_c = gamma_c s_c / (1/C sum_c |s_c| + eps)
        s = alpha * flat.abs().sum(-1)
        s_hat = gamma * s / (s.abs().sum(1, keepdim=True) / C + eps)
    g = 1 + torch.tanh(s_hat + beta)
    return x * g.reshape(B, C, *([1] * (x.dim() - 2)))


@pytest.mark.parametrize("mode", ["l2", "l1"])
@pytest.mark.parametrize("shape", [(2, 12, 9), (2, 12, 5, 6), (2, 12, 3, 4, 2)])
def test_gct_matches_equation(shape, mode):
    m = randomize(create_attention("gct", 12, mode=mode), scale=1.0).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = gct_reference(x, m.alpha, m.gamma, m.beta, mode)
    out = m(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, x)  # the random gate does something


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_gct_identity_at_init(mode):
    m = create_attention("gct", 16, mode=mode)
    assert torch.equal(m.alpha, torch.ones(16))
    assert torch.equal(m.gamma, torch.zeros(16)) and torch.equal(m.beta, torch.zeros(16))
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(m(x), x)


def test_gct_eps_option():
    m = randomize(create_attention("gct", 8, eps=1e-2), scale=1.0).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), gct_reference(x, m.alpha, m.gamma, m.beta, "l2", eps=1e-2), rtol=1e-12, atol=1e-12)
    # eps matters: a zero input channel keeps a finite gate
    x[:, 0] = 0
    assert torch.isfinite(m(x)).all()


def test_gct_param_count():
    # alpha, gamma, beta per channel; ResNet-50 placements are counted by the model
    assert sum(p.numel() for p in create_attention("gct", 256).parameters()) == 3 * 256


def test_gct_bad_options():
    with pytest.raises(ValueError, match="mode must be one of 'l2', 'l1'"):
        create_attention("gct", 16, mode="l3")
    for bad in (0, -1e-5, "1e-5"):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            create_attention("gct", 16, eps=bad)
