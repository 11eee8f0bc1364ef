"""Shuffle attention: the equation written out group by group and channel by channel, the
official parameter count and init, the shuffle's channel order, options."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def _sig(t):
    return 1 / (1 + torch.exp(-t))


def _reference(m, x: torch.Tensor) -> torch.Tensor:
    B, C = x.shape[:2]
    G = m.groups
    k = C // (2 * G)
    N = math.prod(x.shape[2:])
    flat = x.reshape(B, C, N)
    z = torch.empty_like(flat)
    for b in range(B):
        for g in range(G):
            for j in range(k):
                u = flat[b, g * 2 * k + j]  # channel branch, (N,)
                z[b, g * 2 * k + j] = u * _sig(m.cweight[j] * u.sum() / N + m.cbias[j])
                v = flat[b, g * 2 * k + k + j]  # spatial branch
                mu = v.sum() / N
                var = ((v - mu) ** 2).sum() / N
                gn = (v - mu) / torch.sqrt(var + 1e-5) * m.gn.weight[j] + m.gn.bias[j]
                z[b, g * 2 * k + k + j] = v * _sig(m.sweight[j] * gn + m.sbias[j])
    y = torch.empty_like(z)
    half = C // 2
    for i in range(2):  # channel shuffle with 2 groups
        for c in range(half):
            y[:, 2 * c + i] = z[:, i * half + c]
    return y.reshape(x.shape)


@pytest.mark.parametrize(
    "C, groups, spatial",
    [(128, 64, (5, 7)), (32, 8, (6, 5)), (24, 3, (9,)), (16, 4, (3, 4, 5)), (16, 8, (4, 4))],
)
def test_sa_matches_equation(C, groups, spatial):
    m = randomize(create_attention("sa", C, groups=groups)).double()
    x = torch.randn((2, C) + spatial, dtype=torch.float64) * 2 + 0.5
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-10, atol=1e-10)


def test_sa_parameter_count_and_init_are_the_official_ones():
    # official sa_layer(channel, groups=64) (wofmanaf/SA-Net, models/sa_resnet.py): cweight, cbias,
    # sweight, sbias each (1, C/(2G), 1, 1) and GroupNorm(C/(2G), C/(2G)) affine: 6 C/(2G) = 3C/G
    for C, G in ((128, 64), (256, 64), (512, 64), (2048, 64), (512, 8), (48, 4)):
        kw = {} if G == 64 else {"groups": G}
        assert sum(p.numel() for p in create_attention("sa", C, **kw).parameters()) == 3 * C // G
    assert sum(p.numel() for p in create_attention("sa", 512).parameters()) == 24
    assert sum(p.numel() for p in create_attention("sa", 512, groups=8).parameters()) == 192
    m = create_attention("sa", 256)
    assert torch.equal(m.cweight, torch.zeros(2)) and torch.equal(m.sweight, torch.zeros(2))
    assert torch.equal(m.cbias, torch.ones(2)) and torch.equal(m.sbias, torch.ones(2))
    # at init both gates are sigmoid(1): Y = sigmoid(1) * shuffle(X)
    x = torch.randn(2, 256, 4, 5)
    shuffled = x.view(2, 2, 128, 4, 5).transpose(1, 2).reshape(2, 256, 4, 5)
    torch.testing.assert_close(m(x), torch.sigmoid(torch.tensor(1.0)) * shuffled)


def test_sa_shuffle_interleaves_the_two_halves():
    # with both gates constant (weights 0, biases large) Y is the shuffle of X alone:
    # output channel 2c comes from input channel c, 2c + 1 from C/2 + c
    m = create_attention("sa", 16, groups=2)
    with torch.no_grad():
        m.cbias.fill_(50.0)
        m.sbias.fill_(50.0)
    x = torch.arange(16, dtype=torch.float64).view(1, 16, 1, 1).expand(1, 16, 2, 2).contiguous()
    order = m.double()(x)[0, :, 0, 0].round().long().tolist()
    assert order == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_sa_records_both_gates():
    m = randomize(create_attention("sa", 32, groups=4)).eval()
    x = torch.randn(2, 32, 6, 6)
    with convattn.capture_maps(m) as maps:
        m(x)
    kinds = maps["ShuffleAttention"]
    assert kinds["spatial"].shape == (2, 6, 6) and kinds["channel_branch"].shape == (2, 16)
    assert ((kinds["channel_branch"] > 0) & (kinds["channel_branch"] < 1)).all()


def test_sa_option_errors():
    with pytest.raises(ValueError, match=r"channels=64 is not a multiple of 2 \* groups=128; valid groups for 64 channels: 1, 2, 4, 8, 16, 32"):
        create_attention("sa", 64)
    with pytest.raises(ValueError, match=r"channels=7 is not a multiple of 2 \* groups=2; valid groups for 7 channels: none"):
        create_attention("sa", 7, groups=1)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create_attention("sa", 128, groups=0)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create_attention("sa", 128, groups=True)
    assert create_attention("sa", 32, groups=16).gn.num_groups == 1
