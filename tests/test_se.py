"""SE: the paper's equation written out, timm parity, parameter count."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import create_attention


def se_reference(x, w1, b1, w2, b2):
    # z_c = 1/N sum_n x_cn ; s = sigmoid(W2 relu(W1 z + b1) + b2) ; y_cn = x_cn s_c
    B, C = x.shape[:2]
    z = x.reshape(B, C, -1).sum(-1) / x[0, 0].numel()
    h = torch.clamp(z @ w1.T + b1, min=0)
    s = 1 / (1 + torch.exp(-(h @ w2.T + b2)))
    return x * s.reshape(B, C, *([1] * (x.dim() - 2)))


@pytest.mark.parametrize("shape", [(2, 32, 7), (2, 32, 5, 6), (2, 32, 3, 4, 5)])
def test_se_matches_equation(shape):
    m = randomize(create_attention("se", 32, reduction=4)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = se_reference(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_se_param_count_matches_official():
    # 256 -> 16 -> 256 with biases: 256*16 + 16 + 16*256 + 256
    m = create_attention("se", 256)
    assert sum(p.numel() for p in m.parameters()) == 8464


def test_se_hidden_width_errors():
    with pytest.raises(ValueError, match="reduction=32 leaves 0 hidden channels for channels=16"):
        create_attention("se", 16, reduction=32)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        create_attention("se", 16, hidden=0)
    assert create_attention("se", 16, hidden=5).fc1.out_features == 5


def test_se_parity_with_timm():
    layers = pytest.importorskip("timm.layers")
    ours = randomize(create_attention("se", 64)).eval()
    theirs = layers.SEModule(64, rd_channels=4).eval()
    with torch.no_grad():
        theirs.fc1.weight.copy_(ours.fc1.weight[:, :, None, None])
        theirs.fc1.bias.copy_(ours.fc1.bias)
        theirs.fc2.weight.copy_(ours.fc2.weight[:, :, None, None])
        theirs.fc2.bias.copy_(ours.fc2.bias)
        x = torch.randn(3, 64, 9, 9)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
