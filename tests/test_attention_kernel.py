"""The shared attention kernel: paths agree, explicit scale, padding, the chunked path, chunked maps."""

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


@pytest.fixture
def blocks_of(monkeypatch):
    """Make the chunked path use blocks of ``rows`` query rows for a (batch, n_keys) problem."""

    def set_rows(rows, batch, n_keys):
        monkeypatch.setattr(ak, "CHUNK_ELEMENTS", rows * batch * n_keys)
        monkeypatch.setattr(ak, "CHUNK_PER_OUTPUT", 0)
        assert ak._chunk_rows(batch, 1, n_keys, 1) == rows

    return set_rows


@pytest.mark.parametrize("path", ["matmul", "chunked", "sdpa"])
@pytest.mark.parametrize("dk,dv", [(4, 16), (16, 16), (12, 5)])
def test_paths_match_equation(path, dk, dv, blocks_of):
    blocks_of(4, 2, 9)  # 13 query rows: blocks of 4, 4, 4, 1
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
    n = math.isqrt(ak.AUTO_CHUNKED_MIN_SCORES - 1) + 1  # smallest n with n * n >= threshold
    assert ak.select_path(n, n) == "chunked"
    assert ak.select_path(n - 1, n - 1) == "matmul"
    assert ak.select_path(8, 8, "sdpa") == "sdpa" and ak.select_path(n, n, "sdpa") == "sdpa"
    assert ak.select_path(n, n, "matmul") == "matmul" and ak.select_path(8, 8, "chunked") == "chunked"
    # q and k are padded to v's width only for SDPA; the chunked path keeps d_k
    assert ak.qk_width(n, n, 32, 256) == 32 and ak.qk_width(8, 8, 32, 256) == 32
    assert ak.qk_width(8, 8, 32, 256, "sdpa") == 256
    with pytest.raises(ValueError, match="path must be one of 'auto', 'matmul', 'chunked', 'sdpa'"):
        ak.attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), scale=1.0, path="flash")


def test_chunked_becomes_sdpa_while_tracing(monkeypatch):
    n = math.isqrt(ak.AUTO_CHUNKED_MIN_SCORES - 1) + 1
    monkeypatch.setattr(ak, "_tracing", lambda: True)
    assert ak.select_path(n, n) == "sdpa" and ak.select_path(8, 8, "chunked") == "sdpa"
    assert ak.select_path(8, 8) == "matmul" and ak.qk_width(n, n, 32, 256) == 256


def _run_path(path, q, k, v, scale, grad_out):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = ak.attention(q, k, v, scale=scale, path=path)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 3, 5, 16, 40])  # 16 rows: a single block; 40 > N
@pytest.mark.parametrize("dk,dv,scale", [(4, 12, 1.0), (6, 6, 0.37), (10, 3, 2.0)])
def test_chunked_matches_matmul_outputs_and_gradients(dtype, rows, dk, dv, scale, blocks_of):
    # N = 16 queries, M = 11 keys: blocks of 3 or 5 rows do not divide N (last block 1 row)
    blocks_of(rows, 2, 11)
    g = torch.Generator().manual_seed(rows + dk)
    q, k, v = (torch.randn(2, n, d, generator=g, dtype=dtype) for n, d in ((16, dk), (11, dk), (11, dv)))
    q = q * 2  # sharp rows: the softmax is far from uniform
    grad_out = torch.randn(2, 16, dv, generator=g, dtype=dtype)
    ref = _run_path("matmul", q, k, v, scale, grad_out)
    got = _run_path("chunked", q, k, v, scale, grad_out)
    assert got[0].dtype == dtype
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0].double(), naive_attention(q, k, v, scale), rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("dq", "dk", "dv"), got[1:], ref[1:], strict=True):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < 1e-4, (name, rel)


