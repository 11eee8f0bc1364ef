"""The native CPU kernels and the modules' native paths.

Every module with a native path must equal its plain PyTorch path (run under
``fast.disabled()``): outputs, input and parameter gradients, BN running
statistics, in float64 (tight) and float32, for every supported number of
spatial dims, including max-pool ties and NaN inputs. The kernels are also
checked one by one against torch ops, and the fallbacks (tracing, dispatch
modes, channels-last, no compiler) are checked to really fall back.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import convattn
from convattn import fast
from convattn.fast import native, plans
from convattn.fast.gated import scatter_max_grad

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

#: (key, options, shapes): every module with a native path, each supported dims
CASES = [
    ("se", {}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("eca", {}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("cbam_channel", {"reduction": 4}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("cbam_spatial", {}, [(2, 16, 5, 6)]),
    ("cbam_spatial", {"dims": 1}, [(2, 16, 9)]),
    ("cbam_spatial", {"dims": 3}, [(2, 16, 3, 4, 2)]),
    ("cbam", {"reduction": 4}, [(2, 16, 5, 6)]),
    ("cbam", {"reduction": 4, "pool_order": "mean_max", "kernel_size": 3}, [(2, 16, 5, 6)]),
    ("cbam", {"reduction": 4, "dims": 1}, [(2, 16, 9)]),
    ("cbam", {"reduction": 4, "dims": 3}, [(2, 16, 3, 4, 2)]),
    ("sse", {}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("scse", {}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("scse", {"merge": "sum"}, [(2, 16, 5, 6)]),
    ("simam", {}, [(2, 16, 7), (2, 16, 5, 6), (2, 16, 3, 4, 2)]),
    ("coord", {}, [(2, 16, 5, 6)]),
    ("triplet", {}, [(2, 16, 5, 6)]),
    ("triplet", {"no_spatial": True, "kernel_size": 3}, [(2, 16, 5, 6)]),
]
PARAMS = [
    pytest.param(key, opts, shape, id=f"{key}-{'-'.join(f'{k}={v}' for k, v in opts.items())}-{len(shape) - 2}d")
    for key, opts, shapes in CASES
    for shape in shapes
]


def _module(key, opts, dtype, seed=0):
    torch.manual_seed(seed)
    m = convattn.create_attention(key, 16, **opts).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return m


def _run(m, x, g, plain: bool):
    params = list(m.parameters())
    if plain:
        with fast.disabled():
            y = m(x)
    else:
        y = m(x)
    grads = torch.autograd.grad(y, [x] + params, g, allow_unused=True) if x.requires_grad else None
    return y.detach(), grads


def _compare(key, opts, x, dtype, train, atol):
    fast = _module(key, opts, dtype).train(train)
    plain = copy.deepcopy(fast)
    g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    y1, g1 = _run(fast, x, g, plain=False)
    y0, g0 = _run(plain, x, g, plain=True)
    torch.testing.assert_close(y1, y0, atol=atol, rtol=atol, equal_nan=True)
    if g0 is not None:
        for a, b in zip(g1, g0, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, atol=atol * 10, rtol=atol * 10)
    for (n, b1), (_, b0) in zip(fast.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(b1, b0, atol=atol, rtol=atol, msg=f"buffer {n}")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("key, opts, shape", PARAMS)
def test_native_equals_plain_float64(key, opts, shape, train):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    _compare(key, opts, x, torch.float64, train, atol=1e-12)


@pytest.mark.parametrize("key, opts, shape", PARAMS)
def test_native_equals_plain_float32_no_grad(key, opts, shape):
    x = torch.randn(shape)
    with torch.no_grad():
        _compare(key, opts, x, torch.float32, train=False, atol=1e-5)


@pytest.mark.parametrize("key, opts, shape", PARAMS)
def test_native_float32_gradients(key, opts, shape):
    x = torch.randn(shape, requires_grad=True)
    _compare(key, opts, x, torch.float32, train=True, atol=1e-5)


@pytest.mark.parametrize("key, opts, shape", [p for p in PARAMS if len(p.values[2]) == 4])
def test_native_ties_split_like_amax(key, opts, shape):
    """ReLU'd and constant inputs tie the max pools: the gradient must still match amax's."""
    x = torch.relu(torch.randn(shape, dtype=torch.float64))
    x[0, :, :2] = 0.0  # whole rows/columns of equal values
    x[1] = 0.25  # a constant sample: every max ties
    _compare(key, opts, x.requires_grad_(), torch.float64, train=True, atol=1e-12)


@pytest.mark.parametrize("key, opts, shape", [p for p in PARAMS if len(p.values[2]) == 4])
def test_native_nan_propagates_like_plain(key, opts, shape):
    x = torch.randn(shape, dtype=torch.float64)
    x[0, 3, 1, 2] = float("nan")
    with torch.no_grad():
        _compare(key, opts, x, torch.float64, train=False, atol=1e-12)


GATE_EVAL_CASES = [
    ("se", {}),
    ("eca", {}),
    ("cbam_channel", {"reduction": 4}),
    ("cbam_spatial", {}),
    ("cbam", {"reduction": 4}),
    ("cbam", {"reduction": 4, "pool_order": "mean_max", "kernel_size": 5}),
    ("sse", {}),
    ("scse", {}),
    ("scse", {"merge": "sum"}),
    ("coord", {}),
    ("triplet", {}),
    ("triplet", {"no_spatial": True, "kernel_size": 3}),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch, size", [(1, (5, 6)), (3, (5, 6)), (5, (33, 40))], ids=["B1", "B3", "B5-S1320"])
@pytest.mark.parametrize("key, opts", GATE_EVAL_CASES, ids=[f"{k}-{len(o)}" for k, o in GATE_EVAL_CASES])
def test_whole_module_eval_kernel_equals_plain(key, opts, batch, size, threads, monkeypatch):
    """Eval in one kernel call (gate_eval, coord_eval): whole samples per thread, the samples
    left over stage by stage, positions in several chunks; float64, the plain path's values."""
    called = []
    kernel = {"coord": "coord_eval", "triplet": "triplet_eval"}.get(key, "gate_eval")
    real = plans.run
    monkeypatch.setattr(plans, "run", lambda plan, x, owner=None: called.append(plan.kernel) or real(plan, x, owner))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 16, *size, dtype=torch.float64)
        with torch.no_grad():
            _compare(key, opts, x, torch.float64, train=False, atol=1e-12)
    finally:
        torch.set_num_threads(before)
    assert called and set(called) == {kernel}, f"2-D eval without autograd runs in {kernel}: {called}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("key, opts", [*GATE_EVAL_CASES, ("simam", {})],
                         ids=[f"{k}-{len(o)}" for k, o in [*GATE_EVAL_CASES, ("simam", {})]])
