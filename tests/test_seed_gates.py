"""The seed's gates: per-position MLP spatial gate and the parallel fusion, written out."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from convattn import capture_maps, create_attention, describe

SHAPES = [(2, 32, 9), (2, 32, 6, 7), (2, 32, 4, 5, 3)]


def sig(v):
    return 1 / (1 + torch.exp(-v))


def spatial_ref(x, fc1, fc2):
    # A_s[b, p] = sigma(sum_j w2_j relu(sum_c w1_jc x[b, c, p] + b1_j) + b2), at every position p
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    out = torch.empty(B, flat.shape[-1], dtype=x.dtype)
    for b in range(B):
        for p in range(flat.shape[-1]):
            h = torch.clamp(fc1.weight @ flat[b, :, p] + fc1.bias, min=0)
            out[b, p] = sig(fc2.weight[0] @ h + fc2.bias[0])
    return out.reshape((B,) + x.shape[2:])


def channel_ref(x, fc1, fc2):
    # A_c = sigma(V2 relu(V1 AvgPool(x) + c1) + c2)
    B, C = x.shape[:2]
    z = x.reshape(B, C, -1).sum(-1) / x[0, 0].numel()
    return sig(torch.clamp(z @ fc1.weight.T + fc1.bias, min=0) @ fc2.weight.T + fc2.bias)


@pytest.mark.parametrize("shape", SHAPES)
def test_mlp_spatial_matches_equation(shape):
    m = randomize(create_attention("mlp_spatial", 32, reduction=4)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = x * spatial_ref(x, m.fc1, m.fc2).unsqueeze(1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_mlp_spatial_equals_two_1x1_convs():
    # the seed writes the gate as 1x1 convs C -> C1 -> 1 with bias
    m = randomize(create_attention("mlp_spatial", 32, hidden=5)).double().eval()
    conv1 = torch.nn.Conv2d(32, 5, 1).double()
    conv2 = torch.nn.Conv2d(5, 1, 1).double()
    with torch.no_grad():
        conv1.weight.copy_(m.fc1.weight[:, :, None, None])
        conv1.bias.copy_(m.fc1.bias)
        conv2.weight.copy_(m.fc2.weight[:, :, None, None])
        conv2.bias.copy_(m.fc2.bias)
        x = torch.randn(3, 32, 7, 5, dtype=torch.float64)
        torch.testing.assert_close(
            m(x), x * torch.sigmoid(conv2(torch.relu(conv1(x)))), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("shape", SHAPES)
def test_parallel_gate_matches_equation(shape):
    m = randomize(create_attention("parallel_gate", 32, reduction=4)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    a_s = spatial_ref(x, m.spatial_fc1, m.spatial_fc2).unsqueeze(1)
    a_c = channel_ref(x, m.channel_fc1, m.channel_fc2).reshape(shape[:2] + (1,) * (len(shape) - 2))
    ref = a_s * x * a_c
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_parallel_gate_maps_are_both_computed_from_x():
    m = randomize(create_attention("parallel_gate", 32, reduction=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    with capture_maps(m) as maps:
        y = m(x)
    got = maps[next(iter(maps))]
    a_c, a_s = got["channel"], got["spatial"]
    assert a_c.shape == (2, 32) and a_s.shape == (2, 8, 8)
    torch.testing.assert_close(y, x * (a_c[:, :, None, None] * a_s[:, None]))
    # parallel, not sequential as CBAM: the spatial map ignores the channel gate
    with torch.no_grad():
        torch.testing.assert_close(a_s, m.spatial_gate(x))
        assert not torch.allclose(a_s, m.spatial_gate(x * a_c[:, :, None, None]), atol=1e-3)


def test_channels_last_and_grad_paths_agree():
    for name in ("mlp_spatial", "parallel_gate"):
        m = randomize(create_attention(name, 32, reduction=4)).eval()
        x = torch.randn(2, 32, 6, 5)
        y = m(x)
        with torch.no_grad():
            torch.testing.assert_close(
                m(x.to(memory_format=torch.channels_last)), y.detach(), rtol=1e-6, atol=1e-6
            )
            torch.testing.assert_close(m(x), y.detach(), rtol=0, atol=0)


def test_seed_param_counts_by_hand():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # spatial: 256 -> 16 -> 1 with biases
    spatial = 256 * 16 + 16 + 16 * 1 + 1
    se = 256 * 16 + 16 + 16 * 256 + 256
    assert count(create_attention("mlp_spatial", 256)) == spatial == 4129
    assert count(create_attention("parallel_gate", 256)) == spatial + se == 12593
    m = create_attention("parallel_gate", 256, spatial_reduction=8)
    assert m.spatial_fc1.out_features == 32 and m.channel_fc1.out_features == 16


def test_seed_metadata_is_honest():
    for name in ("mlp_spatial", "parallel_gate"):
        d = describe(name)
        assert (
            "project brief" in d["paper"]
            and d["venue"] == "brief"
            and d["authors"] == "convattn seed"
        )
    doc = __import__("convattn.attention.seed_gates", fromlist=["_"]).__doc__
    for other in ("BAM", "scSE", "CBAM"):
        assert other in doc


def test_seed_option_errors():
    with pytest.raises(ValueError, match="reduction=64 leaves 0 hidden channels for channels=32"):
        create_attention("mlp_spatial", 32, reduction=64)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        create_attention("parallel_gate", 32, hidden=0)
    with pytest.raises(ValueError, match="reduction must be a positive number"):
        create_attention("parallel_gate", 32, spatial_reduction=0)
    with pytest.raises(ValueError, match=r"expected input \(B, 32"):
        create_attention("mlp_spatial", 32)(torch.randn(1, 32, 2, 2, 2, 2))
