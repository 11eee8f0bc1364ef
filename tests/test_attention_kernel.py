"""The shared attention kernel: paths agree, explicit scale, padding, chunked maps."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize

from convattn import create_attention
from convattn.layers import attention_kernel as ak


def naive_attention(q, k, v, scale):
    # out_i = sum_j exp(s q_i.k_j) v_j / sum_j exp(s q_i.k_j), written out in float64
    q, k, v = q.double(), k.double(), v.double()
    e = torch.exp(scale * torch.einsum("bid,bjd->bij", q, k))
    return torch.einsum("bij,bjc->bic", e / e.sum(-1, keepdim=True), v)


@pytest.mark.parametrize("path", ["matmul", "sdpa"])
@pytest.mark.parametrize("dk,dv", [(4, 16), (16, 16), (12, 5)])
def test_paths_match_equation(path, dk, dv):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, d, generator=g) for n, d in ((13, dk), (9, dk), (9, dv)))
    for scale in (1.0, 0.3):
        out = ak.attention(q, k, v, scale=scale, path=path)
        assert out.shape == (2, 13, dv)
        torch.testing.assert_close(out.double(), naive_attention(q, k, v, scale), rtol=1e-5, atol=1e-5)


def test_sdpa_path_does_not_scale_by_inverse_sqrt_d():
    # with scale=1.0 the output must differ from the 1/sqrt(d)-scaled one
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 7, 4, generator=g) * 3, torch.randn(1, 7, 4, generator=g) * 3, torch.randn(1, 7, 16, generator=g)
    out = ak.attention(q, k, v, scale=1.0, path="sdpa")
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 1.0), rtol=1e-5, atol=1e-5)
    assert (out.double() - naive_attention(q, k, v, 16**-0.5)).abs().max() > 1e-2


def test_auto_picks_by_size():
    n = math.isqrt(ak.AUTO_SDPA_MIN_SCORES - 1) + 1  # smallest n with n * n >= threshold
    assert ak.select_path(n, n) == "sdpa"
    assert ak.select_path(n - 1, n - 1) == "matmul"
    assert ak.select_path(8, 8, "sdpa") == "sdpa"
    assert ak.qk_width(n, n, 32, 256) == 256 and ak.qk_width(8, 8, 32, 256) == 32
    with pytest.raises(ValueError, match="path must be one of 'auto', 'matmul', 'sdpa'"):
        ak.attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), scale=1.0, path="flash")


@pytest.mark.parametrize("name", ["pam", "pam_gate", "nonlocal", "sagan", "danet"])
def test_module_paths_agree_outputs_and_gradients(name):
    # 24 x 20 positions: both paths run at a size where the kernels really differ
    torch.manual_seed(0)
    # eval mode: in train mode the non-local block's BN cancels its g and output
    # biases, whose true gradient is then 0 (only rounding noise to compare)
    ref = randomize(create_attention(name, 32), scale=0.2).eval()
    x = torch.randn(2, 32, 24, 20)
    results = {}
    for path in ("matmul", "sdpa"):
        m = create_attention(name, 32, path=path).eval()
        m.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        grads["input"] = xi.grad.clone()
        results[path] = (y.detach(), grads)
    (y0, g0), (y1, g1) = results["matmul"], results["sdpa"]
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-5)
    for n in g0:
        rel = (g1[n] - g0[n]).norm() / g0[n].norm()
        assert rel < 1e-4, (n, rel.item())


def test_attention_received_and_row_match_full_matrix(monkeypatch):
    monkeypatch.setattr(ak, "MAP_CHUNK_ELEMENTS", 2 * 11 * 3)  # force chunks of 3 query rows
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 10, 4, generator=g, dtype=torch.float64), torch.randn(2, 11, 4, generator=g, dtype=torch.float64)
    s = torch.softmax(0.7 * q @ k.transpose(1, 2), -1)
    torch.testing.assert_close(ak.attention_received(q, k, scale=0.7), s.mean(1))
    torch.testing.assert_close(ak.attention_row(q, k, 6, scale=0.7), s[:, 6])


def test_query_index_forms_and_errors():
    assert ak.flat_query_index("m", 5, (3, 4)) == 5
    assert ak.flat_query_index("m", (1, 2), (3, 4)) == 6
    assert ak.flat_query_index("m", (1, 0, 1), (2, 2, 2)) == 5
    for bad in ((3, 0), 12, -1, (1,), "a", True):
        with pytest.raises(ValueError, match="query"):
            ak.flat_query_index("m", bad, (3, 4))


def test_spread_to_grid_keeps_mass_on_odd_sizes():
    vals = torch.rand(2, 3 * 2)  # pooled grid of a (5, 4) input
    out = ak.spread_to_grid(vals, (3, 2), (5, 4))
    assert out.shape == (2, 5, 4)
    torch.testing.assert_close(out.sum((1, 2)), vals.sum(1))
    # the last row of the odd dim is a 1-row cell: it keeps its pooled value per position x 1/2
    torch.testing.assert_close(out[:, 4, 0], vals.view(2, 3, 2)[:, 2, 0] / 2)


def test_sdpa_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n, d in ((5, 2), (4, 2), (4, 6)))
    assert torch.autograd.gradcheck(lambda a, b, c: ak.attention(a, b, c, scale=1.0, path="sdpa"), (q, k, v))
