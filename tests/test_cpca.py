"""CPCA: the equation written out with explicit sums for every conv, the official parameter
count and parameter names, options."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def _pointwise(conv, t):
    """1x1 conv as an einsum, t (B, C_in, H, W)."""
    return torch.einsum("oi,bihw->bohw", conv.weight[:, :, 0, 0], t) + conv.bias.view(1, -1, 1, 1)


def _depthwise(conv, t):
    """Depthwise zero-padded cross-correlation keeping the size, as a sum over kernel offsets."""
    kh, kw = conv.weight.shape[2:]
    H, W = t.shape[2:]
    p = torch.nn.functional.pad(t, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = conv.bias.view(1, -1, 1, 1).expand_as(t).clone()
    for i in range(kh):
        for j in range(kw):
            out = out + conv.weight[:, 0, i, j].view(1, -1, 1, 1) * p[:, :, i:i + H, j:j + W]
    return out


def _reference(m, x):
    def sig(t):
        return 1 / (1 + torch.exp(-t))

    def gelu(t):
        return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

    def mlp(z):  # z (B, C)
        w1, b1 = m.ca["fc1"].weight[:, :, 0, 0], m.ca["fc1"].bias
        w2, b2 = m.ca["fc2"].weight[:, :, 0, 0], m.ca["fc2"].bias
        return sig(torch.clamp(z @ w1.T + b1, min=0) @ w2.T + b2)

    B, C, H, W = x.shape
    u = gelu(_pointwise(m.conv, x))
    flat = u.reshape(B, C, H * W)
    m_c = mlp(flat.sum(-1) / (H * W)) + mlp(flat.max(-1).values)
    v = u * m_c[:, :, None, None]
    d0 = _depthwise(m.dconv5_5, v)
    d = d0.clone()
    for k in (7, 11, 21):
        d = d + _depthwise(getattr(m, f"dconv{k}_1"), _depthwise(getattr(m, f"dconv1_{k}"), d0))
    m_s = _pointwise(m.conv, d)
    return _pointwise(m.conv, v * m_s)


@pytest.mark.parametrize("C, opts, spatial", [(32, {}, (9, 11)), (16, {"reduction": 16}, (6, 25)),
                                              (24, {"hidden": 5}, (23, 4))])
def test_cpca_matches_equation(C, opts, spatial):
    m = randomize(create_attention("cpca", C, **opts), scale=0.3).double()
    x = torch.randn((2, C) + spatial, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-10, atol=1e-10)


def test_cpca_parameter_count_and_names_are_the_official_ones():
    # official RepBlock(C, C, channelAttention_reduce=4) (Cuthbert-Huang/CPCANet,
    # CPCANet/nnunet/network_architecture/CPCANet.py): ChannelAttention fc1 Conv2d(C, h, 1) and
    # fc2 Conv2d(h, C, 1) with biases, h = C // r; depthwise 5x5, (1,7)/(7,1), (1,11)/(11,1),
    # (1,21)/(21,1) with biases; one Conv2d(C, C, 1) with bias: C^2 + 2Ch + h + 112C
    for C, r in ((16, 4), (64, 4), (256, 4), (256, 16), (512, 8)):
        h = C // r
        n = sum(p.numel() for p in create_attention("cpca", C, reduction=r).parameters())
        assert n == C * C + C + (C * h + h) + (h * C + C) + (25 + 1) * C + 2 * (8 + 12 + 22) * C
        assert n == C * C + 2 * C * h + h + 112 * C
    assert sum(p.numel() for p in create_attention("cpca", 256).parameters()) == 127040
    names = set(create_attention("cpca", 16).state_dict())
    official = {"ca.fc1", "ca.fc2", "dconv5_5", "dconv1_7", "dconv7_1", "dconv1_11", "dconv11_1",
                "dconv1_21", "dconv21_1", "conv"}
    assert names == {f"{n}.{p}" for n in official for p in ("weight", "bias")}


def test_cpca_channel_prior_adds_two_sigmoids_and_is_recorded():
    m = randomize(create_attention("cpca", 16)).eval()
    x = torch.randn(2, 16, 8, 8)
    with convattn.capture_maps(m) as maps:
        m(x)
    kinds = maps["ChannelPriorConvAttention"]
    m_c = kinds["channel"]
    assert m_c.shape == (2, 16) and kinds["spatial"].shape == (2, 8, 8)
    assert ((m_c > 0) & (m_c < 2)).all() and (m_c > 1).any()  # a sum of two sigmoids, not one


def test_cpca_option_errors():
    with pytest.raises(ValueError, match=r"reduction=32 leaves 0 hidden channels for channels=16"):
        create_attention("cpca", 16, reduction=32)
    with pytest.raises(ValueError, match="reduction must be a positive number"):
        create_attention("cpca", 16, reduction=0)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        create_attention("cpca", 16, hidden=0)
    with pytest.raises(ValueError, match="dims=3 is not supported; valid: 2"):
        create_attention("cpca", 16, dims=3)
    assert create_attention("cpca", 16, hidden=3).ca["fc1"].out_channels == 3
