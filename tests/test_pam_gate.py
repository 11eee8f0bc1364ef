"""pam_gate: the project brief's listing fails as printed; ours runs and keeps its pieces.

The listing below is transcribed from the project's own brief (shared/seed/,
section 4); it is the thing under test, not a dependency.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import randomize

import convattn
from convattn import create_attention

# ---- the brief's listing, as printed -------------------------------------------


class SpatialAttentionModule(nn.Module):
    def __init__(self, in_channels):
        super(SpatialAttentionModule, self).__init__()  # noqa: UP008
        self.conv1 = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.conv2 = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.conv3 = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        batch_size, channel, height, width = x.size()
        query = self.conv1(x).view(batch_size, -1, height * width)
        key = self.conv2(x).view(batch_size, -1, height * width)
        value = self.conv3(x).view(batch_size, -1, height * width)
        energy = torch.bmm(query.permute(0, 2, 1), key)
        attention = self.softmax(energy)
        out = torch.bmm(value, attention.permute(0, 2, 1))
        out = out.view(batch_size, -1, height, width)
        return out


class ChannelAttentionModule(nn.Module):
    def __init__(self, in_channels, reduction=16):
        super(ChannelAttentionModule, self).__init__()  # noqa: UP008
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_channels, in_channels // reduction, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(in_channels // reduction, in_channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        out = avg_out + max_out
        return self.sigmoid(out)


class AttentionModule(nn.Module):
    def __init__(self, in_channels):
        super(AttentionModule, self).__init__()  # noqa: UP008
        self.spatial_attention = SpatialAttentionModule(in_channels)
        self.channel_attention = ChannelAttentionModule(in_channels)

    def forward(self, x):
        spatial_out = self.spatial_attention(x)
        channel_out = self.channel_attention(x)
        out = spatial_out * channel_out
        return out


# ---- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [16, 64, 256])
def test_listing_as_printed_fails_with_a_shape_error_and_ours_runs(channels):
    x = torch.randn(2, channels, 6, 5)
    with pytest.raises(RuntimeError, match=rf"size of tensor a \({channels // 8}\) must match the size of tensor b \({channels}\)"):
        AttentionModule(channels)(x)
    y = create_attention("pam_gate", channels)(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def _copy_from_listing(ours, listing, value_conv):
    with torch.no_grad():
        sa, ca = listing.spatial_attention, listing.channel_attention
        ours.query_conv.weight.copy_(sa.conv1.weight[..., 0])
        ours.query_conv.bias.copy_(sa.conv1.bias)
        ours.key_conv.weight.copy_(sa.conv2.weight[..., 0])
        ours.value_conv.weight.copy_(value_conv.weight[..., 0])
        ours.value_conv.bias.copy_(value_conv.bias)
        ours.fc1.weight.copy_(ca.fc1.weight[:, :, 0, 0])
        ours.fc2.weight.copy_(ca.fc2.weight[:, :, 0, 0])


def test_ours_is_the_listing_with_v_to_c_channels_and_a_residual():
    torch.manual_seed(0)
    C = 64
    listing = randomize(AttentionModule(C), scale=0.2).double()
    # the one structural fix: V maps C -> C (the listing's conv3 maps C -> C/8)
    value_conv = randomize(nn.Conv2d(C, C, 1), seed=4, scale=0.2).double()
    ours = randomize(create_attention("pam_gate", C)).double()
    _copy_from_listing(ours, listing, value_conv)
    x = torch.randn(2, C, 5, 6, dtype=torch.float64)
    # the listing's channel gate, unchanged (its key bias is a softmax no-op we omit)
    assert listing.spatial_attention.conv2.bias.abs().max() > 0
    torch.testing.assert_close(ours.gate(x), listing.channel_attention(x)[:, :, 0, 0])
    # the listing's position branch with conv3 replaced by the C -> C conv
    listing.spatial_attention.conv3 = value_conv
    pos = listing.spatial_attention(x)
    gate = listing.channel_attention(x)
    torch.testing.assert_close(ours(x), (x + ours.gamma * pos) * gate, rtol=1e-10, atol=1e-10)


def _reference(m, x):
    # P = X + gamma V softmax(Q^T K)^T ; m = sigmoid(MLP(avg) + MLP(max)) ; Y = P * m
    B, C = x.shape[:2]
    X = x.reshape(B, C, -1)
    Q = torch.einsum("oc,bcn->bon", m.query_conv.weight[..., 0], X) + m.query_conv.bias[:, None]
    K = torch.einsum("oc,bcn->bon", m.key_conv.weight[..., 0], X)
    V = torch.einsum("oc,bcn->bon", m.value_conv.weight[..., 0], X) + m.value_conv.bias[:, None]
    e = torch.exp(torch.einsum("bdi,bdj->bij", Q, K))
    S = e / e.sum(-1, keepdim=True)
    P = X + m.gamma * torch.einsum("bcj,bij->bci", V, S)

    def mlp(z):
        return torch.clamp(z @ m.fc1.weight.T, min=0) @ m.fc2.weight.T

    gate = 1 / (1 + torch.exp(-(mlp(X.mean(-1)) + mlp(X.amax(-1)))))
    return (P * gate[..., None]).reshape(x.shape), S, gate


@pytest.mark.parametrize("shape", [(2, 32, 7), (2, 32, 4, 3), (1, 32, 2, 3, 2)])
def test_matches_equation_all_dims(shape):
    m = randomize(create_attention("pam_gate", 32), scale=0.3).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _, _ = _reference(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_starts_as_the_plain_channel_gate():
    torch.manual_seed(0)
    m = create_attention("pam_gate", 32)
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(m(x), x * m.gate(x)[:, :, None, None], rtol=0, atol=0)


def test_maps_and_options():
    m = randomize(create_attention("pam_gate", 32), scale=0.3).double()
    x = torch.randn(2, 32, 3, 4, dtype=torch.float64)
    with convattn.capture_maps(m, query=5) as maps:
        m(x)
    _, S, gate = _reference(m, x)
    d = next(iter(maps.values()))
    torch.testing.assert_close(d["spatial"], S.mean(1).reshape(2, 3, 4))
    torch.testing.assert_close(d["query_row"], S[:, 5].reshape(2, 3, 4))
    torch.testing.assert_close(d["channel"], gate)
    with pytest.raises(ValueError, match="reduction=16 leaves 0 hidden channels for channels=8"):
        create_attention("pam_gate", 8)
    assert create_attention("pam_gate", 8, reduction=4, qk_reduction=4).key_conv.out_channels == 2
