"""The softmax-attention kernel shared by the position self-attention modules.

``attention(q, k, v, scale=..., path=...)`` computes, for q (B, N, d_k),
k (B, M, d_k) and v (B, M, d_v)::

    out = softmax_rows(scale * q k^T) v            (B, N, d_v)

and is used by ``pam``, ``danet``, ``nonlocal``, ``sagan`` and ``pam_gate``.
Three paths compute the same thing:

- ``"matmul"``: two batched matmuls and a softmax; it holds the (B, N, M)
  score matrix (and autograd keeps it for the backward pass). Fastest at small N.
- ``"chunked"``: the same matmuls over blocks of query rows of one sample at a
  time, each block's scores (at most ``CHUNK_ELEMENTS`` of them, a few MiB) made,
  used and overwritten by the next (the blocks reuse the same buffers). A
  ``torch.autograd.Function`` saves only q, k and v; its backward recomputes each
  block's softmax from q and k (a width-d_k product, cheap) and accumulates dq,
  dk, dv block by block with the softmax-attention backward::

      P = softmax(scale q k^T),  dP = dO v^T,  dS = P * (dP - rowsum(P * dP))
      dq = scale dS k,  dk = scale dS^T q,  dv = P^T dO

  Memory is linear in N, and q, k keep their own width (no padding).
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``. On CPU its
  memory-efficient (flash) kernel, which never materialises the N x M matrix, is
  only taken when q, k and v have the same last dimension; the narrower of
  (q, k) and v is therefore zero-padded to the wider width (zeros change neither
  the dot products nor the output, and the padded output columns are dropped).
  The padding makes q k^T up to 8x more work than needed (d_k = C/8 padded to C);
  kept as an option.
- ``"auto"`` (default): ``"matmul"`` while the score matrix is small
  (``N * M < AUTO_CHUNKED_MIN_SCORES``), ``"chunked"`` above. While tracing,
  scripting or compiling (``torch.jit.trace``, ``torch.export``, ``torch.compile``)
  ``"chunked"`` is replaced by ``"sdpa"``, which those tools handle as one op
  and which also avoids the N x M matrix.

``position_attention_channels(x, weight, bias, d, path=...)`` is DANet's position
attention (``pam``, ``danet``, ``pam_gate``) on X (B, C, N) in X's own layout: the
three 1x1 projections [Q; K; V] as one product, the scores softmaxed in place, and
``X + V S^T`` as one product whose initial value is X (no (B, N, C) tokens, no
transposed copies, no separate residual add). Its ``"matmul"`` path keeps the
(B, N, N) softmax for the backward, its ``"chunked"`` path works on blocks of
query positions as above; both use a ``torch.autograd.Function`` that writes the
gradients of Q, K and V into one tensor.

The scale is always passed explicitly: SDPA would otherwise apply
``1/sqrt(d)`` of the *padded* width, which none of the papers here do with that
width (DANet and SAGAN use no scaling at all: ``scale=1.0``).

``attention_received`` and ``attention_row`` compute the attention maps recorded
by :func:`convattn.capture_maps` without holding the N x M matrix: the column
mean of the softmax rows is accumulated over chunks of query rows. They run only
when a capture is active.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .ops import recording_graph

PATHS = ("auto", "matmul", "chunked", "sdpa")

#: ``"auto"`` switches from the plain matmul to the chunked path at this many scores
#: per sample (N * M = 2^23, 32 MiB of float32 scores per sample: above 48 x 48
#: positions attending to 48 x 48). Below it the single matmul is as fast on CPU and
#: its memory is modest. The rule depends on N and M only (not B), so a sample takes
#: the same path in any batch.
AUTO_CHUNKED_MIN_SCORES = 1 << 23
#: former name, kept for callers written against the SDPA-only version
AUTO_SDPA_MIN_SCORES = AUTO_CHUNKED_MIN_SCORES

#: scores (B x rows x M) the chunked path holds per block, at least (2^21 = 8 MiB of
#: float32): large enough that a block is a few big batched matmuls rather than many
#: small ones (each op is a synchronisation point of the intra-op threads)
CHUNK_ELEMENTS = 1 << 21
#: ... or up to this many times the output's size (B x N x d_v), if larger: the
#: block then costs no more memory than the output (and q, k, v) already do, and
#: wide values (d_v = 512) get fewer, larger blocks. 0 disables the rule.
CHUNK_PER_OUTPUT = 1

#: number of score elements (B * rows * M) held at once by the chunked map helpers
MAP_CHUNK_ELEMENTS = 1 << 22


def check_path(owner: str, path: str) -> str:
    """Validate a ``path`` option and return it."""
    if path not in PATHS:
        raise ValueError(f"{owner}: path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    return path


def check_scale(owner: str, scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{owner}: scale must be a positive finite number, got {scale!r}")
    return float(scale)


def select_path(n_queries: int, n_keys: int, path: str = "auto") -> str:
    """The path ``attention`` takes for ``n_queries`` x ``n_keys`` scores.

    ``"chunked"`` (asked for, or chosen by ``"auto"``) becomes ``"sdpa"`` while
    tracing or compiling: the Python loop of the chunked path would be unrolled
    into the graph, and its autograd.Function is not traceable by ``torch.jit.trace``.
    """
    if path == "auto":
        path = "chunked" if n_queries * n_keys >= AUTO_CHUNKED_MIN_SCORES else "matmul"
    if path == "chunked" and recording_graph():
        return "sdpa"
    return path


def attention_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` with the full score matrix (the naive path)."""
    scores = torch.bmm(q, k.transpose(1, 2))
    if scale != 1.0:
        scores = scores * scale
    return torch.bmm(torch.softmax(scores, dim=-1), v)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` through SDPA, padding widths to be equal."""
    dk, dv = q.shape[-1], v.shape[-1]
    width = max(dk, dv)
    if dk < width:
        q = F.pad(q, (0, width - dk))
        k = F.pad(k, (0, width - dk))
    if dv < width:
        v = F.pad(v, (0, width - dv))
    # a head dimension of 1: (B, 1, L, E), the layout the CPU kernels expect
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=scale)
    out = out.squeeze(1)
    return out[..., :dv] if dv < width else out


def _chunk_rows(batch: int, n_queries: int, n_keys: int, d_v: int) -> int:
    """Query rows per block of the chunked path (see ``CHUNK_ELEMENTS``)."""
    elements = max(CHUNK_ELEMENTS, CHUNK_PER_OUTPUT * batch * n_queries * d_v)
    return max(1, elements // max(1, batch * n_keys))


class _Blocks:
    """Reusable contiguous buffers for the blocks of the chunked path.

    Every block writes its scores, probabilities and products into the same
    buffers (the last, shorter block into a contiguous prefix of them), so the
    loop allocates nothing: repeated multi-MiB allocations and frees make the C
    allocator keep freed blocks resident, which costs more memory than the blocks.
    """

    def __init__(self, like: torch.Tensor, batch: int, rows: int, widths: dict[str, int]) -> None:
        self.batch = batch
        self.flat = {name: like.new_empty(batch * rows * w) for name, w in widths.items()}
        self.widths = widths

    def __call__(self, name: str, rows: int) -> torch.Tensor:
        w = self.widths[name]
        return self.flat[name][: self.batch * rows * w].view(self.batch, rows, w)


def _softmax_(scores: torch.Tensor) -> torch.Tensor:
    """Row softmax in place, through the out= form of the softmax kernel.

    torch.softmax has no in-place or out= form; the kernel reads each row (its
    max, then exp(x - max) and the sum) before it writes that row, so the output
    may alias the input. tests/test_attention_kernel.py checks the result.
    """
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


def _chunked_forward(q, k, v, scale):
    """Output (B, N, d_v) block by block; no autograd graph is built."""
    B, N, _ = q.shape
    M, dv = k.shape[1], v.shape[-1]
    out = q.new_empty(B, N, dv)
    rows = min(N, _chunk_rows(B, N, M, dv))
    buf = _Blocks(q, B, rows, {"s": M, "o": dv})
    qs = q * scale if scale != 1.0 else q  # (B, N, d_k): cheaper than scaling each block's scores
    kt = k.transpose(1, 2)
    for start in range(0, N, rows):
        r = min(rows, N - start)
        p = _softmax_(torch.bmm(qs[:, start : start + r], kt, out=buf("s", r)))
        # bmm into a contiguous block then copy: bmm with a strided out= slice is slow
        out[:, start : start + r] = torch.bmm(p, v, out=buf("o", r))
    return out


class _ChunkedAttention(torch.autograd.Function):
    """softmax(scale q k^T) v over blocks of query rows, recomputing the blocks in backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        out = _chunked_forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        scale = ctx.scale
        grad_out = grad_out.contiguous()
        B, N, width = q.shape
        M = k.shape[1]
        rows = min(N, _chunk_rows(B, N, M, v.shape[-1]))
        buf = _Blocks(q, B, rows, {"p": M, "ds": M, "q": width})
        qs = q * scale if scale != 1.0 else q
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        dq = torch.empty_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        for start in range(0, N, rows):
            r = min(rows, N - start)
            qb, gb = qs[:, start : start + r], grad_out[:, start : start + r]
            p = _softmax_(torch.bmm(qb, kt, out=buf("p", r)))
            dv.baddbmm_(p.transpose(1, 2), gb)
            dp = torch.bmm(gb, vt, out=buf("ds", r))
            # dS = P * (dP - rowsum(P * dP)), the softmax backward, in place of dP
            # (the kernel finishes a row's rowsum before it writes that row)
            ds = torch.ops.aten._softmax_backward_data.out(dp, p, -1, p.dtype, grad_input=dp)
            dq[:, start : start + r] = torch.bmm(ds, k, out=buf("q", r))
            dk.baddbmm_(ds.transpose(1, 2), qb)  # scale dS^T q = dS^T (scale q)
        if scale != 1.0:
            dq.mul_(scale)
        return dq, dk, dv, None


def attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` over blocks of query rows (linear memory, also in backward)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _ChunkedAttention.apply(q, k, v, scale)
    return _chunked_forward(q, k, v, scale)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, path: str = "auto"
) -> torch.Tensor:
    """``softmax_rows(scale * q k^T) v`` for q (B, N, d_k), k (B, M, d_k), v (B, M, d_v).

    ``scale`` is required (no implicit ``1/sqrt(d)``); ``path`` is ``"auto"``,
    ``"matmul"``, ``"chunked"`` or ``"sdpa"`` (see the module docstring). Returns (B, N, d_v).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention: expected 3-d q, k, v; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[1] != v.shape[1] or not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    chosen = select_path(q.shape[1], k.shape[1], check_path("attention", path))
    if chosen == "sdpa":
        return attention_sdpa(q, k, v, scale)
    if chosen == "chunked":
        return attention_chunked(q, k, v, scale)
    return attention_matmul(q, k, v, scale)


# --- position attention in channel layout (pam, danet, pam_gate) ---------------------------


def _position_forward(flat, weight, bias, d, rows, residual, keep_scores):
    """``[X +] V softmax(Q^T K)^T`` in (B, C, N); returns (out, proj, scores or None).

    ``proj`` = [Q; K; V] = weight X + bias, (B, 2d + C, N): one product for the
    three projections. ``rows`` >= N: one block, the full (B, N, N) softmax made in
    place in its score buffer (kept for the backward if ``keep_scores``); else
    blocks of ``rows`` query positions, each written into the output's columns.
    """
    B, C, N = flat.shape
    proj = torch.baddbmm(bias.view(1, -1, 1).expand(B, -1, N), weight.expand(B, -1, -1), flat)
    qt, k, v = proj[:, :d].transpose(1, 2), proj[:, d : 2 * d], proj[:, 2 * d :]
    if rows >= N:
        s = _softmax_(torch.bmm(qt, k))
        # out = X + V S^T in one product: the residual is the product's initial value
        out = torch.baddbmm(flat, v, s.transpose(1, 2)) if residual else torch.bmm(v, s.transpose(1, 2))
        return out, proj, (s if keep_scores else None)
    out = flat.new_empty(B, C, N)
    buf = _Blocks(flat, B, rows, {"s": N})
    for start in range(0, N, rows):
        r = min(rows, N - start)
        p = _softmax_(torch.bmm(qt[:, start : start + r], k, out=buf("s", r)))
        # straight into the output's columns (B, C, r): each sample's block is a
        # row-major matrix with leading dimension N, which the product writes in place
        cols = out[:, :, start : start + r]
        if residual:
            torch.baddbmm(flat[:, :, start : start + r], v, p.transpose(1, 2), out=cols)
        else:
            torch.bmm(v, p.transpose(1, 2), out=cols)
    return out, proj, None


def _position_plain(flat, weight, bias, d, residual):
    """The matmul path in plain differentiable ops (the same kernels): for tracing and compiling."""
    B, C, N = flat.shape
    proj = torch.baddbmm(bias.view(1, -1, 1).expand(B, -1, N), weight.expand(B, -1, -1), flat)
    s = torch.softmax(torch.bmm(proj[:, :d].transpose(1, 2), proj[:, d : 2 * d]), dim=-1)
    v = proj[:, 2 * d :]
    return torch.baddbmm(flat, v, s.transpose(1, 2)) if residual else torch.bmm(v, s.transpose(1, 2))


def _plain_backward(ctx, flat, weight, bias, grad):
    """Gradients of the plain-op forward, themselves differentiable (``create_graph=True``)."""
    inputs = [t for t, need in zip((flat, weight, bias), ctx.needs_input_grad[:3], strict=True) if need]
    with torch.enable_grad():
        out = _position_plain(flat, weight, bias, ctx.d, ctx.residual)
        grads = iter(torch.autograd.grad(out, inputs, grad, create_graph=True))
    return tuple(next(grads) if need else None for need in ctx.needs_input_grad[:3]) + (None,) * 4


class _ChannelPositionAttention(torch.autograd.Function):
    """``[X +] V softmax(Q^T K)^T`` with [Q; K; V] = weight X + bias, in channel layout.

    Saves X, the weight and the projections (and, on the matmul path, the
    softmax); the chunked path recomputes each block's softmax in the backward.
    Backward, with G the output gradient (B, C, N) and P the softmax (B, N, N)::

        dV = G P,  dP = G^T V,  dE = P * (dP - rowsum(P * dP))
        dQ = K dE^T,  dK = Q dE,  dW = sum_b d[Q; K; V] X^T,  dX = [G +] W^T d[Q; K; V]

    dQ, dK and dV are written straight into one (B, 2d + C, N) tensor, so dX is
    one product; no transposed copy is made.
    """

    @staticmethod
    def forward(ctx, flat, weight, bias, d, rows, residual, keep_scores):
        out, proj, s = _position_forward(flat, weight, bias, d, rows, residual, keep_scores)
        ctx.save_for_backward(flat, weight, bias, proj, s)
        ctx.d, ctx.rows, ctx.residual = d, rows, residual
        return out

    @staticmethod
    def backward(ctx, grad):
        flat, weight, bias, proj, s = ctx.saved_tensors
        d, rows = ctx.d, ctx.rows
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, a Hessian-vector product): a
            # differentiable backward through the plain ops (the (B, N, N) matrix again)
            return _plain_backward(ctx, flat, weight, bias, grad)
        B, C, N = flat.shape
        # a gradient we copy (e.g. the expanded one of a .sum()) is ours to reuse for dX
        own = not grad.is_contiguous()
        g = grad.contiguous()
        q, k, v = proj[:, :d], proj[:, d : 2 * d], proj[:, 2 * d :]
        qt = q.transpose(1, 2)
        dproj = torch.empty_like(proj)
        dq, dk, dv = dproj[:, :d], dproj[:, d : 2 * d], dproj[:, 2 * d :]
        if s is not None:  # the matmul path: one block, the saved softmax
            torch.bmm(g, s, out=dv)
            ds = torch.bmm(g.transpose(1, 2), v)
            # dE = P * (dP - rowsum(P * dP)) in place of dP (the kernel finishes a
            # row's rowsum before it writes that row)
            ds = torch.ops.aten._softmax_backward_data.out(ds, s, -1, s.dtype, grad_input=ds)
            torch.bmm(k, ds.transpose(1, 2), out=dq)
            torch.bmm(q, ds, out=dk)
            del ds
        else:
            dv.zero_()
            # dQ and dK as tokens (B, N, 2d), moved into dproj after the loop: the
            # narrow block products are faster with this output layout (measured:
            # ~1.4 ms of ~25 per block at C=256, N=4096), for 2 B N d more floats
            dqk = flat.new_zeros(B, N, 2 * d)
            kt = k.transpose(1, 2)
            buf = _Blocks(flat, B, rows, {"p": N, "ds": N})
            for start in range(0, N, rows):
                r = min(rows, N - start)
                gb = g[:, :, start : start + r]
                p = _softmax_(torch.bmm(qt[:, start : start + r], k, out=buf("p", r)))
                dv.baddbmm_(gb, p)
                ds = torch.bmm(gb.transpose(1, 2), v, out=buf("ds", r))
                ds = torch.ops.aten._softmax_backward_data.out(ds, p, -1, p.dtype, grad_input=ds)
                torch.bmm(ds, kt, out=dqk[:, start : start + r, :d])
                dqk[:, :, d:].baddbmm_(ds.transpose(1, 2), qt[:, start : start + r])
            del buf, p, ds, gb  # the block buffers go before dX is made
            dproj[:, : 2 * d] = dqk.transpose(1, 2)
            del dqk
        grad_flat = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(dproj[0], flat[0].t())
            for i in range(1, B):
                grad_weight.addmm_(dproj[i], flat[i].t())
        if ctx.needs_input_grad[2]:
            grad_bias = dproj.sum((0, 2))
        if ctx.needs_input_grad[0]:
            wt = weight.t().expand(B, -1, -1)
            if not ctx.residual:
                grad_flat = torch.bmm(wt, dproj)
            elif own:
                grad_flat = g.baddbmm_(wt, dproj)
            else:
                grad_flat = torch.baddbmm(g, wt, dproj)
        return grad_flat, grad_weight, grad_bias, None, None, None, None


def position_attention_channels(
    flat: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    d: int,
    *,
    path: str,
    residual: bool = True,
) -> torch.Tensor:
    """DANet-style position attention on X (B, C, N) in channel layout, (B, C, N).

    ``weight`` (2d + C, C) and ``bias`` (2d + C,) stack the query, key and value
    projections: [Q; K; V] = weight X + bias, Q and K of width ``d``, V of width C.
    Returns ``X + V softmax_rows(Q^T K)^T`` (``residual=False``: without X); any
    output scale (DANet's gamma) is folded into V's rows of ``weight`` and ``bias``
    by the caller. No scaling of the scores.

    Computed in the layout of X: V S^T is one product whose initial value is X (the
    residual add is fused; no (B, N, C) tokens and no transposed copies), the
    softmax is made in place, and a ``torch.autograd.Function`` writes the
    gradients of Q, K and V into one tensor. ``path`` is ``"matmul"`` (the full
    (B, N, N) softmax, kept for the backward) or ``"chunked"`` (blocks of query
    positions as in :func:`attention_chunked`, recomputed in the backward: linear
    memory). A backward with ``create_graph=True`` (second derivatives) runs
    through plain differentiable ops instead and holds the (B, N, N) matrix.

    While tracing, scripting or compiling, either path runs the matmul path's
    products as plain differentiable ops (the same kernels, so a traced module
    gives the eager module's values): the block loop and the autograd.Function are
    not traceable. A caller that needs linear memory in a traced graph uses
    :func:`attention` with ``"sdpa"`` there, as ``pam`` does (see :func:`select_path`).
    """
    if path not in ("matmul", "chunked"):
        raise ValueError(f"position_attention_channels: path must be 'matmul' or 'chunked', got {path!r}")
    B, C, N = flat.shape
    if weight.shape != (2 * d + C, C) or bias.shape != (2 * d + C,):
        raise ValueError(
            f"position_attention_channels: expected weight ({2 * d + C}, {C}) and bias ({2 * d + C},), "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if recording_graph():
        return _position_plain(flat, weight, bias, d, residual)
    dev = flat.device.type
    if torch.is_autocast_enabled(dev):
        low = torch.get_autocast_dtype(dev)
        if flat.dtype not in (torch.float64, low):
            # as autocast runs the products: in its lower precision (the kernels here
            # need one dtype), with the residual added in X's own precision
            with torch.autocast(dev, enabled=False):
                term = position_attention_channels(
                    flat.to(low), weight.to(low), bias.to(low), d, path=path, residual=False
                )
            return flat + term if residual else term
    rows = N if path == "matmul" else min(N, _chunk_rows(B, N, N, C))
    keep = path == "matmul"
    if torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad or bias.requires_grad):
        return _ChannelPositionAttention.apply(flat, weight, bias, d, rows, residual, keep)
    return _position_forward(flat, weight, bias, d, rows, residual, False)[0]


def _row_chunk(batch: int, n_keys: int) -> int:
    return max(1, MAP_CHUNK_ELEMENTS // max(1, batch * n_keys))


def attention_received(q: torch.Tensor, k: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Mean attention each key receives: ``(1/N) sum_i softmax(scale q k^T)_ij``, (B, M).

    The column mean of the row-stochastic matrix (it sums to 1 over keys),
    accumulated over chunks of query rows so that at most
    ``MAP_CHUNK_ELEMENTS`` scores exist at once.
    """
    B, N, _ = q.shape
    step = _row_chunk(B, k.shape[1])
    kt = k.transpose(1, 2)
    total = None
    for start in range(0, N, step):
        s = torch.softmax(torch.bmm(q[:, start : start + step], kt) * scale, dim=-1).sum(1)
        total = s if total is None else total + s
    return total / N


def attention_row(q: torch.Tensor, k: torch.Tensor, index: int, *, scale: float) -> torch.Tensor:
    """The attention row of query ``index`` (a flat position), (B, M)."""
    return torch.softmax(torch.bmm(q[:, index : index + 1], k.transpose(1, 2)) * scale, dim=-1)[:, 0]


def flat_query_index(owner: str, query: object, spatial: tuple[int, ...]) -> int:
    """A query position given as a flat index or a coordinate tuple -> flat index."""
    n = math.prod(spatial)
    if isinstance(query, bool):
        raise ValueError(f"{owner}: query must be a flat index or a tuple of {len(spatial)} coordinates, got {query!r}")
    if isinstance(query, int):
        idx = query
    elif isinstance(query, (tuple, list)) and len(query) == len(spatial) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in query
    ):
        if any(not 0 <= c < s for c, s in zip(query, spatial, strict=True)):
            raise ValueError(f"{owner}: query {tuple(query)} is outside the spatial size {spatial}")
        idx = 0
        for c, s in zip(query, spatial, strict=True):
            idx = idx * s + c
    else:
        raise ValueError(
            f"{owner}: query must be a flat index or a tuple of {len(spatial)} coordinates, got {query!r}"
        )
    if not 0 <= idx < n:
        raise ValueError(f"{owner}: query index {idx} is outside 0..{n - 1} for spatial size {spatial}")
    return idx


def spread_to_grid(values: torch.Tensor, key_spatial: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    """Spread per-key values (B, M) of a 2-per-dim pooled grid over the input grid.

    Each pooled cell's value is divided evenly among the input positions it
    covers (cells at an odd border cover fewer), so a distribution over pooled
    keys stays a distribution over input positions. Returns (B, *spatial).
    """
    B = values.shape[0]
    out = values.reshape((B,) + tuple(key_spatial))
    if tuple(key_spatial) == tuple(spatial):
        return out
    for d, (n_in, n_key) in enumerate(zip(spatial, key_spatial, strict=True)):
        counts = torch.full((n_key,), 2, dtype=values.dtype, device=values.device)
        counts[-1] = n_in - 2 * (n_key - 1)
        shape = [1] * (len(spatial) + 1)
        shape[d + 1] = n_key
        out = (out / counts.view(shape)).repeat_interleave(2, dim=d + 1).narrow(d + 1, 0, n_in)
    return out


def record_position_maps(
    module,
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float,
    spatial: tuple[int, ...],
    key_spatial: tuple[int, ...] | None = None,
) -> None:
    """Record "spatial" (and, on request, "query_row") for a position-attention module.

    Does nothing unless ``capture_maps`` is active on ``module``. "spatial" is
    the mean attention each position receives (B, *spatial); "query_row" is the
    attention row of the query given by ``capture_maps(model, query=...)`` (a flat
    index or a coordinate tuple), (B, *spatial). Keys on a pooled grid
    (``key_spatial``) are spread over the input grid with :func:`spread_to_grid`.
    """
    sink = module._map_sink
    if sink is None:
        return
    key_spatial = tuple(key_spatial or spatial)
    spatial = tuple(spatial)
    received = attention_received(q, k, scale=scale)
    module.record("spatial", spread_to_grid(received, key_spatial, spatial))
    query = sink.options.get("query")
    if query is not None:
        idx = flat_query_index(module._owner(), query, spatial)
        row = attention_row(q, k, idx, scale=scale)
        module.record("query_row", spread_to_grid(row, key_spatial, spatial))


def tokens_from(
    conv: torch.nn.Conv1d, flat: torch.Tensor, width: int | None = None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1x1 conv applied to (B, C, N), returned as tokens (B, N, C_out).

    Done with a per-sample batched matmul rather than the convolution kernel:
    oneDNN picks its algorithm by batch size, which makes a sample's result
    depend on the batch it is in (by ~1e-6, amplified by a sharp softmax);
    ``bmm`` computes each sample the same way in any batch. The bias is fused
    into the product (``baddbmm``), so no second (B, N, C_out) tensor is made.

    ``width`` > C_out zero-pads the output to that width by padding the weight
    (used to reach SDPA's flash kernel without a separate padded copy of q, k).
    ``scale`` (a scalar tensor) multiplies the weight and bias, i.e. the output,
    at the cost of a C_out x C_in product instead of a (B, N, C_out) one.
    """
    w = conv.weight.squeeze(-1)
    b = conv.bias
    if scale is not None:
        w = w * scale
        b = None if b is None else b * scale
    if width is not None and width > w.shape[0]:
        extra = width - w.shape[0]
        w = F.pad(w, (0, 0, 0, extra))
        b = None if b is None else F.pad(b, (0, extra))
    t = flat.transpose(1, 2)
    wt = w.t().expand(flat.shape[0], -1, -1)
    if b is None:
        return torch.bmm(t, wt)
    return torch.baddbmm(b.expand(flat.shape[0], flat.shape[2], -1), t, wt)


def qk_width(n_queries: int, n_keys: int, dk: int, dv: int, path: str = "auto") -> int:
    """Width to project q and k to: dv when SDPA will run and dk < dv (padding), else dk."""
    return dv if select_path(n_queries, n_keys, path) == "sdpa" and dk < dv else dk


def channels_from(conv: torch.nn.Conv1d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to tokens (B, N, C_in), returned as (B, C_out, N) (see :func:`tokens_from`)."""
    w = conv.weight.squeeze(-1).expand(tokens.shape[0], -1, -1)
    if conv.bias is None:
        return torch.bmm(w, tokens.transpose(1, 2))
    bias = conv.bias.unsqueeze(-1).expand(tokens.shape[0], -1, tokens.shape[1])
    return torch.baddbmm(bias, w, tokens.transpose(1, 2))