def test_chunked_gradients_match_equation_float64(blocks_of):
    # against autograd through the float64 equation, not only against the matmul path
    blocks_of(3, 1, 6)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n, d in ((7, 3), (6, 3), (6, 4)))
    w = torch.randn(1, 7, 4, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ak.attention(q, k, v, scale=0.8, path="chunked") * w).sum(), (q, k, v))
    ref = torch.autograd.grad((naive_attention(q, k, v, 0.8) * w).sum(), (q, k, v))
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [2, 7])
def test_chunked_gradcheck_float64(rows, blocks_of):
    blocks_of(rows, 2, 4)  # N = 5 queries: blocks of 2, 2, 1 or one block
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n, d in ((5, 2), (4, 2), (4, 3)))
    fn = lambda a, b, c: ak.attention(a, b, c, scale=0.6, path="chunked")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    # the backward is not itself differentiable: a second derivative must fail loudly
    (gq,) = torch.autograd.grad(fn(q, k, v).sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        gq.sum().backward()


def test_chunked_without_grad_and_with_partial_grad(blocks_of):
    blocks_of(3, 2, 9)
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, n, d, generator=g) for n, d in ((10, 4), (9, 4), (9, 7)))
    with torch.no_grad():
        out = ak.attention(q, k, v, scale=0.5, path="chunked")
    assert not out.requires_grad
    torch.testing.assert_close(out, ak.attention(q, k, v, scale=0.5, path="matmul"), rtol=0, atol=1e-5)
    # only v needs a gradient (q, k frozen); non-contiguous inputs
    vv = v.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    ak.attention(q, k, vv, scale=0.5, path="chunked").sum().backward()
    v2 = v.clone().requires_grad_(True)
    ak.attention(q, k, v2, scale=0.5, path="matmul").sum().backward()
    torch.testing.assert_close(vv.grad, v2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_module_with_chunked_path_traces_and_exports(blocks_of):
    # while tracing/exporting, "chunked" runs as "sdpa": one op, no Python loop in the graph
    blocks_of(5, 2, 36)
    torch.manual_seed(0)
    m = randomize(create_attention("pam", 32, path="chunked"), scale=0.2).eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        eager = m(x)
        traced = torch.jit.trace(m, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-5)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["pam", "pam_gate", "nonlocal", "sagan", "danet"])
def test_module_paths_agree_outputs_and_gradients(name, monkeypatch):
    # 24 x 20 positions: the paths run at a size where the kernels really differ;
    # chunked blocks of 7 query rows (480 or the pooled 120 keys: blocks do not divide)
    monkeypatch.setattr(ak, "CHUNK_ELEMENTS", 7 * 2 * 480)
    monkeypatch.setattr(ak, "CHUNK_PER_OUTPUT", 0)
    torch.manual_seed(0)
    # eval mode: in train mode the non-local block's BN cancels its g and output
    # biases, whose true gradient is then 0 (only rounding noise to compare)
    ref = randomize(create_attention(name, 32), scale=0.2).eval()
    x = torch.randn(2, 32, 24, 20)
    results = {}
    for path in ("matmul", "chunked", "sdpa"):
        m = create_attention(name, 32, path=path).eval()
        m.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        grads["input"] = xi.grad.clone()
        results[path] = (y.detach(), grads)
    y0, g0 = results["matmul"]
    for path in ("chunked", "sdpa"):
        y1, g1 = results[path]
        torch.testing.assert_close(y1, y0, rtol=0, atol=1e-5)
        for n in g0:
            rel = (g1[n] - g0[n]).norm() / g0[n].norm()
            assert rel < 1e-4, (path, n, rel.item())


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


def test_block_size_rule():
    # at least CHUNK_ELEMENTS scores per block, or as many as the output has elements
    b, n = 2, 4096
    assert ak._chunk_rows(b, n, n, 256) * b * n == max(ak.CHUNK_ELEMENTS, b * n * 256)
    assert ak._chunk_rows(b, n, n, 512) == 2 * ak._chunk_rows(b, n, n, 256) or ak.CHUNK_ELEMENTS > b * n * 512
    assert ak._chunk_rows(1, 4, 10**9, 1) == 1  # never 0 rows