def test_eval_kernels_write_over_their_input_with_the_same_values(key, opts, threads, dtype):
    """Under plans.overwriting (what attach's hook grants for a norm's fresh output) the
    whole-module eval kernels write Y into X itself: bit for bit the values they write
    into a new tensor. Widths around the vector length (coord's and triplet's rows
    store their last vector over lanes of the one before it), a batch with a sample
    left over for the stage-by-stage path, rows of SimAM's pipelined kernel."""
    m = _module(key, opts, dtype).eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch, size in [(3, (5, 6)), (2, (7, 13)), (3, (9, 17)), (2, (4, 8)), (1, (3, 3))]:
            x = torch.randn(batch, 16, *size, dtype=dtype)
            with torch.no_grad():
                ref = m(x)
                mine = x.clone()
                with plans.overwriting(m, mine):
                    y = m(mine)
                    xc = x.clone()
                    other = m(xc)  # another tensor than the one granted: a new Y
            assert y is mine, f"{key} {size}: Y must be written into X under overwriting"
            assert other is not xc and torch.equal(xc, x) and torch.equal(other, ref)
            torch.testing.assert_close(y, ref, rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_product_writes_the_same_values(dtype):
    """gate_eval writes Y with streaming stores when X and Y exceed the last-level cache.
    With the threshold at 1 byte every call streams: the values are those of the regular
    stores (within an ulp: the order of the product), for every product mode (scSE's max merge keeps regular stores),
    rows that start off a 64-byte line (S = 30) and whole-line rows, and a leftover sample."""
    lib = native.load()
    assert native.llc_bytes() is None or native.llc_bytes() >= 1 << 16
    for key, opts in [("se", {}), ("cbam", {"reduction": 4}), ("scse", {"merge": "sum"}), ("scse", {}),
                      ("cbam_spatial", {}), ("sse", {})]:
        m = _module(key, opts, dtype).eval()
        for size in [(5, 6), (8, 8), (9, 17)]:
            x = torch.randn(3, 16, *size, dtype=dtype)
            with torch.no_grad():
                ref = m(x)
                lib.convattn_set_stream_min_bytes(1)
                try:
                    y = m(x)
                finally:
                    lib.convattn_set_stream_min_bytes(native.llc_bytes() or 0)
            # the same products, up to the order of (x a) q, which the compiler may choose
            torch.testing.assert_close(y, ref, rtol=2.5e-7 if dtype == torch.float32 else 0, atol=0,
                                       msg=f"{key} {opts} {size}")


@pytest.mark.parametrize("key", ["se", "cbam", "scse", "simam", "coord", "triplet"])
def test_native_gradcheck(key):
    m = _module(key, {"reduction": 4} if key == "cbam" else {}, torch.float64).train()
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64, requires_grad=True)
    if key in ("cbam", "triplet"):  # BN in training mode mixes the batch: check in eval
        m.eval()
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), eps=1e-6, atol=1e-6)


