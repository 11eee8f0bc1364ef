"""ECA: the paper's equation written out, the adaptive kernel size, timm parity."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

from convattn import create_attention
from convattn.attention.eca import eca_kernel_size


def eca_reference(x, taps, circular=False):
    # y_c = 1/N sum_n x_cn ; w_c = sigmoid(sum_j k_j y_{c + j - p}) with y = 0 outside [0, C)
    # (circular: y_{c mod C}) ; out_cn = x_cn w_c
    B, C = x.shape[:2]
    k = len(taps)
    p = (k - 1) // 2
    y = x.reshape(B, C, -1).sum(-1) / x[0, 0].numel()
    w = torch.zeros(B, C, dtype=x.dtype)
    for b in range(B):
        for c in range(C):
            acc = 0.0
            for j in range(k):
                src = c + j - p
                if circular:
                    acc = acc + taps[j] * y[b, src % C]
                elif 0 <= src < C:
                    acc = acc + taps[j] * y[b, src]
            w[b, c] = 1 / (1 + math.exp(-float(acc)))
    return x * w.reshape(B, C, *([1] * (x.dim() - 2)))


def adaptive_k(C, gamma=2, b=1):
    # |log2(C)/gamma + b/gamma|_odd as timm codes it: truncate, even -> next odd, at least 3
    t = int(abs(math.log2(C) + b) / gamma)
    k = t if t % 2 == 1 else t + 1
    return max(k, 3)


@pytest.mark.parametrize("shape", [(2, 20, 7), (2, 20, 5, 6), (2, 20, 3, 4, 2)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_eca_matches_equation(shape, k):
    m = randomize(create_attention("eca", 20, kernel_size=k)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = eca_reference(x, m.conv.weight.reshape(-1).tolist())
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C", [1, 2, 4, 8, 16, 31, 32, 64, 100, 128, 256, 512, 1000, 1024, 2048, 4096])
def test_eca_adaptive_kernel_size(C):
    m = create_attention("eca", C)
    assert m.kernel_size == adaptive_k(C)
    assert m.conv.kernel_size == (adaptive_k(C),)
    # parameters = k, independent of C
    assert sum(p.numel() for p in m.parameters()) == adaptive_k(C)


def test_eca_rounding_is_nearest_odd_ties_up():
    # the documented reading of |t|_odd: the nearest odd number, an even integer t going up
    for C in range(8, 5000, 7):
        t = (math.log2(C) + 1) / 2
        lo = 2 * math.floor((t - 1) / 2) + 1  # the largest odd number <= t
        nearest = lo if t - lo < lo + 2 - t else lo + 2
        assert eca_kernel_size(C) == nearest, C


def test_eca_resnet50_kernel_sizes():
    # the formula gives (5, 5, 5, 7) for the ResNet-50 stage outputs ...
    assert [create_attention("eca", c).kernel_size for c in (256, 512, 1024, 2048)] == [5, 5, 5, 7]
    # ... while the released model uses (3, 5, 5, 7): 3*3 + 4*5 + 6*5 + 3*7 = 80 parameters
    blocks = (3, 4, 6, 3)
    released = [create_attention("eca", c, kernel_size=k) for c, k in zip((256, 512, 1024, 2048), (3, 5, 5, 7), strict=True)]
    assert sum(n * sum(p.numel() for p in m.parameters()) for n, m in zip(blocks, released, strict=True)) == 80


def test_eca_gamma_b_change_kernel_size():
    assert create_attention("eca", 256, gamma=1, b=1).kernel_size == adaptive_k(256, gamma=1, b=1) == 9
    assert create_attention("eca", 256, gamma=2, b=3).kernel_size == adaptive_k(256, gamma=2, b=3) == 5


@pytest.mark.parametrize("bad", [0, 2, 4, -3, 2.5, True, "3"])
def test_eca_bad_kernel_size(bad):
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        create_attention("eca", 16, kernel_size=bad)


def test_eca_bad_gamma():
    with pytest.raises(ValueError, match="gamma must be > 0"):
        create_attention("eca", 16, gamma=0)
    with pytest.raises(ValueError, match="b must be a finite number"):
        create_attention("eca", 16, b=float("nan"))


@pytest.mark.parametrize("C", [64, 256, 2048])
def test_eca_parity_with_timm(C):
    layers = pytest.importorskip("timm.layers")
    ours = randomize(create_attention("eca", C)).eval()
    theirs = layers.EcaModule(C).eval()
    assert theirs.conv.weight.shape == ours.conv.weight.shape  # same adaptive k
    with torch.no_grad():
        theirs.conv.weight.copy_(ours.conv.weight)
        x = torch.randn(2, C, 6, 5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_circular_eca_matches_equation(k):
    m = randomize(create_attention("eca", 20, kernel_size=k, padding="circular")).double().eval()
    x = torch.randn(2, 20, 5, 6, dtype=torch.float64)
    ref = eca_reference(x, m.conv.weight.reshape(-1).tolist(), circular=True)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_mlp_eca_matches_equation():
    # w = sigmoid(Conv_k^{r -> 1}(relu(Conv_1^{1 -> r}(y) + a)) + b) across channels, zero padding
    m = randomize(create_attention("eca", 64, mlp=True)).double().eval()
    x = torch.randn(2, 64, 4, 5, dtype=torch.float64)
    y = x.mean((2, 3))  # (B, C)
    r, k = m.conv.out_channels, m.kernel_size
    assert r == 8 and k == 3  # make_divisible(64 / 8, 8); adaptive k for 64 channels
    h = torch.relu(m.conv.weight.view(1, r, 1) * y.unsqueeze(1) + m.conv.bias.view(1, r, 1))  # (B, r, C)
    hp = torch.nn.functional.pad(h, ((k - 1) // 2, (k - 1) // 2))
    logits = sum((m.conv2.weight[0, :, j].view(1, r, 1) * hp[:, :, j : j + 64]).sum(1) for j in range(k))
    ref = x * torch.sigmoid(logits + m.conv2.bias).view(2, 64, 1, 1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C", [64, 256])
def test_timm_ceca_and_ecam_parity(C):
    """timm's CecaModule (key ceca) is padding="circular"; EcaModule(use_mlp=True) (key ecam) is mlp=True."""
    layers = pytest.importorskip("timm.layers")
    eca = pytest.importorskip("timm.layers.eca")
    x = torch.randn(2, C, 6, 5)
    ours = randomize(create_attention("eca", C, padding="circular")).eval()
    theirs = eca.CecaModule(C).eval()
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    with torch.no_grad():
        theirs.conv.weight.copy_(ours.conv.weight)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    ours = randomize(create_attention("eca", C, mlp=True)).eval()
    theirs = layers.EcaModule(C, use_mlp=True).eval()
    names = [n for n, _ in theirs.named_parameters()]
    assert names == [n for n, _ in ours.named_parameters()] == ["conv.weight", "conv.bias", "conv2.weight", "conv2.bias"]
    with torch.no_grad():
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_eca_variant_option_errors():
    with pytest.raises(ValueError, match="padding must be one of 'zeros', 'circular'"):
        create_attention("eca", 32, padding="reflect")
    with pytest.raises(ValueError, match="mlp must be True or False"):
        create_attention("eca", 32, mlp=1)
    with pytest.raises(ValueError, match="mlp_ratio must be a positive number"):
        create_attention("eca", 32, mlp=True, mlp_ratio=0)

