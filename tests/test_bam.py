"""BAM: the equations written out, merge modes, the official parameter set, options."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import randomize

from convattn import capture_maps, create_attention

SHAPES = [(2, 32, 9), (2, 32, 6, 7), (2, 32, 4, 4, 3)]


def naive_conv(p, w, b=None, dilation=1):
    """Cross-correlation of p (B, I, *S) with w (O, I, *K), dilation d, zero padding d*(K//2)."""
    k = w.shape[2:]
    pad = [dilation * (kk // 2) for kk in k]
    S = p.shape[2:]
    padded = torch.zeros(
        p.shape[:2] + tuple(s + 2 * q for s, q in zip(S, pad, strict=True)), dtype=p.dtype
    )
    padded[
        (slice(None), slice(None)) + tuple(slice(q, q + s) for q, s in zip(pad, S, strict=True))
    ] = p
    out = torch.zeros((p.shape[0], w.shape[0]) + S, dtype=p.dtype)
    for off in itertools.product(*(range(kk) for kk in k)):
        win = padded[
            (slice(None), slice(None))
            + tuple(slice(o * dilation, o * dilation + s) for o, s in zip(off, S, strict=True))
        ]
        tap = w[(slice(None), slice(None)) + off]  # (O, I)
        out += torch.einsum("oi,bi...->bo...", tap, win)
    if b is not None:
        out += b.reshape((1, -1) + (1,) * len(S))
    return out


def bn_eval(v, bn):
    shape = (1, -1) + (1,) * (v.dim() - 2)
    return (v - bn.running_mean.reshape(shape)) / torch.sqrt(
        bn.running_var.reshape(shape) + bn.eps
    ) * bn.weight.reshape(shape) + bn.bias.reshape(shape)


def relu(v):
    return torch.clamp(v, min=0)


def sig(v):
    return 1 / (1 + torch.exp(-v))


def spatial_term_ref(x, branch, dilation=4):
    layers = list(branch.layers)
    convs = [m for m in layers if isinstance(m, torch.nn.modules.conv._ConvNd)]
    bns = [m for m in layers if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    v = relu(bn_eval(naive_conv(x, convs[0].weight, convs[0].bias), bns[0]))
    for conv, bn in zip(convs[1:-1], bns[1:], strict=True):
        v = relu(bn_eval(naive_conv(v, conv.weight, conv.bias, dilation), bn))
    return naive_conv(v, convs[-1].weight, convs[-1].bias)[:, 0]


def channel_term_ref(x, m):
    B, C = x.shape[:2]
    z = x.reshape(B, C, -1).sum(-1) / x[0, 0].numel()
    h = z @ m.fc1.weight.T + (m.fc1.bias if m.fc1.bias is not None else 0)
    h = relu(bn_eval(h, m.bn))
    return h @ m.fc2.weight.T + m.fc2.bias


@pytest.mark.parametrize("merge", ["product", "sum"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bam_matches_equation(shape, merge):
    dims = len(shape) - 2
    m = randomize(create_attention("bam", 32, dims=dims, reduction=4, merge=merge)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    mc = channel_term_ref(x, m).reshape(shape[:2] + (1,) * dims)
    ms = spatial_term_ref(x, m.spatial).unsqueeze(1)
    gate = sig(mc * ms) if merge == "product" else sig(mc + ms)
    ref = x * (1 + gate)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the buffer-reusing path
        torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_bam_spatial_matches_equation(shape):
    dims = len(shape) - 2
    m = randomize(create_attention("bam_spatial", 32, dims=dims, reduction=4)).double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = x * (1 + sig(spatial_term_ref(x, m.spatial))).unsqueeze(1)
    torch.testing.assert_close(m(x), ref, rtol=1e-12, atol=1e-12)


def test_bam_options_change_the_branch():
    m = (
        randomize(create_attention("bam", 32, reduction=4, dilation=2, num_dilated=3))
        .double()
        .eval()
    )
    convs = [c for c in m.spatial.layers if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(c.dilation == (2, 2) for c in convs[1:-1])
    x = torch.randn(2, 32, 7, 6, dtype=torch.float64)
    mc = channel_term_ref(x, m)[:, :, None, None]
    ms = spatial_term_ref(x, m.spatial, dilation=2).unsqueeze(1)
    torch.testing.assert_close(m(x), x * (1 + sig(mc * ms)), rtol=1e-12, atol=1e-12)


def test_bam_training_mode_uses_batch_statistics():
    # BN1d on the channel hidden layer with batch statistics (biased variance)
    m = randomize(create_attention("bam", 16, reduction=4)).double().train()
    x = torch.randn(5, 16, 6, 6, dtype=torch.float64)
    z = x.mean((2, 3))
    h = z @ m.fc1.weight.T
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + m.bn.eps) * m.bn.weight + m.bn.bias
    mc = relu(h) @ m.fc2.weight.T + m.fc2.bias
    with capture_maps(m) as maps:
        m(x)
    torch.testing.assert_close(maps[next(iter(maps))]["channel"], mc, rtol=1e-10, atol=1e-10)


def test_bam_biases_before_bn_are_dead_in_training():
    # the official code's biases before BN: exactly cancelled by the batch mean
    m = randomize(create_attention("bam", 32, reduction=4, bias_before_bn=True)).double().train()
    x = torch.randn(4, 32, 6, 6, dtype=torch.float64)
    y0 = m(x)
    with torch.no_grad():
        m.fc1.bias.add_(3.0)
        for c in m.spatial.layers[:-1]:
            if isinstance(c, torch.nn.Conv2d):
                c.bias.add_(-2.0)
    torch.testing.assert_close(m(x), y0, rtol=1e-9, atol=1e-9)
    assert create_attention("bam", 32).fc1.bias is None


def test_bam_param_counts_by_hand():
    def official(C):  # with the biases before BN, as the official code
        h = C // 16
        channel = C * h + h + 2 * h + h * C + C
        spatial = (C * h + h + 2 * h) + 2 * (9 * h * h + h + 2 * h) + (h + 1)
        return channel + spatial

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert official(256) == 17361
    for C in (256, 512, 1024):
        assert count(create_attention("bam", C, bias_before_bn=True)) == official(C)
        assert count(create_attention("bam", C)) == official(C) - 4 * (C // 16)
    # three BAMs of a ResNet-50 (after stages 1-3): the paper's +0.358 M
    assert sum(official(C) for C in (256, 512, 1024)) == 358067
    assert sum(count(create_attention("bam", C)) for C in (256, 512, 1024)) == 357619
    # spatial branch alone: 256*16 + 2*16 + 2*(9*16*16 + 2*16) + 16 + 1
    assert count(create_attention("bam_spatial", 256)) == 4096 + 32 + 2 * (2304 + 32) + 17


def test_bam_keeps_tiny_spatial_sizes():
    for dims, size in ((1, (3,)), (2, (4, 4)), (3, (2, 3, 4))):
        m = randomize(create_attention("bam", 32, dims=dims)).eval()
        x = torch.randn((2, 32) + size)
        assert m(x).shape == x.shape


def test_bam_records_pre_merge_terms():
    m = randomize(create_attention("bam", 32, reduction=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    with capture_maps(m) as maps:
        y = m(x)
    got = maps[next(iter(maps))]
    assert set(got) == {"channel", "spatial"}
    mc, ms = got["channel"], got["spatial"]
    assert mc.shape == (2, 32) and ms.shape == (2, 8, 8)
    torch.testing.assert_close(y, x * (1 + torch.sigmoid(mc[:, :, None, None] * ms[:, None])))


def test_bam_grad_and_no_grad_paths_agree():
    m = randomize(create_attention("bam", 32, reduction=4)).eval()
    x = torch.randn(2, 32, 8, 8)
    y = m(x)
    assert y.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(m(x), y.detach(), rtol=0, atol=0)


def test_bam_option_errors():
    with pytest.raises(ValueError, match="merge must be one of 'product', 'sum'"):
        create_attention("bam", 32, merge="max")
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        create_attention("bam", 32, dilation=0)
    with pytest.raises(ValueError, match="num_dilated must be an int >= 0"):
        create_attention("bam_spatial", 32, num_dilated=-1)
    with pytest.raises(ValueError, match="bias_before_bn must be True or False"):
        create_attention("bam", 32, bias_before_bn="yes")
    with pytest.raises(ValueError, match="reduction=64 leaves 0 hidden channels for channels=32"):
        create_attention("bam_spatial", 32, reduction=64)
    with pytest.raises(ValueError, match="built with dims=2"):
        create_attention("bam", 32)(torch.randn(1, 32, 8))