class _PassThrough(TorchDispatchMode):
    """A dispatch mode that only counts ops (as FlopCounterMode or fake tensors would see them)."""

    seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen += 1
        return func(*args, **(kwargs or {}))


class _Calls:
    """Counts calls into the kernel library."""

    def __init__(self, monkeypatch):
        self.n = 0
        for owner, name in (
            *[(native, n) for n in ("pool_spatial", "pool_channel", "scale", "simam_forward", "coord_pool",
                                    "triplet_pool")],
            (plans, "run"),
        ):
            fn = getattr(owner, name)

            def wrapped(*a, _fn=fn, **k):
                self.n += 1
                return _fn(*a, **k)

            monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("key", ["se", "eca", "cbam", "scse", "simam", "coord", "triplet"])
def test_native_path_is_taken_and_skipped_where_it_must_be(key, monkeypatch):
    calls = _Calls(monkeypatch)
    m = convattn.create_attention(key, 16).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        ref = m(x)
    assert calls.n > 0, "contiguous float32 CPU input must take the native path"
    calls.n = 0
    with torch.no_grad():
        with fast.disabled():
            m(x)
        cl = m(x.to(memory_format=torch.channels_last))
        with _PassThrough() as mode:
            m(x)
        traced = torch.jit.trace(m, x, check_trace=False)
    assert calls.n == 0, "channels-last, disabled(), dispatch modes and tracing must use standard ops"
    assert mode.seen > 0
    torch.testing.assert_close(cl, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traced(x), ref, atol=1e-5, rtol=1e-5)
    with convattn.capture_maps(m) as maps:
        with torch.no_grad():
            m(x)
    assert calls.n == 0 and len(maps) > 0, "map captures use the plain path, which records"


