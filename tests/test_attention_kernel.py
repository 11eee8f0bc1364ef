"""The shared attention kernel: paths agree, explicit scale, padding, the chunked path, chunked maps, and
the channel-layout position attention of pam/danet/pam_gate (both paths, gradients, second derivatives, dtypes)."""

from __future__ import annotations

import functools
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
    monkeypatch.setattr(ak, "recording_graph", lambda: True)
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


# --- position attention in channel layout (pam, danet, pam_gate) ---------------------------


def naive_position(flat, weight, bias, d, residual=True):
    # [Q; K; V] = W X + b ; s_ij = exp(q_i.k_j) / sum_j' exp(q_i.k_j') ; out_ci = sum_j v_cj s_ij
    flat, weight, bias = flat.double(), weight.double(), bias.double()
    proj = torch.einsum("oc,bcn->bon", weight, flat) + bias[:, None]
    q, k, v = proj[:, :d], proj[:, d : 2 * d], proj[:, 2 * d :]
    e = torch.exp(torch.einsum("bdi,bdj->bij", q, k))
    out = torch.einsum("bcj,bij->bci", v, e / e.sum(-1, keepdim=True))
    return flat + out if residual else out


def _position_inputs(b, c, n, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(b, c, n, generator=g, dtype=dtype)
    weight = torch.randn(2 * d + c, c, generator=g, dtype=dtype) * 0.4
    bias = torch.randn(2 * d + c, generator=g, dtype=dtype) * 0.4
    return flat, weight, bias


def _run_position(path, flat, weight, bias, d, grad_out, residual=True):
    flat, weight, bias = (t.detach().clone().requires_grad_(True) for t in (flat, weight, bias))
    out = ak.position_attention_channels(flat, weight, bias, d, path=path, residual=residual)
    out.backward(grad_out)
    return out.detach(), flat.grad, weight.grad, bias.grad


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("rows", [1, 4, 7, 40])  # N = 13: blocks that do not divide N, one block, rows > N
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_position_channels_paths_match_equation_and_gradients(rows, residual, dtype, blocks_of):
    b, c, n, d = 2, 10, 13, 3
    blocks_of(rows, b, n)
    flat, weight, bias = _position_inputs(b, c, n, d, dtype, seed=rows)
    ref = naive_position(flat, weight, bias, d, residual)
    g = torch.Generator().manual_seed(9)
    grad_out = torch.randn(b, c, n, generator=g, dtype=dtype)
    leaves = [t.double().requires_grad_(True) for t in (flat, weight, bias)]
    ref_grads = torch.autograd.grad((naive_position(*leaves, d, residual) * grad_out.double()).sum(), leaves)
    for path in ("matmul", "chunked"):
        out, *grads = _run_position(path, flat, weight, bias, d, grad_out, residual)
        assert out.dtype == dtype and out.shape == (b, c, n)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        for name, a, r in zip(("dx", "dw", "db"), grads, ref_grads, strict=True):
            rel = ((a.double() - r).norm() / r.norm()).item()
            assert rel < 1e-5, (path, name, rel)


def test_position_channels_gradcheck_float64(blocks_of):
    b, c, n, d = 2, 4, 5, 2
    blocks_of(2, b, n)  # blocks of 2, 2, 1 query positions
    flat, weight, bias = (t.requires_grad_(True) for t in _position_inputs(b, c, n, d, torch.float64, seed=3))
    for path in ("matmul", "chunked"):
        for residual in (True, False):
            fn = functools.partial(ak.position_attention_channels, d=d, path=path, residual=residual)
            assert torch.autograd.gradcheck(fn, (flat, weight, bias))


def test_position_channels_second_derivatives_float64(blocks_of):
    # create_graph=True: the backward runs through differentiable ops (both paths)
    b, c, n, d = 1, 4, 5, 2
    blocks_of(2, b, n)
    flat, weight, bias = (t.requires_grad_(True) for t in _position_inputs(b, c, n, d, torch.float64, seed=11))
    for path in ("matmul", "chunked"):
        fn = functools.partial(ak.position_attention_channels, d=d, path=path)
        assert torch.autograd.gradgradcheck(fn, (flat, weight, bias))
        # only the input needs a gradient (frozen weights): a gradient penalty on dX
        x = flat.detach().clone().requires_grad_(True)
        w0, b0 = weight.detach(), bias.detach()
        (gx,) = torch.autograd.grad(fn(x, w0, b0).square().sum(), (x,), create_graph=True)
        (hx,) = torch.autograd.grad(gx.square().sum(), (x,))
        xr = flat.detach().clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(naive_position(xr, w0, b0, d).square().sum(), (xr,), create_graph=True)
        (hr,) = torch.autograd.grad(gr.square().sum(), (xr,))
        torch.testing.assert_close(hx, hr, rtol=1e-9, atol=1e-9)


def test_position_channels_gradient_layouts_and_partial_grads(blocks_of):
    # an expanded gradient (from .sum()) is copied and reused for dX; a contiguous
    # gradient given by the caller must not be modified; only some inputs needing grads
    b, c, n, d = 2, 6, 9, 2
    blocks_of(4, b, n)
    flat, weight, bias = _position_inputs(b, c, n, d, seed=4)
    leaves = [t.double().requires_grad_(True) for t in (flat, weight, bias)]
    ref = torch.autograd.grad(naive_position(*leaves, d).sum(), leaves)
    for path in ("matmul", "chunked"):
        x, w, bb = (t.clone().requires_grad_(True) for t in (flat, weight, bias))
        ak.position_attention_channels(x, w, bb, d, path=path).sum().backward()
        for a, r in zip((x.grad, w.grad, bb.grad), ref, strict=True):
            torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5)
        grad_out = torch.randn(b, c, n)
        kept = grad_out.clone()
        x = flat.clone().requires_grad_(True)
        ak.position_attention_channels(x, weight, bias, d, path=path).backward(grad_out)
        torch.testing.assert_close(grad_out, kept, rtol=0, atol=0)
        assert x.grad is not grad_out
        # only the weight needs a gradient (frozen input, e.g. the first layer)
        w = weight.clone().requires_grad_(True)
        ak.position_attention_channels(flat, w, bias, d, path=path).sum().backward()
        torch.testing.assert_close(w.grad.double(), ref[1], rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            out = ak.position_attention_channels(flat, w, bias, d, path=path)
        assert not out.requires_grad
        torch.testing.assert_close(out.double(), naive_position(flat, weight, bias, d), rtol=1e-5, atol=1e-5)


def test_position_channels_strided_input(blocks_of):
    # X viewed from a channels_last feature map: (B, C, N) with channel stride 1
    b, c, d = 2, 8, 2
    blocks_of(5, b, 12)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, c, 3, 4, generator=g).contiguous(memory_format=torch.channels_last)
    flat = x.flatten(2)
    assert not flat.is_contiguous()
    _, weight, bias = _position_inputs(b, c, 12, d, seed=7)
    for path in ("matmul", "chunked"):
        xi = flat.detach().requires_grad_(True)
        out = ak.position_attention_channels(xi, weight, bias, d, path=path)
        torch.testing.assert_close(out.double(), naive_position(flat, weight, bias, d), rtol=1e-5, atol=1e-5)
        out.sum().backward()
        xr = flat.double().requires_grad_(True)
        naive_position(xr, weight, bias, d).sum().backward()
        torch.testing.assert_close(xi.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)


