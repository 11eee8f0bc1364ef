"""DCT-II bases and FcaNet's frequency tables (used by ``attention/fca.py``).

The orthonormal 1D DCT-II basis of length ``n`` at frequency ``u``::

    b_u(t) = cos(pi * u * (t + 1/2) / n) / sqrt(n)      (u = 0)
    b_u(t) = cos(pi * u * (t + 1/2) / n) * sqrt(2 / n)  (u > 0),   t = 0..n-1

and a multi-dimensional basis is the outer product of one 1D basis per spatial
dim. These are the filters of FcaNet's official ``MultiSpectralDCTLayer``
(``build_filter``): with them, frequency (0, 0) pools ``sum_hw x / sqrt(HW)``,
i.e. ``GAP(x) * sqrt(HW)``.
"""

from __future__ import annotations

import math

import torch

# FcaNet's frequency rankings on a 7x7 grid, as listed in the official code
# (cfzd/FcaNet, model/layer.py, ``get_freq_indices``): index i of each list is the
# i-th (u, v) pair, u along the height and v along the width. "top" is ordered by
# the single-frequency ImageNet accuracy of the paper's Figure 4, "low" by
# increasing frequency (zig-zag), "bot" from the worst single frequency.
_FREQ_TABLES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "top": (
        (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2, 4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1),
        (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2, 6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3),
    ),
    "low": (
        (0, 0, 1, 1, 0, 2, 2, 1, 2, 0, 3, 4, 0, 1, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4),
        (0, 1, 0, 1, 2, 0, 1, 2, 2, 3, 0, 0, 4, 3, 1, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3, 2, 1, 0, 6, 5, 4, 3),
    ),
    "bot": (
        (6, 1, 3, 3, 2, 4, 1, 2, 4, 4, 5, 1, 4, 6, 2, 5, 6, 1, 6, 2, 2, 4, 3, 3, 5, 5, 6, 2, 5, 5, 3, 6),
        (6, 4, 4, 6, 6, 3, 1, 4, 4, 5, 6, 5, 2, 2, 5, 1, 4, 3, 5, 0, 3, 1, 1, 2, 4, 2, 1, 1, 5, 3, 3, 3),
    ),
}

#: the grid the frequency tables are defined on
FREQ_GRID = 7


def fca_frequencies(method: str) -> list[tuple[int, int]]:
    """The (u, v) pairs of FcaNet's ``freq_sel_method`` on the 7x7 grid.

    ``method`` is ``"top<n>"``, ``"low<n>"`` or ``"bot<n>"`` with 1 <= n <= 32
    (the official code accepts n in 1, 2, 4, 8, 16, 32; the lists are the same).
    """
    kind, num = (method[:3], method[3:]) if isinstance(method, str) else ("", "")
    if kind not in _FREQ_TABLES or not num.isdigit() or not 1 <= int(num) <= 32:
        raise ValueError(
            f"freq_sel must be 'top<n>', 'low<n>' or 'bot<n>' with 1 <= n <= 32 "
            f"(e.g. 'top16', 'low16', 'top1'), got {method!r}"
        )
    xs, ys = _FREQ_TABLES[kind]
    n = int(num)
    return list(zip(xs[:n], ys[:n], strict=True))


