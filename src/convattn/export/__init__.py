"""Deploy attention modules and models: ONNX, TorchScript and torch.compile checks.

- :func:`export_onnx`: ONNX (opset 18 by default, :func:`opset_range`) with a dynamic batch
  and dynamic spatial sizes, through ``torch.onnx.export`` (the dynamo exporter,
  torch's default; ``exporter="legacy"`` selects the TorchScript-based one), then
  verified with onnxruntime at the export size and at a second, different size.
- :func:`export_torchscript`: ``torch.jit.trace`` (``method="script"`` or
  ``"auto"`` try ``torch.jit.script``, which the zoo's base class does not
  support yet), verified at a second size so that a trace that baked in a size
  is caught.
- :func:`check_compile`: ``torch.compile`` with ``fullgraph=True``; reports
  whether the whole forward was captured, and the output difference to eager.

Every function takes any ``nn.Module`` with one tensor input and one tensor
output. onnx, onnxscript and onnxruntime are imported only when needed (the
``export`` extra); onnxruntime runs with its telemetry off (``ORT_DISABLE_TELEMETRY``),
so it writes nothing under the user's home. :func:`export_model` writes into a
temporary folder beside the target and moves the files into place only once verified.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

MIN_OPSET = 17
DEFAULT_OPSET = 18
FORMATS = ("onnx", "torchscript")


class ExportError(RuntimeError):
    """An export or its verification failed (the message says which step and why)."""


@dataclass
class ExportReport:
    """What an export produced and how it was verified."""

    format: str
    path: str | None
    method: str
    input_shapes: list[list[int]] = field(default_factory=list)
    max_abs_diff: list[float] = field(default_factory=list)
    atol: float = 1e-4
    dynamic_dims: list[str] = field(default_factory=list)
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def second_input(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A different input to verify dynamic shapes: batch + 1, each spatial size + 4 + 2i.

    Sizes stay even when the example's are (some modules pool by 2), and the
    spatial sizes differ from each other, which catches transposed axes.
    """
    shape = (x.shape[0] + 1, x.shape[1]) + tuple(s + 4 + 2 * i for i, s in enumerate(x.shape[2:]))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(x.dtype)


def opset_range() -> tuple[int, int]:
    """The opsets :func:`export_onnx` can write: ``MIN_OPSET`` up to the newest the installed onnx knows."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - without the export extra
        return MIN_OPSET, DEFAULT_OPSET
    return MIN_OPSET, max(MIN_OPSET, int(onnx.defs.onnx_opset_version()))


def _check_opset(opset: int) -> int:
    lo, hi = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise ValueError(f"opset must be an integer in {lo}..{hi} (what the installed exporter supports), got {opset!r}")
    return opset


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


@contextlib.contextmanager
def _cached_torchlib_registry():
    """Reuse the dynamo exporter's ATen -> ONNX function table across exports.

    ``torch.onnx.export`` rebuilds this table (about 1 s) on every call; the table
    only depends on the opset. Falls back silently to torch's behaviour if the
    private hook moves.
    """
    try:
        from torch.onnx._internal.exporter import _registration as reg

        original = reg.ONNXRegistry.from_torchlib
        orig_fn = original.__func__
    except (ImportError, AttributeError):
        yield
        return
    cache = _cached_torchlib_registry.cache  # type: ignore[attr-defined]

    def cached(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = orig_fn(cls, *args, **kwargs)
        return cache[key]

    reg.ONNXRegistry.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        reg.ONNXRegistry.from_torchlib = original


_cached_torchlib_registry.cache = {}  # type: ignore[attr-defined]


def _dynamic_names(nd: int) -> list[str]:
    return ["batch"] + [["length"], ["height", "width"], ["depth", "height", "width"]][nd - 1]


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    verify: bool = True,
    atol: float = 1e-4,
    dynamic_spatial: bool = True,
) -> ExportReport:
    """Export ``model`` to ONNX with dynamic batch (and spatial) dims; verify with onnxruntime.

    The model is exported in eval mode from ``example`` (B, C, *S); with
    ``verify`` onnxruntime runs the file at ``example`` and at
    :func:`second_input` and every output must match PyTorch within ``atol``
    (ExportError otherwise, giving the difference).
    """
    _check_opset(opset)
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"unknown ONNX exporter {exporter!r}; valid: dynamo, legacy")
    path = Path(path)
    was_training = model.training
    model.eval()
    nd = example.dim() - 2
    names = _dynamic_names(nd) if nd >= 1 else ["batch"]
    axes = [0] + (list(range(2, example.dim())) if dynamic_spatial else [])
    names = [names[0]] + (names[1:] if dynamic_spatial else [])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                from torch.export import Dim

                dyn = {a: Dim.DYNAMIC for a in axes}
                with _cached_torchlib_registry():
                    torch.onnx.export(
                        model, (example,), str(path), dynamo=True, opset_version=opset,
                        dynamic_shapes=(dyn,), input_names=["input"], output_names=["output"],
                        verbose=False,
                    )
            else:
                dyn_axes = {"input": dict(zip(axes, names, strict=True)), "output": {0: "batch"}}
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=opset,
                    dynamic_axes=dyn_axes, input_names=["input"], output_names=["output"],
                )
    except Exception as e:
        raise ExportError(f"ONNX export ({exporter}) failed: {type(e).__name__}: {_first_line(e)}") from e
    finally:
        model.train(was_training)
    report = ExportReport(format="onnx", path=str(path), method=exporter, atol=atol)
    written = onnx_opset(path)
    if written != opset:
        raise ExportError(f"ONNX export wrote opset {written}, not the requested {opset}")
    report.dynamic_dims = onnx_input_dims(path)
    static = [names[i] for i, a in enumerate(axes) if isinstance(report.dynamic_dims[a], int)]
    if static:
        raise ExportError(
            f"ONNX export is not dynamic in {', '.join(static)}: the model fixes "
            f"{'it' if len(static) == 1 else 'them'} to the example's size (input dims in the file: {report.dynamic_dims})"
        )
    if verify:
        inputs = [example, second_input(example)]
        report.input_shapes = [list(t.shape) for t in inputs]
        report.max_abs_diff = verify_onnx(path, model, inputs, atol=atol)
    return report


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def onnx_opset(path: str | Path) -> int | None:
    """The default-domain opset an ONNX file declares."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


