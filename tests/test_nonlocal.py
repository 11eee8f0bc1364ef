"""Non-local block: the equation written out, variants, identity at init, timm parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

import convattn
from convattn import create_attention


def pool2(x):
    # max over each 2-per-dim cell, written as a padded reshape (odd sizes: -inf pad)
    nd = x.dim() - 2
    pad = []
    for s in reversed(x.shape[2:]):
        pad += [0, s % 2]
    x = F.pad(x, pad, value=float("-inf"))
    B, C = x.shape[:2]
    shape = [B, C]
    for s in x.shape[2:]:
        shape += [s // 2, 2]
    y = x.reshape(shape)
    return y.amax(dim=tuple(3 + 2 * i for i in range(nd)))


def nonlocal_reference(m, x):
    B, C = x.shape[:2]
    X = x.reshape(B, C, -1)
    P = (pool2(x) if m.subsample else x).reshape(B, C, -1)

    def conv(c, t):
        y = torch.einsum("oc,bcn->bon", c.weight[..., 0], t)
        return y if c.bias is None else y + c.bias[:, None]

    if m.mode == "gaussian":
        th, ph = X, P
    else:
        th, ph = conv(m.theta, X), conv(m.phi, P)
    g = conv(m.g, P)
    pair = torch.einsum("bdi,bdj->bij", th, ph)
    if m.mode == "dot_product":
        f = pair / P.shape[-1]
    else:
        e = torch.exp(m.scale * pair)
        f = e / e.sum(-1, keepdim=True)
    y = torch.einsum("bij,bdj->bdi", f, g)
    z = conv(m.out, y)
    bn = m.bn  # eval: (z - mean) / sqrt(var + eps) * w + b
    z = (z - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps) * bn.weight[:, None] + bn.bias[:, None]
    return (X + z).reshape(x.shape), f


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product"])
@pytest.mark.parametrize("subsample", [True, False])
@pytest.mark.parametrize("shape", [(2, 16, 7), (2, 16, 5, 4), (1, 16, 3, 4, 2)])
def test_nonlocal_matches_equation(mode, subsample, shape):
    m = randomize(create_attention("nonlocal", 16, mode=mode, subsample=subsample), scale=0.3).double().eval()
    x = torch.randn(shape, dtype=torch.float64) * 0.5
    ref, _ = nonlocal_reference(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_scale_options():
    assert create_attention("nonlocal", 64).scale == pytest.approx(32**-0.5)  # d = C/2
    assert create_attention("nonlocal", 64, mode="gaussian").scale == pytest.approx(64**-0.5)
    assert create_attention("nonlocal", 64, scale=False).scale == 1.0
    assert create_attention("nonlocal", 64, scale=0.25).scale == 0.25
    for bad in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            create_attention("nonlocal", 64, scale=bad)


def test_bad_options():
    with pytest.raises(ValueError, match="mode must be one of"):
        create_attention("nonlocal", 16, mode="concatenation")
    with pytest.raises(ValueError, match="subsample must be True or False"):
        create_attention("nonlocal", 16, subsample=2)
    with pytest.raises(ValueError, match="reduction=32 leaves 0 hidden channels"):
        create_attention("nonlocal", 16, reduction=32)


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product"])
def test_identity_at_init(mode):
    torch.manual_seed(0)
    m = create_attention("nonlocal", 32, mode=mode)
    x = torch.randn(2, 32, 6, 5)
    for train in (True, False):
        torch.testing.assert_close(m.train(train)(x), x, rtol=0, atol=0)


def test_official_init():
    torch.manual_seed(0)
    m = create_attention("nonlocal", 256)
    assert 0.008 < m.theta.weight.std().item() < 0.012 and m.theta.bias.abs().max() == 0
    assert m.phi.bias is None  # a no-op under the softmax
    assert m.bn.weight.abs().max() == 0 and m.bn.bias.abs().max() == 0


def test_maps_sum_to_one_and_match_rows():
    m = randomize(create_attention("nonlocal", 16), scale=0.3).double().eval()
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64) * 0.5
    with convattn.capture_maps(m, query=7) as maps:
        m(x)
    _, f = nonlocal_reference(m, x)
    d = next(iter(maps.values()))
    assert d["spatial"].shape == (2, 5, 6) and d["query_row"].shape == (2, 5, 6)
    torch.testing.assert_close(d["spatial"].sum((1, 2)), torch.ones(2, dtype=torch.float64))
    # pooled key (0, 0) covers input cells (0..1, 0..1): each gets a quarter of its column mean
    torch.testing.assert_close(d["spatial"][:, 0, 0], f.mean(1)[:, 0] / 4)
    torch.testing.assert_close(d["query_row"][:, 4, 5], f[:, 7].reshape(2, 3, 3)[:, 2, 2] / 2)


def test_parity_with_timm_nonlocal():
    layers = pytest.importorskip("timm.layers")
    theirs = randomize(layers.NonLocalAttn(64, use_scale=True, rd_ratio=1 / 8), seed=3, scale=0.2).eval()
    ours = create_attention("nonlocal", 64, hidden=8, subsample=False, scale=64**-0.5).eval()
    with torch.no_grad():
        for a, b in (("theta", "t"), ("phi", "p"), ("g", "g"), ("out", "z")):
            getattr(ours, a).weight.copy_(getattr(theirs, b).weight[..., 0])
            if getattr(ours, a).bias is not None:
                getattr(ours, a).bias.copy_(getattr(theirs, b).bias)
        ours.bn.load_state_dict(theirs.norm.state_dict())
        # timm's p conv has a (random, non-zero) bias we do not have: it cannot change the output
        assert theirs.p.bias.abs().max() > 0
        x = torch.randn(2, 64, 7, 6)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
