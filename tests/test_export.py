"""Every registered module exports to ONNX, TorchScript and torch.compile; models export too.

ONNX files have a dynamic batch and dynamic spatial sizes, and onnxruntime must
match PyTorch within 1e-4 at the export size and at a second, different size (times the
module's gain max|y| / max|x| where it exceeds 1: float32 rounding is relative, and a module
whose gate is not bounded, such as LSK's conv output, amplifies its input).
Modules that genuinely cannot export to a format are listed in ``KNOWN_FAILURES``
with the reason (strict xfail: a fix makes the test fail until it is removed).
"""

from __future__ import annotations

import pytest
import torch
from conftest import narrow_options, randomize

from convattn import cli, create_attention, get_spec, list_attention
from convattn.export import (
    ExportError,
    check_compile,
    check_format,
    export_model,
    export_onnx,
    export_torchscript,
    onnx_input_dims,
    second_input,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ALL = list_attention()
CHANNELS = 16
SIZE = {1: (12,), 2: (8, 8), 3: (4, 4, 4)}

#: module -> reason, per format; each must fail (strict xfail) until fixed
KNOWN_FAILURES: dict[str, dict[str, str]] = {"onnx": {}, "onnx_legacy": {}, "torchscript": {}, "compile": {}}


def _params(fmt: str):
    out = []
    for name in ALL:
        reason = KNOWN_FAILURES[fmt].get(name)
        marks = [pytest.mark.xfail(strict=True, raises=ExportError, reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _module_and_input(name: str):
    spec = get_spec(name)
    d = 2 if 2 in spec.dims else spec.dims[0]
    # random weights: zero-initialised scales (GCT, DANet, GC) would hide whole branches
    m = randomize(create_attention(name, CHANNELS, dims=d, **narrow_options(name, CHANNELS))).eval()
    g = torch.Generator().manual_seed(0)
    return m, torch.randn((2, CHANNELS) + SIZE[d], generator=g)


def _onnx_atol(m, x) -> float:
    """1e-4 times the module's gain on the two inputs the ONNX checks use, if above 1."""
    with torch.no_grad():
        gain = max(m(t).abs().max().item() / t.abs().max().item() for t in (x, second_input(x)))
    return 1e-4 * max(1.0, gain)


@pytest.mark.parametrize("name", _params("onnx"))
def test_module_exports_to_onnx_with_dynamic_shapes(name, tmp_path):
    import onnx

    m, x = _module_and_input(name)
    path = tmp_path / f"{name}.onnx"
    atol = _onnx_atol(m, x)
    report = export_onnx(m, x, path, atol=atol)
    dims = onnx_input_dims(path)
    # batch and every spatial dim symbolic, channels fixed
    assert isinstance(dims[0], str) and all(isinstance(d, str) for d in dims[2:]), dims
    assert dims[1] == CHANNELS
    assert max(op.version for op in onnx.load(str(path)).opset_import if op.domain in ("", "ai.onnx")) >= 17
    # onnxruntime agrees with PyTorch at the export size and at a different one
    assert [tuple(s) for s in report.input_shapes] == [tuple(x.shape), tuple(second_input(x).shape)]
    assert len(report.max_abs_diff) == 2 and max(report.max_abs_diff) <= atol



@pytest.mark.parametrize("name", _params("onnx_legacy"))
def test_module_exports_with_the_torchscript_based_onnx_exporter(name, tmp_path):
    """``dynamo=False`` (the exporter built on torch.jit.trace), dynamic batch and spatial
    axes, onnxruntime against PyTorch at the export size and at another one."""
    m, x = _module_and_input(name)
    path = tmp_path / f"{name}.onnx"
    atol = _onnx_atol(m, x)
    report = export_onnx(m, x, path, exporter="legacy", atol=atol)
    dims = onnx_input_dims(path)
    assert isinstance(dims[0], str) and all(isinstance(d, str) for d in dims[2:]), dims
    assert [tuple(s) for s in report.input_shapes] == [tuple(x.shape), tuple(second_input(x).shape)]
    assert max(report.max_abs_diff) <= atol


def test_fca_official_fixed_dct_size_exports_with_dynamic_spatial_size(tmp_path):
    """fca with dct_size=7 (adaptive pool to 7x7, official): the pool is folded into the filters
    in traced graphs, so the ONNX file stays right at a size the pool windows differ at."""
    m = randomize(create_attention("fca", CHANNELS, reduction=4, dct_size=7)).eval()
    x = torch.randn(2, CHANNELS, 14, 14)  # second size 18 x 20: uneven 7-point windows
    report = export_onnx(m, x, tmp_path / "fca7.onnx")
    assert all(isinstance(d, str) for d in onnx_input_dims(tmp_path / "fca7.onnx")[2:])
    assert len(report.max_abs_diff) == 2 and max(report.max_abs_diff) <= 1e-4

@pytest.mark.parametrize("name", _params("torchscript"))
def test_module_exports_to_torchscript(name, tmp_path):
    m, x = _module_and_input(name)
    path = tmp_path / f"{name}.pt"
    _, report = export_torchscript(m, x, path)
    assert max(report.max_abs_diff) <= 1e-5
    loaded = torch.jit.load(str(path))
    x3 = second_input(second_input(x))  # a third size, through the saved file
    with torch.no_grad():
        torch.testing.assert_close(loaded(x3), m(x3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", _params("compile"))
def test_module_compiles_full_graph(name):
    # aot_eager keeps the suite fast and still requires a single captured graph
    m, x = _module_and_input(name)
    report = check_compile(m, x, backend="aot_eager", fullgraph=True, fallback=False, dynamic=True)
    assert report.fullgraph and max(report.max_abs_diff) <= 1e-5


def test_one_module_compiles_with_inductor():
    m = randomize(create_attention("se", 32)).eval()
    x = torch.randn(2, 32, 6, 6)
    report = check_compile(m, x, backend="inductor", fullgraph=True, fallback=False, dynamic=False)
    assert report.fullgraph and max(report.max_abs_diff) <= 1e-5


def test_compile_reports_graph_breaks():
    class Breaks(torch.nn.Module):
        def forward(self, x):
            torch._dynamo.graph_break()
            return x * 2

    x = torch.randn(2, 3, 4, 4)
    report = check_compile(Breaks(), x, backend="aot_eager", fullgraph=True, fallback=True)
    assert not report.fullgraph and report.graph_breaks
    with pytest.raises(ExportError, match="torch.compile"):
        check_compile(Breaks(), x, backend="aot_eager", fullgraph=True, fallback=False)


def test_model_with_attention_exports_via_cli(tmp_path, capsys):
    """create_model ResNet with CBAM -> ONNX through `convattn export`, verified by onnxruntime."""
    out = tmp_path / "r8-cbam.onnx"
    assert cli.main(["export", "resnet8", "--attention", "cbam", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime matches PyTorch" in printed and str(out) in printed
    dims = onnx_input_dims(out)
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str)
    # never overwrites without --force
    mtime = out.stat().st_mtime_ns
    assert cli.main(["export", "resnet8", "--attention", "cbam", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.stat().st_mtime_ns == mtime


def test_export_detects_a_wrong_export(tmp_path):
    """A model whose trace bakes in its input size fails verification at the second size."""

    class SizeBaked(torch.nn.Module):
        def forward(self, x):
            h = int(x.shape[2])  # a Python int: traced as a constant
            return x * h

    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ExportError, match="differs from eager"):
        export_torchscript(SizeBaked(), x)


def test_bad_export_options(tmp_path, capsys):
    m, x = _module_and_input("se")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid: onnx, torchscript"):
        check_format("tflite")
    for opset in (13, 99):
        with pytest.raises(ValueError, match=r"opset must be an integer in 17\.\.\d+"):
            export_onnx(m, x, tmp_path / "a.onnx", opset=opset)
    with pytest.raises(ValueError, match="unknown TorchScript method"):
        export_torchscript(m, x, method="magic")
    (tmp_path / "exists.onnx").write_text("keep me")
    with pytest.raises(FileExistsError, match="--force"):
        export_model(m, x, tmp_path / "exists.onnx", "onnx")
    assert (tmp_path / "exists.onnx").read_text() == "keep me"
    for argv, msg in [
        (["export", "resnet8", "--format", "tflite"], "unknown export format"),
        (["export", "resnet8", "--attention", "nope"], "unknown attention 'nope'"),
        (["export", "resnet9000"], "unknown model"),
        (["export", "resnet8", "--opset", "11"], "valid: 17.."),
        (["export", "resnet8", "--opset", "99"], "valid: 17.."),
    ]:
        assert cli.main(argv + ["--out", str(tmp_path / "x.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


def test_a_failed_export_leaves_the_target_as_it_was(tmp_path, monkeypatch, capsys):
    """Written under a temporary name and renamed once verified: a failure keeps the old file, and no temporary."""
    import convattn.export as export

    def fail(*args, **kwargs):
        raise ExportError("onnxruntime output differs from PyTorch by 1 (> 0.0001)")

    monkeypatch.setattr(export, "verify_onnx", fail)
    target = tmp_path / "model.onnx"
    target.write_text("keep me")
    assert cli.main(["export", "resnet8", "--out", str(target), "--force"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "differs from PyTorch" in err and "was not written" in err, err
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_writes_nothing_under_home(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cli.main(["export", "resnet8", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert list(home.rglob("*")) == []


@pytest.mark.parametrize("name", ["se", "eca", "cbam_channel", "sse", "scse", "coord"])
def test_jit_trace_of_a_gating_module_raises_no_tracer_warning_from_our_code(name):
    """The input checks and the native-path tests come after "is a graph being
    recorded": comparing traced sizes would warn that the trace may be wrong."""
    import warnings

    m, x = _module_and_input(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.trace(m, x, check_trace=False)
    ours = [f"{w.filename}:{w.lineno}" for w in caught
            if issubclass(w.category, torch.jit.TracerWarning) and "convattn" in w.filename]
    assert not ours, ours
