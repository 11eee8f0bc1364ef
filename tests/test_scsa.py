"""SCSA: the equation written out in float64, the official parameter count, the pooling at
sizes below the window (also in exported graphs), options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention


def _depthwise_taps(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """b[c] + sum_j w[c, j] z[., c, i + j - k // 2] with zeros outside: (B, g, L) -> (B, g, L)."""
    k, L = w.shape[-1], z.shape[2]
    p = k // 2
    padded = torch.zeros(z.shape[0], z.shape[1], L + 2 * p, dtype=z.dtype)
    padded[:, :, p:p + L] = z
    return b.view(1, -1, 1) + sum(w[:, 0, j].view(1, -1, 1) * padded[:, :, j:j + L] for j in range(k))


def _group_norm(v: torch.Tensor, groups: int, norm) -> torch.Tensor:
    """GroupNorm over (B, C, *): each sample's C / groups channels and every position together."""
    B, C = v.shape[:2]
    g = v.reshape(B, groups, -1)
    mu = g.mean(-1, keepdim=True)
    var = ((g - mu) ** 2).mean(-1, keepdim=True)
    out = ((g - mu) / torch.sqrt(var + norm.eps)).reshape(v.shape)
    shape = (1, C) + (1,) * (v.dim() - 2)
    return out * norm.weight.view(shape) + norm.bias.view(shape)


def _gate(t: torch.Tensor, kind: str, dim: int) -> torch.Tensor:
    if kind == "sigmoid":
        return 1 / (1 + torch.exp(-t))
    e = torch.exp(t - t.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def _pool(x: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """k x k windows at stride k, floor(L / k) of them per axis; an axis shorter than k is one window."""
    B, C, H, W = x.shape
    if k == -1:
        return x.mean((2, 3), keepdim=True)
    h, w = max(H // k, 1), max(W // k, 1)
    out = torch.empty(B, C, h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            win = x[:, :, i * k:min(i * k + k, H), j * k:min(j * k + k, W)]
            out[:, :, i, j] = win.amax((2, 3)) if mode == "max_pool" else win.sum((2, 3)) / (win.shape[2] * win.shape[3])
    return out


def _reference(m, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Y, mean_c a^h a^w, g) of the official SCSA, written out."""
    B, C, H, W = x.shape
    gc = C // 4
    convs = (m.local_dwc, m.global_dwc_s, m.global_dwc_m, m.global_dwc_l)
    gates = []
    for z, norm in ((x.mean(3), m.norm_h), (x.mean(2), m.norm_w)):
        u = torch.cat([_depthwise_taps(z[:, i * gc:(i + 1) * gc], c.weight, c.bias) for i, c in enumerate(convs)], 1)
        gates.append(_gate(_group_norm(u, 4, norm), m.gate_layer, 2))
    a_h, a_w = gates
    xs = x * a_h[:, :, :, None] * a_w[:, :, None, :]
    p = _group_norm(_pool(xs, m.window_size, m.down_sample_mode), 1, m.norm).flatten(2)  # (B, C, N)

    def scale(conv):  # a depthwise 1x1 conv: one weight (and bias) per channel
        b = conv.bias.view(1, -1, 1) if conv.bias is not None else 0
        return conv.weight.view(1, -1, 1) * p + b

    q, k, v = scale(m.q), scale(m.k), scale(m.v)
    n = m.head_num
    d = C // n
    g = torch.empty(B, C, dtype=x.dtype)
    for head in range(n):
        sl = slice(head * d, (head + 1) * d)
        logits = torch.einsum("bin,bjn->bij", q[:, sl], k[:, sl]) / d ** 0.5  # (B, d, d)
        attn = _gate(logits, "softmax", 2)
        g[:, sl] = torch.einsum("bij,bjn->bin", attn, v[:, sl]).mean(2)
    g = _gate(g, m.gate_layer, 1)
    spatial = torch.einsum("bch,bcw->bhw", a_h, a_w) / C
    return xs * g[:, :, None, None], spatial, g


@pytest.mark.parametrize(
    "C, H, W, options",
    [
        (32, 14, 16, {}),  # 2 x 2 windows, the last 2 columns left out as the official pool does
        (16, 8, 8, {"head_num": 4, "qkv_bias": True}),
        (24, 21, 9, {"gate_layer": "softmax"}),
        (16, 15, 15, {"down_sample_mode": "max_pool", "head_num": 2}),
        (16, 9, 11, {"window_size": -1, "head_num": 8}),
        (32, 10, 7, {"window_size": 3, "group_kernel_sizes": (1, 3, 5, 11)}),
        (16, 4, 9, {}),  # H shorter than the window: pooled whole
        (16, 3, 5, {"down_sample_mode": "max_pool"}),
        (16, 1, 1, {}),
    ],
)
def test_scsa_matches_equation(C, H, W, options):
    m = randomize(create_attention("scsa", C, **options)).double()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    y, spatial, g = _reference(m, x)
    with convattn.capture_maps(m) as maps:
        out = m(x)
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(maps["SCSA"]["spatial"], spatial, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(maps["SCSA"]["channel"], g, rtol=1e-10, atol=1e-10)


def test_scsa_parameter_count_is_the_official_one():
    # official SCSA(dim, head_num) in mmpretrain/models/attentions/SCSA.py: four depthwise
    # Conv1d(C/4, C/4, k, groups=C/4) with bias, k = 3, 5, 7, 9: (C/4)(3 + 5 + 7 + 9) + 4 (C/4);
    # GroupNorm(4, C) twice and GroupNorm(1, C): 6 C; q, k, v Conv2d(C, C, 1, groups=C,
    # bias=qkv_bias=False): 3 C. 16 C in all.
    for C in (4, 16, 64, 256, 2048):
        g = C // 4
        assert sum(p.numel() for p in create_attention("scsa", C).parameters()) == g * 24 + 4 * g + 6 * C + 3 * C == 16 * C
        assert sum(p.numel() for p in create_attention("scsa", C, qkv_bias=True, head_num=4).parameters()) == 19 * C
    assert sum(p.numel() for p in create_attention("scsa", 64, group_kernel_sizes=(1, 3, 5, 11)).parameters()) == (
        16 * 20 + 4 * 16 + 9 * 64
    )


def test_scsa_pool_is_the_official_fixed_window():
    """AvgPool2d(7, stride=7): at 28 x 30 a 4 x 4 grid of 7 x 7 means (the last two columns
    unused); a change in those columns alone moves only the strip gates, never P."""
    m = randomize(create_attention("scsa", 16)).double()
    x = torch.randn(1, 16, 28, 30, dtype=torch.float64)
    p = m.down_sample(x)
    assert p.shape == (1, 16, 4, 4)
    torch.testing.assert_close(p[0, :, 1, 2], x[0, :, 7:14, 14:21].mean((1, 2)), rtol=1e-12, atol=1e-12)
    x2 = x.clone()
    x2[..., 28:] += 5
    torch.testing.assert_close(m.down_sample(x2), p, rtol=0, atol=0)


@pytest.mark.parametrize("exporter, mode", [("dynamo", "avg_pool"), ("legacy", "avg_pool"), ("legacy", "max_pool")])
def test_scsa_short_axes_export_with_dynamic_spatial_size(exporter, mode, tmp_path):
    """The exported graph pads a short axis itself: onnxruntime matches PyTorch at sizes
    above, at and below the window, on either axis (both ONNX exporters)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from convattn.export import export_onnx, verify_onnx

    m = randomize(create_attention("scsa", 16, down_sample_mode=mode)).eval()
    path = tmp_path / "scsa.onnx"
    export_onnx(m, torch.randn(2, 16, 8, 8), path, exporter=exporter, verify=False)
    inputs = [torch.randn(s) for s in ((1, 16, 15, 22), (3, 16, 7, 4), (2, 16, 5, 9), (1, 16, 2, 3), (1, 16, 1, 1))]
    assert max(verify_onnx(path, m, inputs)) <= 1e-4


def test_scsa_option_errors():
    with pytest.raises(ValueError, match=r"SCSA \(scsa\): channels=18 is not a multiple of 4"):
        create_attention("scsa", 18)
    with pytest.raises(ValueError, match=r"channels=16 is not a multiple of head_num=3; valid head_num for 16 channels: 1, 2, 4, 8, 16"):
        create_attention("scsa", 16, head_num=3)
    with pytest.raises(ValueError, match="head_num must be a positive int"):
        create_attention("scsa", 16, head_num=0)
    with pytest.raises(ValueError, match=r"window_size must be a positive int or -1"):
        create_attention("scsa", 16, window_size=0)
    for bad in ((3, 5, 7), (3, 5, 7, 8), (3, 5, 7, True), 7):
        with pytest.raises(ValueError, match="group_kernel_sizes must be 4 positive odd ints"):
            create_attention("scsa", 16, group_kernel_sizes=bad)
    with pytest.raises(ValueError, match="qkv_bias must be True or False"):
        create_attention("scsa", 16, qkv_bias=1)
    with pytest.raises(ValueError, match="gate_layer must be one of 'sigmoid', 'softmax', got 'relu'"):
        create_attention("scsa", 16, gate_layer="relu")
    with pytest.raises(ValueError, match="down_sample_mode='recombination' is not available"):
        create_attention("scsa", 16, down_sample_mode="recombination")
    with pytest.raises(ValueError, match="down_sample_mode must be one of 'avg_pool', 'max_pool'"):
        create_attention("scsa", 16, down_sample_mode="adaptive")
    m = create_attention("scsa", 12, head_num=3, group_kernel_sizes=[1, 1, 3, 3])
    assert m.group_kernel_sizes == (1, 1, 3, 3) and m.scale == 4 ** -0.5
