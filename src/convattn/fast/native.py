"""Native CPU kernels for the gating modules: built on first use, called through ctypes.

The kernels (``csrc/gates.c``, plain C + OpenMP) fuse the passes a gate makes
over the full-size activation: pooling, gating, and the input gradient, one pass
each, on contiguous float32 / float64 CPU tensors. With autograd, everything small
(MLPs, convs on pooled maps, BatchNorm) stays in PyTorch, so autograd still
differentiates it; in eval without autograd a whole module is one kernel call
(:mod:`convattn.fast.plans`). Whether a module's call uses them is decided in one
place, :mod:`convattn.fast.select`.

Building: the first call compiles the source with the system C compiler
(``$CC``, else ``cc``/``gcc``/``clang``; about a second) into a per-machine cache
folder (``$CONVATTN_CACHE/native``, ``$CONVATTN_CACHE_DIR`` being an older name of
the same setting; else ``$XDG_CACHE_HOME/convattn`` or ``~/.cache/convattn``),
keyed by the source, the compiler and the CPU. A library is used only after its
checksum matches the one recorded when it was built and a self-test call gives
the known answer; a damaged cache entry is rebuilt (one warning). If no compiler
is found or the build fails, a warning is issued once and every module uses its
plain PyTorch forward (same results).

Every wrapper below takes contiguous tensors of the dtype it is called for; the
callers (the fast paths in this package) check shapes, dtypes and layouts before
calling.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
SOURCE = CSRC / "gates.c"
SOURCES = (SOURCE, CSRC / "gates.h", CSRC / "kernels.def", CSRC / "gates_impl.h", CSRC / "fused_impl.h")
FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    # vectorised sum reductions (partial sums in SIMD lanes); keeps NaN/inf semantics
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
)
if platform.machine().lower() in ("x86_64", "amd64"):
    # 256-bit vectors: the rows here are often short (7 to 56 values), where 512-bit
    # loops spend most of their time in scalar remainders (measured: 1.4x faster pools)
    FLAGS += ("-mprefer-vector-width=256",)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None

_SUFFIX = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


# ------------------------------------------------------------------ the interface
# Read from the C headers themselves (csrc/kernels.def, csrc/gates.h), which gates.c
# includes: a declaration that differs from its definition does not compile, and
# the Python side takes its types from the same lines.


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _ctype(decl: str, real: type | None) -> type | None:
    """The ctypes type of one C parameter or field declaration (``real`` for T)."""
    if "*" in decl:
        return ctypes.c_void_p
    words = decl.replace("const", " ").split()
    kind = words[0] if words else ""
    table = {"int64_t": ctypes.c_int64, "int": ctypes.c_int, "double": ctypes.c_double, "void": None}
    if kind == "T":
        return real
    if kind not in table:
        raise ValueError(f"csrc: unsupported C type in {decl.strip()!r}")
    return table[kind]


def kernel_declarations() -> dict[str, tuple[str, list[str]]]:
    """``{name: (return type, [parameter declarations])}`` from csrc/kernels.def."""
    out = {}
    for line in _strip_comments((CSRC / "kernels.def").read_text()).splitlines():
        m = re.fullmatch(r"\s*KERNEL\((\w+),\s*(\w+),\s*\((.*)\)\)\s*", line)
        if m:
            out[m.group(2)] = (m.group(1), [p.strip() for p in m.group(3).split(",")])
        elif line.strip():
            raise ValueError(f"csrc/kernels.def: cannot read {line.strip()!r}")
    return out


def _header() -> str:
    return _strip_comments((CSRC / "gates.h").read_text())


def header_enums() -> dict[str, int]:
    """Every enumerator of csrc/gates.h with its value."""
    values = {}
    for body in re.findall(r"enum\s+\w*\s*\{(.*?)\}", _header(), flags=re.S):
        for item in body.split(","):
            name, value = (t.strip() for t in item.split("="))
            values[name] = int(value)
    return values


def header_struct(name: str) -> list[tuple[str, type]]:
    """The fields of ``typedef struct {...} name;`` in csrc/gates.h as ctypes fields."""
    m = re.search(r"typedef\s+struct\s*\{(.*?)\}\s*" + name + r"\s*;", _header(), flags=re.S)
    if m is None:
        raise ValueError(f"csrc/gates.h: no struct {name}")
    fields = []
    for decl in filter(None, (d.strip() for d in m.group(1).split(";"))):
        first, *rest = (part.strip() for part in decl.split(","))
        words = first.replace("*", " * ").split()
        ctype = _ctype(first.rsplit(words[-1], 1)[0] + " x", None)
        fields.append((words[-1], ctype))
        for extra in rest:
            fields.append((extra.lstrip("*").strip(), ctype))
    return fields


class GateEvalArgs(ctypes.Structure):
    """``gate_eval_args`` of csrc/gates.h (read from the header)."""

    _fields_ = header_struct("gate_eval_args")


_ENUMS = header_enums()
GE_MLP, GE_MLP_MAX, GE_CONV1D = _ENUMS["GE_MLP"], _ENUMS["GE_MLP_MAX"], _ENUMS["GE_CONV1D"]
GE_SP_CONV, GE_SP_LINEAR = _ENUMS["GE_SP_CONV"], _ENUMS["GE_SP_LINEAR"]
#: how a product merges a channel and a spatial gate (``mode`` of the kernels)
PRODUCT, SUM, MAX = _ENUMS["GATE_PRODUCT"], _ENUMS["GATE_SUM"], _ENUMS["GATE_MAX"]


def cache_dir() -> Path:
    """Where built libraries are kept: ``<cache>/native`` of the cache folder."""
    root = os.environ.get("CONVATTN_CACHE") or os.environ.get("CONVATTN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "convattn"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _library_path(cc: str) -> Path:
    src = b"".join(p.read_bytes() for p in SOURCES)
    key = hashlib.sha256(
        src + " ".join(FLAGS).encode() + cc.encode() + _cpu_key().encode() + sys.platform.encode()
    ).hexdigest()[:16]
    return cache_dir() / "native" / key / "gates.so"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc: str, out: Path) -> None:
    """Compile into ``out`` and record its checksum beside it (``gates.so.sha256``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        digest = _digest(Path(tmp))
        os.replace(tmp, out)  # atomic: concurrent builders (test workers) never see half a file
        side = out.with_name(out.name + ".sha256")
        fd, tmp_side = tempfile.mkstemp(suffix=".sha256", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp_side, side)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _intact(path: Path) -> bool:
    """The library at ``path`` is the file that was built there (its recorded checksum)."""
    side = path.with_name(path.name + ".sha256")
    try:
        return side.read_text().strip() == _digest(path)
    except OSError:
        return False


def _bind(lib: ctypes.CDLL) -> None:
    """Type every kernel from csrc/kernels.def; raise AttributeError for a missing one."""
    lib.convattn_schunk.restype = ctypes.c_longlong
    lib.convattn_set_stream_min_bytes.argtypes = [ctypes.c_longlong]
    for name, (ret, params) in kernel_declarations().items():
        for suffix, real in _SUFFIX.values():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes = [_ctype(p, real) for p in params]
            fn.restype = _ctype(ret, real)


def _self_test(lib: ctypes.CDLL) -> None:
    """One small call with a known answer; RuntimeError if the library gets it wrong."""
    x = torch.tensor([[1.0, 4.0, 2.0, 1.0]])
    mean, mx = torch.empty(1), torch.empty(1)
    lib.pool_spatial_f32(x.data_ptr(), 1, 4, mean.data_ptr(), mx.data_ptr(), None, None, 1)
    if mean.item() != 2.0 or mx.item() != 4.0:
        raise RuntimeError("kernel library failed its self-test")


def _open(cc: str) -> ctypes.CDLL:
    path = _library_path(cc)
    if path.exists() and not _intact(path):
        warnings.warn(f"convattn: the cached kernel library {path} is damaged; rebuilding it", RuntimeWarning,
                      stacklevel=4)
        path.unlink()
    if not path.exists():
        _build(cc, path)
    lib = ctypes.CDLL(str(path))
    _bind(lib)
    _self_test(lib)
    lib.convattn_set_stream_min_bytes(llc_bytes() or 0)
    return lib


def load() -> ctypes.CDLL | None:
    """The kernel library, built and checked on the first call; None if it cannot be
    had (one warning says why; :func:`load_error` too)."""
    global _lib, _tried, _error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        cc = _compiler()
        if cc is None:
            _error = "no C compiler found (set CC)"
        else:
            try:
                _lib = _open(cc)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError, AttributeError,
                    ctypes.ArgumentError) as exc:
                _error = f"{type(exc).__name__}: {exc}"
        _tried = True
        if _lib is None:
            warnings.warn(
                f"convattn: native CPU kernels unavailable ({_error}); using the plain PyTorch forwards "
                "(same results, slower). Set CONVATTN_FAST=0 to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return _lib


def load_error() -> str | None:
    """Why :func:`load` found no library (None when it did or has not been called)."""
    return _error


def llc_bytes() -> int | None:
    """The largest data cache of CPU 0 in bytes (Linux sysfs), None if unknown. Eval
    kernels whose input and output together exceed it write the output with streaming
    stores (it would be evicted before the next layer reads it anyway)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            size = (d / "size").read_text().strip()
            n = int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
        except (OSError, ValueError):
            continue
        best = n if best is None else max(best, n)
    return best


def available() -> bool:
    """Whether the kernel library is built and loaded (builds it on the first call)."""
    return load() is not None


def status() -> str:
    """A one-line description for reports: 'on', 'off (reason)'."""
    from .select import enabled

    if not enabled():
        return "off (switched off: CONVATTN_FAST=0 or convattn.fast.use(False))"
    return "on" if load() is not None else f"off ({_error})"


def _fn(name: str, dtype: torch.dtype):
    return getattr(_lib, f"{name}_{_SUFFIX[dtype][0]}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(status: int, name: str) -> None:
    if status:
        raise MemoryError(f"convattn native kernel {name}: could not allocate its workspace")


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _small(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A small operand as a contiguous tensor of ``dtype`` (no copy when it already is)."""
    if t is None:
        return None
    if t.dtype is dtype and t.is_contiguous():
        return t  # (only the data pointer is used: no detach needed)
    return t.detach().to(dtype).contiguous()


# --------------------------------------------------------------------------- wrappers
# Every wrapper takes x of shape (B, C, *S) (contiguous, float32/64, CPU) and small
# operands of shape (B, C) or (B, S) in any layout; returns new tensors.


def pool_spatial(x: torch.Tensor, want_max: bool = False, want_index: bool = False):
    """(mean, max, first argmax, tie count) over the spatial dims, each (B, C); unused -> None."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    mean = x.new_empty((B, C))
    mx = x.new_empty((B, C)) if want_max else None
    idx = torch.empty((B, C), dtype=torch.int64) if want_index else None
    cnt = torch.empty((B, C), dtype=torch.int32) if want_index else None
    _fn("pool_spatial", x.dtype)(
        x.data_ptr(), B * C, S, mean.data_ptr(), _ptr(mx), _ptr(idx), _ptr(cnt), _threads()
    )
    return mean, mx, idx, cnt


def pool_channel(
    x: torch.Tensor, gate: torch.Tensor | None = None, want_max: bool = True, want_index: bool = False
):
    """mean_c and max_c of ``x * gate[:, :, None]`` (gate (B, C) or None): (B, S) each, plus argmax/count."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    g = _small(gate, x.dtype)
    mean = x.new_empty((B, S))
    mx = x.new_empty((B, S)) if want_max else None
    idx = torch.empty((B, S), dtype=torch.int64) if want_index else None
    cnt = torch.empty((B, S), dtype=torch.int32) if want_index else None
    _fn("pool_channel", x.dtype)(
        x.data_ptr(), _ptr(g), B, C, S, mean.data_ptr(), _ptr(mx), _ptr(idx), _ptr(cnt), _threads()
    )
    return mean, mx, idx, cnt


def scale(x: torch.Tensor, gc: torch.Tensor | None, gs: torch.Tensor | None, mode: int = 0) -> torch.Tensor:
    """``x * G``: G = gc * gs (mode 0), gc + gs (1); mode 2 is max(x gc, x gs). gc (B, C), gs (B, S)."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    gc, gs = _small(gc, x.dtype), _small(gs, x.dtype)
    out = torch.empty_like(x)
    _fn("scale", x.dtype)(x.data_ptr(), _ptr(gc), _ptr(gs), B, C, S, mode, out.data_ptr(), _threads())
    return out


def dots(
    dy: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor | None,
    g: torch.Tensor | None,
    mode: int = 0,
    want_row: bool = True,
    want_col: bool = True,
):
    """row = sum_s dy x w[b, s] (B, C) and col = sum_c dy x g[b, c] (B, S); w, g may be None (= 1).

    mode 2 (scSE max merge): each term goes to row where x g >= x w, else to col.
    """
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    w, g = _small(w, x.dtype), _small(g, x.dtype)
    dy = dy.contiguous()
    nch = -(-S // _lib.convattn_schunk())
    row = x.new_empty((B, C)) if want_row else None
    col = x.new_empty((B, S)) if want_col else None
    part = x.new_empty((B * nch, C))
    _fn("dots", x.dtype)(
        dy.data_ptr(), x.data_ptr(), _ptr(w), _ptr(g), B, C, S, mode, _ptr(row), _ptr(col),
        part.data_ptr(), _threads(),
    )
    return row, col


def grad_input(
    dy: torch.Tensor,
    x: torch.Tensor,
    gc: torch.Tensor | None,
    gs: torch.Tensor | None,
    mode: int = 0,
    u: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rc: torch.Tensor | None = None,
    rs: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dy * G + u[b, c] v[b, s] + rc[b, c] + rs[b, s]`` in one pass (G as in :func:`scale`)."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    dt = x.dtype
    gc, gs, u, v, rc, rs = (_small(t, dt) for t in (gc, gs, u, v, rc, rs))
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    _fn("grad_input", dt)(
        dy.data_ptr(), x.data_ptr(), _ptr(gc), _ptr(gs), B, C, S, mode, _ptr(u), _ptr(v), _ptr(rc),
        _ptr(rs), dx.data_ptr(), _threads(),
    )
    return dx


def rowdot(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_s x[b, c, s] v[b, s]``, (B, C), for x (B, C, *S) and v (B, S)."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    v = _small(v, x.dtype)
    out = x.new_empty((B, C))
    _fn("rowdot", x.dtype)(x.data_ptr(), v.data_ptr(), B, C, S, out.data_ptr(), _threads())
    return out


def simam_forward(x: torch.Tensor, e_lambda: float, want_a: bool = False, out: torch.Tensor | None = None):
    """SimAM's output and (optionally) a = 1 / (4 (var + lambda)) per (b, c); into
    ``out`` if given (contiguous, like ``x``; may be ``x`` itself)."""
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    out = torch.empty_like(x) if out is None else out
    a = x.new_empty((B, C)) if want_a else None
    _fn("simam_fwd", x.dtype)(x.data_ptr(), B * C, S, e_lambda, out.data_ptr(), _ptr(a), _threads())
    return out, a


def simam_backward(dy: torch.Tensor, x: torch.Tensor, e_lambda: float, a: torch.Tensor) -> torch.Tensor:
    B, C = x.shape[:2]
    S = x.numel() // (B * C)
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    _fn("simam_bwd", x.dtype)(
        dy.data_ptr(), x.data_ptr(), B * C, S, e_lambda, a.data_ptr(), dx.data_ptr(), _threads()
    )
    return dx


def conv1d_sigmoid(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``sigmoid(conv1d(z[:, None], weight) + bias)`` over channels, z (B, C), weight (k,); eval only."""
    dt = z.dtype
    B, C = z.shape
    z, weight, bias = (_small(t, dt) for t in (z, weight, bias))
    out = z.new_empty((B, C))
    _fn("conv1d_sigmoid", dt)(z.data_ptr(), B, C, weight.numel(), padding, weight.data_ptr(), _ptr(bias), out.data_ptr())
    return out


def conv2d_gate(
    p0: torch.Tensor,
    p1: torch.Tensor | None,
    weight: torch.Tensor,
    scale: float = 1.0,
    shift: float = 0.0,
    sigmoid: bool = True,
) -> torch.Tensor:
    """``sigmoid(scale * conv2d([p0; p1], weight, padding=k // 2) + shift)[:, 0]``
    (``sigmoid=False``: without the sigmoid, the raw conv by default).

    p0, p1: the input planes, (B, H, W) each (p1 may be None: one input plane);
    weight (1, I, k, k), one output channel, stride 1, odd k; no autograd (see
    ``gated.conv_1out``). Returns (B, H, W).
    """
    B, H, W = p0.shape
    k = weight.shape[-1]
    p0, p1, weight = _small(p0, p0.dtype), _small(p1, p0.dtype), _small(weight, p0.dtype)
    out = p0.new_empty((B, H, W))
    _check(_fn("conv2d_gate", p0.dtype)(
        p0.data_ptr(), _ptr(p1), B, H, W, weight.data_ptr(), k, scale, shift, int(sigmoid), out.data_ptr(),
        _threads(),
    ), "conv2d_gate")
    return out


def conv2d_planes_backward(g, p0, p1, weight, want_p0: bool = True, want_p1: bool = True, want_w: bool = True):
    """(dL/dp0, dL/dp1, dL/dweight) of the raw conv (:func:`conv2d_gate` with
    ``sigmoid=False``, scale 1, shift 0) given dL/dout = g (B, H, W); unwanted ones are None."""
    B, H, W = p0.shape
    k = weight.shape[-1]
    g = g.contiguous()
    w = _small(weight, p0.dtype)
    d0 = torch.empty_like(p0) if want_p0 else None
    d1 = torch.empty_like(p1) if want_p1 and p1 is not None else None
    dw = torch.empty(w.shape, dtype=p0.dtype) if want_w else None
    _check(_fn("conv2d_bwd", p0.dtype)(
        g.data_ptr(), p0.data_ptr(), _ptr(p1), B, H, W, w.data_ptr(), k, _ptr(d0), _ptr(d1), _ptr(dw), _threads()
    ), "conv2d_bwd")
    return d0, d1, None if dw is None else dw.to(weight.dtype)


# ------------------------------------------------------------ coordinate attention
# x (B, C, H, W); strip vectors zh/gh/rh (B, C, H) and zw/gw/rw (B, C, W).


def coord_pool(x: torch.Tensor) -> torch.Tensor:
    """The strip means [mean over W (H values); mean over H (W values)]: (B, C, H + W)."""
    B, C, H, W = x.shape
    z = x.new_empty((B, C, H + W))
    _fn("coord_pool", x.dtype)(x.data_ptr(), B * C, H, W, z.data_ptr(), _threads())
    return z


def coord_scale(x: torch.Tensor, gh: torch.Tensor, gw: torch.Tensor) -> torch.Tensor:
    """``x * gh[..., :, None] * gw[..., None, :]``."""
    B, C, H, W = x.shape
    gh, gw = _small(gh, x.dtype), _small(gw, x.dtype)
    out = torch.empty_like(x)
    _fn("coord_scale", x.dtype)(x.data_ptr(), gh.data_ptr(), gw.data_ptr(), B * C, H, W, out.data_ptr(), _threads())
    return out


def coord_dots(dy, x, gh, gw) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_W dy x gw, sum_H dy x gh): the gradients of ``coord_scale`` wrt gh and gw."""
    B, C, H, W = x.shape
    dy = dy.contiguous()
    gh, gw = _small(gh, x.dtype), _small(gw, x.dtype)
    dgh, dgw = x.new_empty((B, C, H)), x.new_empty((B, C, W))
    _fn("coord_dots", x.dtype)(
        dy.data_ptr(), x.data_ptr(), gh.data_ptr(), gw.data_ptr(), B * C, H, W, dgh.data_ptr(), dgw.data_ptr(),
        _threads(),
    )
    return dgh, dgw


def coord_grad(dy, gh, gw, rh, rw) -> torch.Tensor:
    """``dy * gh gw + rh[..., :, None] + rw[..., None, :]`` (the input gradient)."""
    B, C, H, W = dy.shape
    dt = dy.dtype
    dy = dy.contiguous()
    gh, gw, rh, rw = (_small(t, dt) for t in (gh, gw, rh, rw))
    dx = torch.empty_like(dy)
    _fn("coord_grad", dt)(
        dy.data_ptr(), gh.data_ptr(), gw.data_ptr(), rh.data_ptr(), rw.data_ptr(), B * C, H, W, dx.data_ptr(),
        _threads(),
    )
    return dx


# ------------------------------------------------------------------ triplet attention
# x (B, C, H, W); per-row maps over W: (B, C, W), over H: (B, C, H); plane maps (B, H, W).


def triplet_pool(x: torch.Tensor, want_index: bool = False):
    """(max_H, mean_H) (B, C, W), (max_W, mean_W) (B, C, H), and if asked the arg-max / tie counts."""
    B, C, H, W = x.shape
    mh, ah = x.new_empty((B, C, W)), x.new_empty((B, C, W))
    mw, aw = x.new_empty((B, C, H)), x.new_empty((B, C, H))
    ih = torch.empty((B, C, W), dtype=torch.int64) if want_index else None
    ch = torch.empty((B, C, W), dtype=torch.int32) if want_index else None
    iw = torch.empty((B, C, H), dtype=torch.int64) if want_index else None
    cw = torch.empty((B, C, H), dtype=torch.int32) if want_index else None
    _fn("triplet_pool", x.dtype)(
        x.data_ptr(), B * C, H, W, mh.data_ptr(), ah.data_ptr(), mw.data_ptr(), aw.data_ptr(),
        _ptr(ih), _ptr(ch), _ptr(iw), _ptr(cw), _threads(),
    )
    return mh, ah, mw, aw, ih, ch, iw, cw


def triplet_scale(x, acw, ahc, ahw, k: float = 1.0) -> torch.Tensor:
    """``x * (acw[:, :, None, :] + ahc[:, :, :, None] + ahw[:, None]) * k``; ahw may be None."""
    B, C, H, W = x.shape
    acw, ahc, ahw = (_small(t, x.dtype) for t in (acw, ahc, ahw))
    out = torch.empty_like(x)
    _fn("triplet_scale", x.dtype)(
        x.data_ptr(), acw.data_ptr(), ahc.data_ptr(), _ptr(ahw), B, C, H, W, k, out.data_ptr(), _threads()
    )
    return out


def triplet_dots(dy, x, want_plane: bool = True):
    """(sum_H dy x (B, C, W), sum_W dy x (B, C, H), sum_C dy x (B, H, W) or None)."""
    B, C, H, W = x.shape
    dy = dy.contiguous()
    scw, shc = x.new_empty((B, C, W)), x.new_empty((B, C, H))
    shw = x.new_empty((B, H, W)) if want_plane else None
    _fn("triplet_dots", x.dtype)(dy.data_ptr(), x.data_ptr(), B, C, H, W, scw.data_ptr(), shc.data_ptr(), _ptr(shw), _threads())
    return scw, shc, shw


def triplet_grad(dy, acw, ahc, ahw, rw, rh, rs) -> torch.Tensor:
    """``dy * (acw + ahc + ahw) + rw + rh + rs`` broadcast as in :func:`triplet_scale`."""
    B, C, H, W = dy.shape
    dt = dy.dtype
    dy = dy.contiguous()
    acw, ahc, ahw, rw, rh, rs = (_small(t, dt) for t in (acw, ahc, ahw, rw, rh, rs))
    dx = torch.empty_like(dy)
    _fn("triplet_grad", dt)(
        dy.data_ptr(), acw.data_ptr(), ahc.data_ptr(), _ptr(ahw), rw.data_ptr(), rh.data_ptr(), _ptr(rs),
        B, C, H, W, dx.data_ptr(), _threads(),
    )
    return dx


def sigmoid_(g: torch.Tensor) -> torch.Tensor:
    """sigmoid in place on a contiguous tensor: the kernels' own, which the eval kernels use."""
    _fn("sigmoid", g.dtype)(g.data_ptr(), g.numel())
    return g