def test_position_channels_saves_no_score_matrix_on_chunked_path(blocks_of):
    # the chunked path keeps nothing of size N x N for the backward; the matmul path does
    b, c, n, d = 1, 8, 40, 2
    blocks_of(8, b, n)
    flat, weight, bias = (t.requires_grad_(True) for t in _position_inputs(b, c, n, d, seed=8))
    saved = {}
    for path in ("matmul", "chunked"):
        sizes = saved[path] = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ak.position_attention_channels(flat, weight, bias, d, path=path).sum().backward()
    assert b * n * n in saved["matmul"]
    assert max(saved["chunked"]) < b * n * n


def test_position_channels_bad_arguments():
    flat, weight, bias = _position_inputs(1, 8, 5, 2)
    with pytest.raises(ValueError, match="path must be 'matmul' or 'chunked'"):
        ak.position_attention_channels(flat, weight, bias, 2, path="sdpa")
    with pytest.raises(ValueError, match=r"expected weight \(12, 8\)"):
        ak.position_attention_channels(flat, weight[:-1], bias, 2, path="matmul")


def test_position_channels_bfloat16_and_autocast(blocks_of):
    # bfloat16 inputs run in bfloat16; under CPU autocast the products run in bfloat16
    # (one dtype inside the kernel) and the residual is added in X's float32
    b, c, n, d = 2, 8, 11, 2
    blocks_of(4, b, n)
    flat, weight, bias = _position_inputs(b, c, n, d, seed=10)
    ref = naive_position(flat, weight, bias, d)
    for path in ("matmul", "chunked"):
        xb = flat.bfloat16().requires_grad_(True)
        out = ak.position_attention_channels(xb, weight.bfloat16(), bias.bfloat16(), d, path=path)
        assert out.dtype == torch.bfloat16
        out.sum().backward()
        assert xb.grad.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.1)
        x, w = flat.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ak.position_attention_channels(x, w, bias, d, path=path)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.1)
        out.sum().backward()
        assert x.grad.dtype == w.grad.dtype == torch.float32 and w.grad.abs().sum() > 0