def onnx_input_dims(path: str | Path) -> list:
    """The input's dims in the ONNX file: ints for fixed sizes, names for dynamic ones."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def verify_onnx(path: str | Path, model: nn.Module, inputs: list[torch.Tensor], atol: float = 1e-4) -> list[float]:
    """Run the ONNX file with onnxruntime on each input; compare with ``model`` (eval).

    Returns the max absolute difference per input; raises ExportError if one
    exceeds ``atol`` or onnxruntime fails.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # else it writes a device id under ~/.cache
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(2, torch.get_num_threads()))
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load {path}: {_first_line(e)}") from e
    in_name = sess.get_inputs()[0].name
    was_training = model.training
    model.eval()
    diffs = []
    try:
        for x in inputs:
            with torch.no_grad():
                ref = model(x).float().numpy()
            try:
                got = sess.run(None, {in_name: x.numpy()})[0]
            except Exception as e:
                raise ExportError(
                    f"onnxruntime failed at input shape {tuple(x.shape)}: {_first_line(e)}"
                ) from e
            if got.shape != ref.shape:
                raise ExportError(f"onnxruntime output shape {got.shape} != PyTorch {ref.shape} at input {tuple(x.shape)}")
            d = float(abs(got - ref).max()) if ref.size else 0.0
            diffs.append(d)
            if not d <= atol:
                raise ExportError(
                    f"onnxruntime output differs from PyTorch by {d:.3g} (> {atol:g}) at input shape {tuple(x.shape)}"
                )
    finally:
        model.train(was_training)
    return diffs


