"""DANet PAM / CAM / DANet: the equations written out, identity at init, maps, options."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

import convattn
from convattn import create_attention
from convattn.layers import attention_kernel as ak


def pam_reference(x, wq, bq, wk, wv, bv, gamma):
    # Q = Wq X + bq, K = Wk X, V = Wv X + bv ; s_ij = exp(q_i.k_j) / sum_j' exp(q_i.k_j')
    # out_i = sum_j s_ij v_j ; Y = gamma * out + X
    B, C = x.shape[:2]
    X = x.reshape(B, C, -1)
    Q = torch.einsum("oc,bcn->bon", wq, X) + bq[:, None]
    K = torch.einsum("oc,bcn->bon", wk, X)
    V = torch.einsum("oc,bcn->bon", wv, X) + bv[:, None]
    e = torch.exp(torch.einsum("bdi,bdj->bij", Q, K))
    S = e / e.sum(-1, keepdim=True)
    out = torch.einsum("bcj,bij->bci", V, S)
    return (gamma * out + X).reshape(x.shape), S


def cam_reference(x, beta, energy="official"):
    B, C = x.shape[:2]
    X = x.reshape(B, C, -1)
    E = torch.einsum("bcn,bdn->bcd", X, X)
    if energy == "official":
        E = E.max(-1, keepdim=True).values - E
    A = torch.exp(E - E.max(-1, keepdim=True).values)
    A = A / A.sum(-1, keepdim=True)
    return (beta * torch.einsum("bcd,bdn->bcn", A, X) + X).reshape(x.shape), A


def _pam_args(m):
    return (
        m.query_conv.weight[..., 0], m.query_conv.bias, m.key_conv.weight[..., 0],
        m.value_conv.weight[..., 0], m.value_conv.bias, m.gamma,
    )


@pytest.mark.parametrize("shape", [(2, 16, 9), (2, 16, 4, 5), (2, 16, 3, 2, 4)])
@pytest.mark.parametrize("path", ["matmul", "chunked", "sdpa"])
def test_pam_matches_equation(shape, path, monkeypatch):
    monkeypatch.setattr(ak, "CHUNK_ELEMENTS", 2 * 5 * 24)  # chunked: blocks of at most 5 query positions
    monkeypatch.setattr(ak, "CHUNK_PER_OUTPUT", 0)
    m = randomize(create_attention("pam", 16, path=path), scale=0.3).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref, _ = pam_reference(x, *_pam_args(m))
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)
    # the term without the residual (used by danet before this change; kept as API)
    torch.testing.assert_close(m.position_term(x), ref - x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("energy", ["official", "paper"])
@pytest.mark.parametrize("shape", [(2, 8, 7), (2, 8, 3, 3), (1, 8, 2, 2, 2)])
def test_cam_matches_equation(energy, shape):
    m = randomize(create_attention("cam", 8, energy=energy)).double()
    x = torch.randn(shape, dtype=torch.float64) * 0.3
    ref, _ = cam_reference(x, m.beta, energy)
    torch.testing.assert_close(m(x), ref, rtol=1e-10, atol=1e-10)


def test_cam_official_and_paper_differ():
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64) * 0.5
    a = randomize(create_attention("cam", 8, energy="official")).double()
    b = randomize(create_attention("cam", 8, energy="paper")).double()
    assert (a(x) - b(x)).abs().max() > 1e-3


def test_danet_is_pam_plus_cam_with_one_residual():
    m = randomize(create_attention("danet", 16), scale=0.3).double()
    x = torch.randn(2, 16, 5, 4, dtype=torch.float64) * 0.5
    p, _ = pam_reference(x, *_pam_args(m.pam))
    c, _ = cam_reference(x, m.cam.beta)
    torch.testing.assert_close(m(x), p + c - x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x), m.pam(x) + m.cam(x) - x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["pam", "cam", "danet"])
def test_identity_at_init(name):
    torch.manual_seed(0)
    m = create_attention(name, 32).train()
    x = torch.randn(2, 32, 6, 7)
    torch.testing.assert_close(m(x), x, rtol=0, atol=0)


def test_pam_gradcheck_all_paths(monkeypatch):
    monkeypatch.setattr(ak, "CHUNK_ELEMENTS", 4 * 9)  # chunked: blocks of 4, 4, 1 query positions
    monkeypatch.setattr(ak, "CHUNK_PER_OUTPUT", 0)
    for path in ("matmul", "chunked", "sdpa"):
        m = randomize(create_attention("pam", 16, path=path), scale=0.3).double()
        x = torch.randn(1, 16, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_maps_spatial_query_row_and_channel_matrix():
    m = randomize(create_attention("danet", 16), scale=0.3).double()
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64) * 0.5
    with convattn.capture_maps(m, query=(2, 3)) as maps:
        m(x)
    _, S = pam_reference(x, *_pam_args(m.pam))
    _, A = cam_reference(x, m.cam.beta)
    pam_maps = maps["pam"]
    assert set(pam_maps) == {"spatial", "query_row"}  # never the N x N matrix
    torch.testing.assert_close(pam_maps["spatial"], S.mean(1).reshape(2, 4, 5))
    torch.testing.assert_close(pam_maps["spatial"].sum((1, 2)), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(pam_maps["query_row"], S[:, 2 * 5 + 3].reshape(2, 4, 5))
    torch.testing.assert_close(maps["cam"]["channel_matrix"], A)
    with convattn.capture_maps(m) as maps:
        m(x)
    assert "query_row" not in maps["pam"]


def test_bad_options():
    with pytest.raises(ValueError, match="energy must be one of"):
        create_attention("cam", 16, energy="max")
    with pytest.raises(ValueError, match="path must be one of"):
        create_attention("pam", 16, path="flash")
    with pytest.raises(ValueError, match="reduction=8 leaves 0 hidden channels for channels=4"):
        create_attention("pam", 4)
    m = create_attention("pam", 16)
    with pytest.raises(ValueError, match="query"):
        with convattn.capture_maps(m, query=(9, 9)):
            m(torch.randn(1, 16, 3, 3))


def test_pam_param_count_matches_official():
    # DANet PAM at C=512: q (512*64 + 64), k (512*64, key bias dropped: a softmax no-op), v (512*512 + 512), gamma
    m = create_attention("pam", 512)
    assert sum(p.numel() for p in m.parameters()) == 512 * 64 + 64 + 512 * 64 + 512 * 512 + 512 + 1


@pytest.mark.parametrize("name", ["pam", "danet"])
def test_maps_keep_the_graph_with_detach_false(name):
    # the maps are computed from their own Q, K tokens on the channel-layout paths:
    # with detach=False they must still carry gradients to the query/key convs
    m = randomize(create_attention(name, 16), scale=0.3)
    pam = m if name == "pam" else m.pam
    x = torch.randn(1, 16, 3, 4)
    with convattn.capture_maps(m, detach=False) as maps:
        m(x)
    spatial = maps["PAM" if name == "pam" else "pam"]["spatial"]
    (spatial * torch.arange(12.0).view(1, 3, 4)).sum().backward()
    assert pam.query_conv.weight.grad is not None and pam.query_conv.weight.grad.abs().sum() > 0
    assert pam.key_conv.weight.grad.abs().sum() > 0