def test_kernels_against_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 7)
    x[0, 1, 2, :3] = 5.0  # a tie in a spatial max
    B, C = 3, 5
    mean, mx, idx, cnt = native.pool_spatial(x, True, True)
    torch.testing.assert_close(mean, x.mean((2, 3)))
    torch.testing.assert_close(mx, x.amax((2, 3)))
    flat = x.reshape(B, C, -1)
    assert torch.equal(flat.gather(2, idx.unsqueeze(-1)).squeeze(-1), mx)
    assert torch.equal(cnt, (flat == mx.unsqueeze(-1)).sum(-1).to(torch.int32))
    assert cnt[0, 1] == 3
    g = torch.rand(B, C)
    u = x * g[:, :, None, None]
    pm, px, pidx, pcnt = native.pool_channel(x, g, True, True)
    torch.testing.assert_close(pm, u.mean(1).reshape(B, -1))
    torch.testing.assert_close(px, u.amax(1).reshape(B, -1))
    gs = torch.rand(B, 28)
    gsv = gs.view(B, 1, 4, 7)
    torch.testing.assert_close(native.scale(x, g, gs, 0), u * gsv)
    torch.testing.assert_close(native.scale(x, g, gs, 1), x * (g[:, :, None, None] + gsv))
    torch.testing.assert_close(native.scale(x, g, gs, 2), torch.maximum(u, x * gsv))
    dy = torch.randn_like(x)
    row, col = native.dots(dy, x, gs, g, 0)
    torch.testing.assert_close(row, (dy * x * gsv).sum((2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(col, (dy * x * g[:, :, None, None]).sum(1).reshape(B, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native.rowdot(x, gs), (x * gsv).sum((2, 3)), atol=1e-5, rtol=1e-5)
    u_, v_, rc, rs = torch.rand(B, C), torch.rand(B, 28), torch.rand(B, C), torch.rand(B, 28)
    ref = (
        dy * g[:, :, None, None] * gsv
        + u_[:, :, None, None] * v_.view(B, 1, 4, 7)
        + rc[:, :, None, None]
        + rs.view(B, 1, 4, 7)
    )
    torch.testing.assert_close(native.grad_input(dy, x, g, gs, 0, u_, v_, rc, rs), ref, atol=1e-5, rtol=1e-5)
    # the gate conv: conv2d + affine + sigmoid
    p = torch.randn(2, 2, 9, 5)
    w = torch.randn(1, 2, 7, 7)
    ref = torch.sigmoid(0.7 * torch.nn.functional.conv2d(p, w, padding=3) - 0.2).squeeze(1)
    torch.testing.assert_close(native.conv2d_gate(p[:, 0], p[:, 1], w, 0.7, -0.2), ref, atol=1e-5, rtol=1e-5)
    ref1 = torch.sigmoid(torch.nn.functional.conv2d(p[:, :1], w[:, :1], padding=3)).squeeze(1)
    torch.testing.assert_close(native.conv2d_gate(p[:, 0], None, w[:, :1], 1.0, 0.0), ref1, atol=1e-5, rtol=1e-5)
    # the vectorised exp of the float kernels: sigmoid accurate over the whole range
    z = torch.linspace(-120, 120, 24001).view(1, -1)
    torch.testing.assert_close(native.conv1d_sigmoid(z, torch.ones(1), None, 0), torch.sigmoid(z), atol=1e-7, rtol=2e-6)
    t = torch.linspace(-30, 30, 6001).view(1, 1, 1, -1)
    simam_y, _ = native.simam_forward(t, 1e-4)
    d = (t - t.mean()) ** 2
    ref = t * torch.sigmoid(d / (4 * (d.sum() / (t.numel() - 1) + 1e-4)) + 0.5)
    torch.testing.assert_close(simam_y, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_sigmoid_whole_range(dtype):
    """The kernels' sigmoid (AVX-512 table path in float where the CPU has it): against
    torch over [-200, 200] at every tail length, saturated ends, inf and NaN."""
    z = torch.cat((torch.linspace(-200, 200, 40001, dtype=dtype), torch.randn(37, dtype=dtype) * 10,
                   torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0], dtype=dtype)))
    for n in (1, 15, 16, 17, z.numel()):
        got = native.sigmoid_(z[:n].clone())
        torch.testing.assert_close(got, torch.sigmoid(z[:n]), rtol=4e-7, atol=1e-37, equal_nan=True)


@pytest.mark.parametrize("S", [2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 48, 196, 784])
def test_simam_rows_every_length_against_float64(S):
    """SimAM's float row kernel (the AVX-512 table path where the CPU has it, with a
    masked last vector) against the equation in float64: every tail length, wide
    dynamic range, outliers far below 2^-126 in the sigmoid's exp, inf and NaN.
    (S = 1 never reaches the kernel: the module handles it, see test_simam.py.)"""
    g = torch.Generator().manual_seed(S)
    x = torch.randn(6, 5, S, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 1.0]).view(1, 5, 1)
    x[1, 1, 0] = 500.0  # an outlier: a d^2 far beyond the exp's range for the rest of the row
    x[2, 2, -1] = float("nan")
    x[3, 3, S // 2] = float("inf")
    # a constant row far from 0 (its mean exact): d = 0, so y = x sigmoid(1/2); a kernel
    # forming d sqrt(a) as x sqrt(a) - mu sqrt(a) gets mu sqrt(a)'s rounding (~1e12) instead
    x[4, 0, :] = 11 * 2.0**57
    y, a = native.simam_forward(x, 1e-4, want_a=True)
    xd = x.double()
    mu = xd.mean(2, keepdim=True)
    d2 = (xd - mu) ** 2
    ad = 1 / (4 * (d2.sum(2, keepdim=True) / (S - 1) + 1e-4))
    ref = (xd * torch.sigmoid(ad * d2 + 0.5)).float()
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-30, equal_nan=True)
    assert torch.isnan(y[2, 2]).all() and torch.isnan(y[3, 3]).all()
    finite = torch.isfinite(ad.squeeze(2))
    torch.testing.assert_close(a[finite], ad.squeeze(2)[finite].float(), rtol=1e-5, atol=0)


def test_simam_statistics_when_the_row_starts_far_from_its_mean():
    """The float kernel's one-pass statistics sum about the mean of the row's first 16
    values; when those sit far from the row's mean, the subtraction would lose up to
    log2(S / 16) bits: the kernel must fall back to two passes and keep a exact to float."""
    g = torch.Generator().manual_seed(0)
    S = 112 * 112
    x = torch.randn(4, 1, S, generator=g)
    x[:, :, :16] += torch.tensor([1e3, 1e4, -3e3, 0.0]).view(4, 1, 1)  # the last row: no offset
    y, a = native.simam_forward(x, 1e-4, want_a=True)
    xd = x.double()
    mu = xd.mean(2, keepdim=True)
    d2 = (xd - mu) ** 2
    ad = 1 / (4 * (d2.sum(2, keepdim=True) / (S - 1) + 1e-4))
    torch.testing.assert_close(a, ad.squeeze(2).float(), rtol=2e-6, atol=0)
    torch.testing.assert_close(y, (xd * torch.sigmoid(ad * d2 + 0.5)).float(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("W", [3, 4, 7, 8, 12, 28, 56, 130])
def test_short_row_pools_every_width(W, dtype):
    """coord_pool and triplet_pool take explicit vectors with a masked tail for most
    widths, plain loops for very short or long rows: all agree with torch, inf and NaN included."""
    torch.manual_seed(W)
    x = torch.randn(2, 3, 5, W, dtype=dtype)
    x[0, 1, 2, W - 1] = float("inf")  # in the masked tail's lanes for most W
    x[1, 2, 3, 0] = float("nan")
    x[1, 0, :, W // 2] = -float("inf")
    z = native.coord_pool(x)
    torch.testing.assert_close(z, torch.cat((x.mean(3), x.mean(2)), 2), equal_nan=True)
    mh, ah, mw, aw = native.triplet_pool(x)[:4]
    torch.testing.assert_close(mh, x.amax(2), equal_nan=True)
    torch.testing.assert_close(ah, x.mean(2), equal_nan=True)
    torch.testing.assert_close(mw, x.amax(3), equal_nan=True)
    torch.testing.assert_close(aw, x.mean(3), equal_nan=True)


@pytest.mark.parametrize("inputs, k, size", [(2, 7, (6, 9)), (1, 3, (5, 4)), (2, 5, (30, 7)), (2, 1, (3, 3))])
def test_conv_1out_equals_conv2d_values_and_gradients(inputs, k, size):
    """The native one-output-channel conv (CBAM's and triplet's gates) and its backward
    against F.conv2d, float64, with a gradcheck."""
    from convattn.fast.gated import conv_1out

    torch.manual_seed(k)
    z = torch.randn(3, inputs, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, inputs, k, k, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 1, *size, dtype=torch.float64)
    y = conv_1out(z, w)
    assert y is not None and "ConvPlanes" in type(y.grad_fn.next_functions[0][0]).__name__
    ref = torch.nn.functional.conv2d(z, w, padding=k // 2)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    d = torch.autograd.grad(y, (z, w), g)
    d_ref = torch.autograd.grad(ref, (z, w), g)
    for a, b in zip(d, d_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    small = (z[:1, :, :4, :5].detach().clone().requires_grad_(), w)
    assert torch.autograd.gradcheck(lambda a, b: conv_1out(a, b), small)
    # a transposed (non-contiguous) input and float32 work too; other shapes decline
    zt = z.detach().float().transpose(2, 3)
    torch.testing.assert_close(
        conv_1out(zt, w.detach().float()), torch.nn.functional.conv2d(zt, w.detach().float(), padding=k // 2),
        atol=1e-5, rtol=1e-5,
    )
    assert conv_1out(z.detach()[:, :1].expand(3, 3, *size), w.detach()) is None  # three inputs


def _first_max_and_ties(u: torch.Tensor, dim: int):
    """Reference (max, first arg-max, number of arg-maxes) along ``dim``; a NaN max's
    arg-maxes are the NaNs (as torch.amax propagates them)."""
    mx = u.amax(dim, keepdim=True)
    hit = (u == mx) | (u.isnan() & mx.isnan())
    pos = torch.arange(u.shape[dim]).view([-1 if d == dim % u.dim() else 1 for d in range(u.dim())])
    first = torch.where(hit, pos, u.shape[dim]).amin(dim)
    return mx.squeeze(dim), first, hit.sum(dim).to(torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pool_arg_maxes_and_ties_against_torch(dtype):
    """The max pools' first arg-max and tie count (the training backward splits the
    gradient over them) against torch: ties (ReLU zeros, constant rows, equal
    channels), a max at the last position, NaN rows and columns, -0.0 next to 0.0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 7, 9, generator=g, dtype=dtype)
    x[:, :20] = x[:, :20].relu() - 1.0  # rows whose max (0 - 1) often ties
    x[0, 0] = 0.0
    x[0, 1, -1, -1] = 100.0
    x[0, 2] = -0.0
    x[0, 2, 3, 3] = 0.0
    x[1, 3, 2, 4] = float("nan")
    x[2, :, 0, 0] = 7.0
    x[2, 5, 1, 1] = float("nan")
    x[2, :, 6, 8] = -x[2, :, 6, 8].abs() - 1
    x[2, 39, 6, 8] = 50.0  # a channel max in the last channel
    B, C = x.shape[:2]
    _, mx, idx, cnt = native.pool_spatial(x, True, True)
    rm, rf, rc = _first_max_and_ties(x.flatten(2), 2)
    torch.testing.assert_close(mx, rm, equal_nan=True)
    assert torch.equal(idx, rf) and torch.equal(cnt, rc)
    gate = torch.rand(B, C, generator=g, dtype=dtype) + 0.5
    gate[0, :4] = 1.0
    for gt in (None, gate):
        _, mx, idx, cnt = native.pool_channel(x, gt, True, True)
        u = x.flatten(2) if gt is None else x.flatten(2) * gt.unsqueeze(-1)
        rm, rf, rc = _first_max_and_ties(u, 1)
        torch.testing.assert_close(mx, rm, equal_nan=True)
        assert torch.equal(idx, rf) and torch.equal(cnt, rc)


def test_scatter_max_grad_splits_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    mx, idx, cnt = x.amax(1), x.argmax(1), (x == x.amax(1, keepdim=True)).sum(1).to(torch.int32)
    dx = torch.zeros_like(x)
    scatter_max_grad(dx, x, mx, idx, cnt, torch.tensor([1.0, 2.0]), 1)
    xr = x.clone().requires_grad_()
    (xr.amax(1) * torch.tensor([1.0, 2.0])).sum().backward()
    torch.testing.assert_close(dx, xr.grad)


def test_threads_do_not_change_results():
    m = convattn.create_attention("cbam", 32).eval()
    x = torch.randn(3, 32, 9, 11)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            a = m(x)
        torch.set_num_threads(2)
        with torch.no_grad():
            b = m(x)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(a, b)


_CHILD = """
import warnings, torch, convattn
from convattn.fast import native
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    m = convattn.create_attention("cbam", 16).eval()
    x = torch.randn(2, 16, 6, 6)
    y = m(x)
    with convattn.fast.disabled():
        ref = m(x)
print(native.status())
print(sum("native CPU kernels unavailable" in str(i.message) for i in w))
print(torch.allclose(y, ref, atol=1e-6))
"""


def _child(env_extra, tmp_path):
    env = {**os.environ, "CONVATTN_CACHE_DIR": str(tmp_path / "cache"), **env_extra}
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_no_compiler_falls_back_with_one_warning(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    status_words = _child({"PATH": str(empty), "CC": ""}, tmp_path)
    assert status_words[0] == "off"
    assert "compiler" in " ".join(status_words)
    assert status_words[-2:] == ["1", "True"]


def test_env_switch_disables(tmp_path):
    out = _child({"CONVATTN_NATIVE": "0"}, tmp_path)
    assert out[0] == "off" and out[-2:] == ["0", "True"]


def test_fresh_cache_builds_and_runs(tmp_path):
    out = _child({}, tmp_path)
    assert out[0] == "on" and out[-2:] == ["0", "True"]
    assert list((tmp_path / "cache" / "native").glob("*/gates.so"))


def test_double_backward_needs_disabled():
    m = convattn.create_attention("se", 16)
    x = torch.randn(2, 16, 4, 4, requires_grad=True)

    def penalty():
        (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()

    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        penalty()
    with fast.disabled():
        penalty()
    assert x.grad is not None and torch.isfinite(x.grad).all()
