"""Criss-cross attention (cca): each pixel's row and column energies written out pixel by pixel,
the recurrence, identity at gamma = 0, the memory claim checked on every tensor the ops make,
the official parameter count and state dict, maps, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize
from torch.utils._python_dispatch import TorchDispatchMode

import convattn
from convattn import create_attention


def _step_reference(m, x: torch.Tensor):
    """One criss-cross step with explicit loops over the pixels; also the dense attention
    (B, H, W, H, W) of every query (small sizes only)."""
    B, C, H, W = x.shape

    def conv(layer, t):
        return torch.einsum("oc,bchw->bohw", layer.weight[:, :, 0, 0], t) + layer.bias[:, None, None]

    q, k, v = conv(m.query_conv, x), conv(m.key_conv, x), conv(m.value_conv, x)
    out = torch.empty_like(x)
    attn = torch.zeros(B, H, W, H, W, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for w in range(W):
                # its row (the pixel itself included), then its column without the pixel
                keys = [(h, j) for j in range(W)] + [(g, w) for g in range(H) if g != h]
                assert len(keys) == H + W - 1
                e = torch.stack([torch.dot(q[b, :, h, w], k[b, :, i, j]) for i, j in keys])
                a = torch.exp(e - e.max())
                a = a / a.sum()
                ctx = sum(a[n] * v[b, :, i, j] for n, (i, j) in enumerate(keys))
                out[b, :, h, w] = m.gamma * ctx + x[b, :, h, w]
                for n, (i, j) in enumerate(keys):
                    attn[b, h, w, i, j] = a[n]
    return out, attn


def _reference(m, x: torch.Tensor):
    attn = None
    for _ in range(m.recurrence):
        x, attn = _step_reference(m, x)
    return x, attn


@pytest.mark.parametrize("recurrence", [1, 2, 3])
@pytest.mark.parametrize("C, options, size", [(16, {}, (5, 6)), (8, {"hidden": 3}, (4, 3)), (16, {}, (1, 4)),
                                              (16, {}, (4, 1))])
def test_cca_matches_equation(recurrence, C, options, size):
    m = randomize(create_attention("cca", C, recurrence=recurrence, **options), scale=0.3).double()
    x = torch.randn((2, C) + size, dtype=torch.float64)
    ref, _ = _reference(m, x)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_cca_recurrence_shares_the_weights():
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    once = randomize(create_attention("cca", 16, recurrence=1), scale=0.3).double()
    twice = create_attention("cca", 16).double()
    assert twice.recurrence == 2
    twice.load_state_dict(once.state_dict())
    torch.testing.assert_close(twice(x), once(once(x)), rtol=1e-12, atol=1e-12)
    assert (twice(x) - once(x)).abs().max() > 1e-3


@pytest.mark.parametrize("recurrence", [1, 2, 3])
def test_cca_gamma_zero_is_the_identity(recurrence):
    torch.manual_seed(0)
    m = create_attention("cca", 32, recurrence=recurrence).train()
    assert m.gamma.item() == 0
    x = torch.randn(2, 32, 6, 7, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(x.grad, g, rtol=0, atol=0)
    # gamma is the only parameter with a gradient at init: the attention is not used yet
    assert m.gamma.grad.abs().item() > 0
    # with gamma != 0 the block is no longer the identity
    with torch.no_grad():
        m.gamma.fill_(0.5)
        assert (m(x) - x).abs().max() > 1e-2


class _LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_cca_memory_is_linear_in_the_criss_cross_not_quadratic():
    B, C, H, W = 1, 16, 64, 64
    m = randomize(create_attention("cca", C)).train()  # R = 2
    x = torch.randn(B, C, H, W, requires_grad=True)
    with _LargestTensor() as forward:
        y = m(x)
    with _LargestTensor() as backward:
        y.sum().backward()
    criss_cross = B * H * W * (H + W)  # 524,288: the energies / attention of one step
    dense = B * (H * W) ** 2  # 16,777,216: an N x N attention
    assert B * C * H * W < criss_cross
    # the largest tensor of the forward and of the backward is the (B, H, W, H + W) attention itself
    assert forward.largest == criss_cross, forward.largest
    assert backward.largest == criss_cross, backward.largest
    assert criss_cross * 16 < dense
    # the probe sees a dense attention when there is one (DANet's position attention, matmul path)
    pam = randomize(create_attention("pam", C, path="matmul"))
    with torch.no_grad(), _LargestTensor() as probe:
        pam(x)
    assert probe.largest >= dense


def test_cca_parameter_count_and_state_dict_are_the_official_ones():
    for C in (8, 16, 64, 256, 512):
        d = C // 8
        m = create_attention("cca", C)
        # official CrissCrossAttention(in_dim) (speedinghzl/CCNet, cc_attention/functions.py, and mmcv's
        # cc_attention.py): query_conv and key_conv Conv2d(C, C // 8, 1), value_conv Conv2d(C, C, 1), all
        # with bias, gamma = zeros(1)
        assert sum(p.numel() for p in m.parameters()) == 2 * (d * C + d) + C * C + C + 1
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
            "query_conv.weight": (d, C, 1, 1), "query_conv.bias": (d,),
            "key_conv.weight": (d, C, 1, 1), "key_conv.bias": (d,),
            "value_conv.weight": (C, C, 1, 1), "value_conv.bias": (C,),
            "gamma": (1,),
        }
    assert sum(p.numel() for p in create_attention("cca", 256).parameters()) == 82_241


def test_cca_key_bias_changes_nothing():
    m = randomize(create_attention("cca", 16), scale=0.3).double()
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64)
    y = m(x)
    (y * torch.randn_like(y)).sum().backward()
    assert m.key_conv.bias.grad.abs().max() < 1e-10 * m.query_conv.bias.grad.abs().max()
    with torch.no_grad():
        m.key_conv.bias.add_(torch.randn(2, dtype=torch.float64))
        torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)


def test_cca_maps_spatial_and_query_row():
    m = randomize(create_attention("cca", 16), scale=0.3).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
    with convattn.capture_maps(m, query=(2, 3)) as maps:
        m(x)
    (recorded,) = maps.values()
    assert set(recorded) == {"spatial", "query_row"}
    # the last step's attention: the reference's second step
    x1, _ = _step_reference(m, x)
    _, attn = _step_reference(m, x1)
    torch.testing.assert_close(recorded["spatial"], attn.mean((1, 2)), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(recorded["spatial"].sum((1, 2)), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(recorded["query_row"], attn[:, 2, 3], rtol=1e-10, atol=1e-10)
    assert (recorded["query_row"][:, [0, 1, 3]][:, :, [0, 1, 2, 4]] == 0).all()  # off the criss-cross
    with convattn.capture_maps(m) as maps:
        m(x)
    assert set(next(iter(maps.values()))) == {"spatial"}
    with pytest.raises(ValueError, match="outside the spatial size"):
        with convattn.capture_maps(m, query=(4, 0)):
            m(x)


def test_cca_option_errors():
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match=r"recurrence must be a positive int \(how many times the shared "
                                             r"attention is applied\), got"):
            create_attention("cca", 16, recurrence=bad)
    with pytest.raises(ValueError, match="reduction=8 leaves 0 hidden channels for channels=4"):
        create_attention("cca", 4)
    assert create_attention("cca", 4, hidden=1).query_conv.out_channels == 1
    with pytest.raises(ValueError, match="not supported"):
        create_attention("cca", 16, dims=3)
    with pytest.raises(ValueError, match=r"expected input \(B, 16, \.\.\.\) with 2 spatial dims"):
        create_attention("cca", 16)(torch.randn(1, 16, 8))
