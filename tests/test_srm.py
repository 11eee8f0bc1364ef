"""SRM: the paper's equation written out (eval and train BatchNorm), init, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention


def srm_reference(x, cfc, bn_w, bn_b, mean_ref=None, var_ref=None, eps=1e-5, bn_eps=1e-5):
    # t_c = [mu_c, sqrt(1/(N-1) sum (x - mu)^2 + eps)] ; z_c = w_c0 mu_c + w_c1 sigma_c
    # g = sigmoid(BN(z)) ; BN uses running stats if given, else the batch's (biased variance)
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    N = flat.shape[-1]
    mu = flat.sum(-1) / N
    sigma = torch.sqrt(((flat - mu[..., None]) ** 2).sum(-1) / (N - 1) + eps)
    z = cfc[:, 0] * mu + cfc[:, 1] * sigma
    if mean_ref is None:
        mean_ref = z.mean(0)
        var_ref = ((z - mean_ref) ** 2).mean(0)
    z_hat = (z - mean_ref) / torch.sqrt(var_ref + bn_eps) * bn_w + bn_b
    g = 1 / (1 + torch.exp(-z_hat))
    return x * g.reshape(B, C, *([1] * (x.dim() - 2)))


SHAPES = [(3, 10, 12), (3, 10, 4, 5), (3, 10, 4, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_srm_matches_equation_eval(shape):
    m = randomize(create_attention("srm", 10)).double().eval()
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    ref = srm_reference(x, m.cfc, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_srm_matches_equation_train(shape):
    m = randomize(create_attention("srm", 10)).double().train()
    x = torch.randn(shape, dtype=torch.float64)
    ref = srm_reference(x, m.cfc, m.bn.weight, m.bn.bias)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-12)


def test_srm_eps_zero_is_plain_std():
    m = randomize(create_attention("srm", 6, eps=0)).double().eval()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    ref = srm_reference(x, m.cfc, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var, eps=0.0)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    # and it differs from the default eps=1e-5 with the same weights (the option is wired through)
    m5 = create_attention("srm", 6).double().eval()
    m5.load_state_dict(m.state_dict())
    assert not torch.equal(m5(x), m(x))


def test_srm_zero_init_gate_is_half():
    m = create_attention("srm", 8).eval()
    assert torch.equal(m.cfc, torch.zeros(8, 2))
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), x * 0.5)


def test_srm_param_count_and_official_keys():
    m = create_attention("srm", 256)
    assert sum(p.numel() for p in m.parameters()) == 4 * 256  # cfc C x 2 + BN weight, bias
    assert set(m.state_dict()) == {
        "cfc", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"
    }
    # ResNet-50: one SRM after bn3 of each of the 3/4/6/3 bottlenecks -> "+60k"
    total = sum(n * 4 * c for n, c in zip((3, 4, 6, 3), (256, 512, 1024, 2048), strict=True))
    assert total == 60416


def test_srm_errors():
    m = create_attention("srm", 4)
    with pytest.raises(ValueError, match="at least 2 spatial positions"):
        m(torch.randn(2, 4, 1, 1))
    for bad in (-1, "0", None):
        with pytest.raises(ValueError, match="eps must be a number >= 0"):
            create_attention("srm", 4, eps=bad)
