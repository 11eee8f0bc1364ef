"""Global context block: the equation written out, fusions, identity at init, timm parity."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def transform(t, c):
    # W2 relu(LN(W1 c + b1)) + b2, LN over the bottleneck with affine
    h = c @ t[0].weight.T + t[0].bias
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    h = (h - mu) / torch.sqrt(var + t[1].eps) * t[1].weight + t[1].bias
    return torch.clamp(h, min=0) @ t[3].weight.T + t[3].bias


def gc_reference(m, x):
    B, C = x.shape[:2]
    X = x.reshape(B, C, -1)
    if m.pooling == "att":
        logits = torch.einsum("c,bcn->bn", m.conv_mask.weight[0], X)
        a = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    else:
        a = torch.full((B, X.shape[-1]), 1.0 / X.shape[-1], dtype=x.dtype)
    c = torch.einsum("bn,bcn->bc", a, X)
    out = X
    if m.channel_mul is not None:
        out = out * (1 / (1 + torch.exp(-transform(m.channel_mul, c))))[..., None]
    if m.channel_add is not None:
        out = out + transform(m.channel_add, c)[..., None]
    return out.reshape(x.shape), a


@pytest.mark.parametrize("fusion", ["channel_add", "channel_mul", ("channel_add", "channel_mul")])
@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize("shape", [(2, 32, 9), (2, 32, 4, 5), (2, 32, 2, 3, 4)])
def test_gc_matches_equation(fusion, pooling, shape):
    m = randomize(create_attention("gc", 32, fusion=fusion, pooling=pooling)).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _ = gc_reference(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_init_identity_for_add_and_half_for_mul():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(create_attention("gc", 64)(x), x, rtol=0, atol=0)
    torch.testing.assert_close(create_attention("gc", 64, fusion="channel_mul")(x), x * 0.5, rtol=0, atol=0)


def test_param_count_official():
    # C=256, r=16: mask 256 (bias dropped: a softmax no-op) + 256*16+16 + LN 32 + 16*256+256
    m = create_attention("gc", 256)
    assert sum(p.numel() for p in m.parameters()) == 256 + 256 * 16 + 16 + 32 + 16 * 256 + 256


def test_maps():
    m = randomize(create_attention("gc", 32, fusion=("channel_add", "channel_mul"))).double()
    x = torch.randn(2, 32, 4, 3, dtype=torch.float64)
    with convattn.capture_maps(m) as maps:
        m(x)
    _, a = gc_reference(m, x)
    d = next(iter(maps.values()))
    torch.testing.assert_close(d["spatial"], a.reshape(2, 4, 3))
    assert d["channel"].shape == (2, 32) and d["channel_add"].shape == (2, 32)


def test_bad_options():
    with pytest.raises(ValueError, match="pooling must be one of"):
        create_attention("gc", 32, pooling="max")
    for bad in ("add", (), ("channel_add", "channel_add")):
        with pytest.raises(ValueError, match="fusion must be"):
            create_attention("gc", 32, fusion=bad)


@pytest.mark.parametrize("fuse", ["add", "mul", "both"])
def test_parity_with_timm_global_context(fuse):
    layers = pytest.importorskip("timm.layers")
    add, mul = fuse in ("add", "both"), fuse in ("mul", "both")
    theirs = randomize(layers.GlobalContext(64, fuse_add=add, fuse_scale=mul, rd_channels=4), seed=2).eval()
    fusion = tuple(f for f, on in (("channel_add", add), ("channel_mul", mul)) if on)
    ours = create_attention("gc", 64, fusion=fusion).eval()
    with torch.no_grad():
        ours.conv_mask.weight.copy_(theirs.conv_attn.weight[:, :, 0, 0])
        for mine, mlp in ((ours.channel_add, theirs.mlp_add), (ours.channel_mul, theirs.mlp_scale)):
            if mine is None:
                continue
            mine[0].weight.copy_(mlp.fc1.weight[:, :, 0, 0])
            mine[0].bias.copy_(mlp.fc1.bias)
            mine[1].weight.copy_(mlp.norm.weight)
            mine[1].bias.copy_(mlp.norm.bias)
            mine[3].weight.copy_(mlp.fc2.weight[:, :, 0, 0])
            mine[3].bias.copy_(mlp.fc2.bias)
        assert theirs.conv_attn.bias.abs().max() > 0  # timm's mask bias: a softmax no-op
        x = torch.randn(2, 64, 6, 7)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