def dct_basis_1d(n: int, u: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II basis vector of length ``n`` at frequency ``u`` (0 <= u < n)."""
    if not 0 <= u < n:
        raise ValueError(f"DCT frequency must be in [0, {n}), got {u}")
    t = torch.arange(n, dtype=torch.float64)
    b = torch.cos(math.pi * u * (t + 0.5) / n) / math.sqrt(n)
    if u > 0:
        b = b * math.sqrt(2.0)
    return b.to(dtype)


def dct_basis_nd(size: tuple[int, ...], freq: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Outer product of 1D DCT-II bases: shape ``size``, frequency ``freq`` per dim."""
    if len(size) != len(freq):
        raise ValueError(f"size {size} and frequency {freq} must have the same length")
    out = torch.ones((), dtype=torch.float64)
    for n, u in zip(size, freq, strict=True):
        out = out[..., None] * dct_basis_1d(n, u)
    return out.to(dtype)


def scale_frequency(u: int, n: int, grid: int = FREQ_GRID) -> int:
    """Map a frequency index on the ``grid``-point grid to an ``n``-point axis.

    For ``n >= grid`` this is the official ``u * (n // grid)`` (FcaNet scales
    (1, 1) on 7x7 to (2, 2) on 14x14). For ``n < grid`` the official factor is 0,
    which would send every frequency to DC; we keep ``u`` and clamp it to
    ``n - 1`` instead (our fallback, not the paper's).
    """
    return min(u * max(n // grid, 1), n - 1)


def dct_axis_traceable(n, freqs: torch.Tensor, dtype: torch.dtype = torch.float64, device=None,
                       grid: int = FREQ_GRID) -> torch.Tensor:
    """1D DCT-II filters of length ``n`` for grid frequencies ``freqs`` (F,): shape (F, n).

    Row f is ``dct_basis_1d(n, scale_frequency(freqs[f], n, grid))``, computed with
    tensor ops only: ``n`` may be an int, a ``torch.SymInt`` (torch.export, dynamo)
    or the 0-dim tensor ``x.shape`` gives under ``torch.jit.trace``. Positions, n,
    the frequency scaling ``min(u * max(n // grid, 1), n - 1)`` and the
    normalisation are all tensors derived from ``torch.arange(n)``, so a traced
    graph computes them for the size it is run at.
    """
    t = torch.arange(n, dtype=dtype, device=device)  # (n,)
    nt = torch.ones_like(t).sum()  # n as a 0-dim tensor of the graph
    u = freqs.to(dtype=dtype, device=device)
    u = torch.minimum(u * torch.clamp(torch.floor(nt / grid), min=1.0), nt - 1)  # (F,)
    norm = torch.sqrt(torch.where(u > 0, torch.full_like(u, 2.0), torch.ones_like(u)) / nt)
    return torch.cos(math.pi * u[:, None] * (t + 0.5) / nt) * norm[:, None]


def adaptive_pool_matrix(n, m: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The (m, n) matrix of a 1D adaptive average pool from n to m points, with tensor ops.

    Row i averages positions ``[floor(i n / m), ceil((i + 1) n / m))``, the windows
    of ``F.adaptive_avg_pool1d``; ``n`` may be symbolic as in :func:`dct_axis_traceable`.
    """
    j = torch.arange(n, device=device)  # (n,) long
    nt = torch.ones_like(j).sum()
    i = torch.arange(m, device=device)
    start = torch.div(i * nt, m, rounding_mode="floor")
    end = torch.div((i + 1) * nt + (m - 1), m, rounding_mode="floor")
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


def dct_filters_traceable(
    sizes, freqs: torch.Tensor, dtype: torch.dtype = torch.float64, device=None, grid: int = FREQ_GRID,
    pooled_to: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Flattened nD DCT-II filters built with tensor ops only: shape ``(F, prod(sizes))``.

    ``freqs`` is an integer tensor (F, len(sizes)) of grid frequencies, one row per
    filter, one column per spatial dim; ``sizes`` may be symbolic (see
    :func:`dct_axis_traceable`). Row f equals
    ``dct_basis_nd(sizes, [scale_frequency(u, n) for u, n in zip(freqs[f], sizes)]).reshape(-1)``.

    With ``pooled_to=(m_1, ...)`` the filters are those of "adaptive-average-pool
    to ``pooled_to``, then the DCT of that size": per dim ``b_m @ P`` with ``P``
    from :func:`adaptive_pool_matrix` (both steps are linear and separable).
    """
    # under torch.jit.trace shapes are tensors: skip the (constant) check there, it would warn
    if len(sizes) == 0 or freqs.dim() != 2 or (not torch.jit.is_tracing() and freqs.shape[1] != len(sizes)):
        raise ValueError(
            f"freqs must have shape (F, {len(sizes)}) for {len(sizes)} spatial sizes (at least 1), "
            f"got {tuple(freqs.shape)}"
        )
    if pooled_to is not None and len(pooled_to) != len(sizes):
        raise ValueError(f"pooled_to {pooled_to} and sizes must have the same length ({len(sizes)})")
    per_dim = []
    for d, n in enumerate(sizes):
        if pooled_to is None:
            per_dim.append(dct_axis_traceable(n, freqs[:, d], dtype, device, grid))  # (F, n)
        else:
            b = dct_axis_traceable(pooled_to[d], freqs[:, d], dtype, device, grid)  # (F, m)
            per_dim.append(b @ adaptive_pool_matrix(n, pooled_to[d], dtype, device))  # (F, n)
    out = per_dim[0]
    for b in per_dim[1:]:  # outer product per filter, row-major as dct_basis_nd(...).reshape(-1)
        out = (out[:, :, None] * b[:, None, :]).flatten(1)
    return out
