"""LSK (LSKNet's LSKblock): the equation written out, the official parameter count, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def _conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pad: int, dilation: int = 1,
            depthwise: bool = False) -> torch.Tensor:
    """Zero-padded cross-correlation as a sum over the kernel taps: x (B, I, H, W), w (O, I or 1, k, k)."""
    B, _, H, W = x.shape
    k = w.shape[-1]
    xp = torch.zeros(B, x.shape[1], H + 2 * pad, W + 2 * pad, dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    out = b.view(1, -1, 1, 1).expand(B, -1, H, W).clone()
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i * dilation:i * dilation + H, j * dilation:j * dilation + W]
            if depthwise:
                out = out + w[:, 0, i, j].view(1, -1, 1, 1) * patch
            else:
                out = out + torch.einsum("oi,bihw->bohw", w[:, :, i, j], patch)
    return out


def _reference(m, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Y, A, [S1; S2]) of the official LSKblock, written out."""
    u1 = _conv2d(x, m.conv0.weight, m.conv0.bias, 2, depthwise=True)
    u2 = _conv2d(u1, m.conv_spatial.weight, m.conv_spatial.bias, 9, dilation=3, depthwise=True)
    v1 = torch.einsum("oi,bihw->bohw", m.conv1.weight[:, :, 0, 0], u1) + m.conv1.bias.view(1, -1, 1, 1)
    v2 = torch.einsum("oi,bihw->bohw", m.conv2.weight[:, :, 0, 0], u2) + m.conv2.bias.view(1, -1, 1, 1)
    both = torch.cat((v1, v2), 1)  # the official concatenation, then its channel mean and max
    pooled = torch.stack((both.sum(1) / both.shape[1], both.max(1).values), 1)
    s = 1 / (1 + torch.exp(-_conv2d(pooled, m.conv_squeeze.weight, m.conv_squeeze.bias, 3)))
    mixed = v1 * s[:, 0:1] + v2 * s[:, 1:2]
    a = torch.einsum("oi,bihw->bohw", m.conv.weight[:, :, 0, 0], mixed) + m.conv.bias.view(1, -1, 1, 1)
    return x * a, a, s


@pytest.mark.parametrize("C, H, W", [(16, 9, 11), (7, 5, 4), (2, 12, 3)])
def test_lsk_matches_equation(C, H, W):
    m = randomize(create_attention("lsk", C)).double()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    y, a, s = _reference(m, x)
    torch.testing.assert_close(m(x), y, rtol=1e-10, atol=1e-10)
    with convattn.capture_maps(m) as maps:
        m(x)
    torch.testing.assert_close(maps["LSK"]["spatial"], a.mean(1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(maps["LSK"]["selection"], s, rtol=1e-10, atol=1e-10)


def test_lsk_parameter_count_is_the_official_one():
    # official LSKblock(dim) in mmrotate/models/backbones/lsknet.py: conv0 Conv2d(C, C, 5, groups=C)
    # 25C + C, conv_spatial Conv2d(C, C, 7, groups=C, dilation=3) 49C + C, conv1 and conv2
    # Conv2d(C, C//2, 1) C (C//2) + C//2 each, conv_squeeze Conv2d(2, 2, 7) 196 + 2,
    # conv Conv2d(C//2, C, 1) (C//2) C + C; every conv with a bias
    for C in (2, 7, 32, 64, 256):
        h = C // 2
        expected = 26 * C + 50 * C + 2 * (C * h + h) + 198 + h * C + C
        assert sum(p.numel() for p in create_attention("lsk", C).parameters()) == expected
    # 1.5 C^2 + 78 C + 198 for even C: LSKNet-S's widths 64, 128, 320, 512
    for C in (64, 128, 320, 512):
        assert sum(p.numel() for p in create_attention("lsk", C).parameters()) == 3 * C * C // 2 + 78 * C + 198
    assert sum(p.numel() for p in create_attention("lsk", 256).parameters()) == 118470


def test_lsk_keeps_the_size_with_its_dilated_kernel():
    # the dilated 7x7 (d = 3) spans 19 pixels; padding 9 keeps any size, also 1 x 1
    m = randomize(create_attention("lsk", 8)).eval()
    for shape in ((1, 8, 1, 1), (1, 8, 3, 20), (2, 8, 25, 2)):
        assert m(torch.randn(shape)).shape == shape


def test_lsk_channel_errors():
    with pytest.raises(ValueError, match=r"LSK \(lsk\): channels=1 leaves 0 channels in the C // 2 selection branches; valid: channels >= 2"):
        create_attention("lsk", 1)
    with pytest.raises(TypeError):
        create_attention("lsk", 16, kernel_size=5)
    with pytest.raises(ValueError, match="spatial dim"):
        create_attention("lsk", 16)(torch.randn(2, 16, 8))