def export_torchscript(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path | None = None,
    *,
    method: str = "trace",
    verify: bool = True,
    atol: float = 1e-5,
) -> tuple[torch.jit.ScriptModule, ExportReport]:
    """TorchScript ``model``: ``"trace"`` (default), ``"script"`` or ``"auto"`` (script, else trace).

    With ``verify`` the result must match eager at ``example`` and at
    :func:`second_input` within ``atol`` (a trace that baked in a size fails
    here). Saves to ``path`` when given.
    """
    if method not in ("auto", "script", "trace"):
        raise ValueError(f"unknown TorchScript method {method!r}; valid: auto, script, trace")
    was_training = model.training
    model.eval()
    notes = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = None
            used = method
            if method in ("auto", "script"):
                try:
                    scripted = torch.jit.script(model)
                    used = "script"
                except Exception as e:
                    if method == "script":
                        raise ExportError(f"torch.jit.script failed: {type(e).__name__}: {_first_line(e)}") from e
                    notes = f"script failed ({type(e).__name__}: {_first_line(e)[:120]}); traced instead"
            if scripted is None:
                try:
                    with torch.no_grad():
                        scripted = torch.jit.trace(model, (example,), check_trace=False)
                    used = "trace"
                except Exception as e:
                    raise ExportError(f"torch.jit.trace failed: {type(e).__name__}: {_first_line(e)}") from e
            report = ExportReport(format="torchscript", path=str(path) if path else None, method=used,
                                  atol=atol, notes=notes)
            if verify:
                inputs = [example, second_input(example)]
                report.input_shapes = [list(t.shape) for t in inputs]
                for x in inputs:
                    with torch.no_grad():
                        ref, got = model(x), scripted(x)
                    if got.shape != ref.shape:
                        raise ExportError(f"TorchScript ({used}) output shape {tuple(got.shape)} != eager "
                                          f"{tuple(ref.shape)} at input {tuple(x.shape)}")
                    d = float((got - ref).abs().max()) if ref.numel() else 0.0
                    report.max_abs_diff.append(d)
                    if not d <= atol:
                        raise ExportError(f"TorchScript ({used}) output differs from eager by {d:.3g} "
                                          f"(> {atol:g}) at input shape {tuple(x.shape)}")
            if path is not None:
                scripted.save(str(path))
    finally:
        model.train(was_training)
    return scripted, report


@dataclass
class CompileReport:
    fullgraph: bool
    backend: str
    max_abs_diff: list[float] = field(default_factory=list)
    graph_breaks: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_compile(
    model: nn.Module,
    example: torch.Tensor,
    *,
    backend: str = "inductor",
    fullgraph: bool = True,
    dynamic: bool | None = None,
    atol: float = 1e-5,
    fallback: bool = True,
) -> CompileReport:
    """``torch.compile(model, fullgraph=True)``; compare with eager at two input sizes.

    If the whole forward cannot be captured and ``fallback`` is true, compiles
    again with graph breaks allowed and returns ``fullgraph=False`` with the
    reason; otherwise raises ExportError. Mismatches beyond ``atol`` raise.
    """
    import torch._dynamo

    was_training = model.training
    model.eval()
    inputs = [example, second_input(example)]
    report = CompileReport(fullgraph=fullgraph, backend=backend)
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend, fullgraph=fullgraph, dynamic=dynamic)
        try:
            outs = _run_all(compiled, inputs)
        except Exception as e:
            if not (fullgraph and fallback):
                raise ExportError(f"torch.compile(backend={backend!r}) failed: {type(e).__name__}: {_first_line(e)}") from e
            report.fullgraph = False
            report.graph_breaks = f"{type(e).__name__}: {_first_line(e)}"
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=backend, fullgraph=False, dynamic=dynamic)
            outs = _run_all(compiled, inputs)
        for x, got in zip(inputs, outs, strict=True):
            with torch.no_grad():
                ref = model(x)
            d = float((got - ref).abs().max()) if ref.numel() else 0.0
            report.max_abs_diff.append(d)
            if not d <= atol:
                raise ExportError(f"torch.compile output differs from eager by {d:.3g} (> {atol:g}) "
                                  f"at input shape {tuple(x.shape)}")
    finally:
        model.train(was_training)
    return report


def _run_all(fn, inputs):
    with torch.no_grad():
        return [fn(x) for x in inputs]


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    fmt: str,
    *,
    force: bool = False,
    **kwargs: Any,
) -> ExportReport:
    """Write ``model`` to ``path`` in ``fmt`` ("onnx" or "torchscript") and verify it.

    Refuses to overwrite an existing file unless ``force``. The file is written
    under a temporary name and renamed to ``path`` only once verified, so a
    failed export leaves ``path`` (and any older file there) as it was.
    """
    check_format(fmt)
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force (force=True) to overwrite it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    # staged in a temporary folder under the final name, so that the ONNX file's reference to its
    # external data file (<name>.data, written beside it) stays right after the move
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        if fmt == "onnx":
            report = export_onnx(model, example, stage / path.name, **kwargs)
        else:
            report = export_torchscript(model, example, stage / path.name, **kwargs)[1]
        for f in sorted(stage.iterdir(), key=lambda f: f.name == path.name):  # the model file last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report.path = str(path)
    return report


__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MIN_OPSET",
    "CompileReport",
    "ExportError",
    "ExportReport",
    "check_compile",
    "check_format",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "onnx_input_dims",
    "onnx_opset",
    "opset_range",
    "second_input",
    "verify_onnx",
]
