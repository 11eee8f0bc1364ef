"""`convattn bench` and convattn.bench: files, fields, FLOPs, memory, timm peers, errors.

No timing is asserted (the machine is shared): only that every field is there
and positive, and that what can be computed exactly (FLOPs, parameter counts,
the floor's memory) is right.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import narrow_options

from convattn import cli, create_attention
from convattn.bench import count_flops, make_input, parse_dtype, parse_shape, parse_shapes
from convattn.bench.targets import TIMM_PEERS, build_timm_peer, timm_peer_available

SHAPE = (4, 32, 32, 32)  # output 512 KiB: mostly fresh pages, so its peak is visible


def test_bench_two_modules_writes_files_with_positive_fields(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "--modules", "se,eca", "--shapes", "x".join(map(str, SHAPE)), "--rounds", "3",
            "--threads", "1", "--block-ms", "5", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    for f in ("bench.md", "bench.json", "bench.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"se", "eca"}
    for name, r in rows.items():
        assert r["error"] is None and r["shape"] == list(SHAPE)
        # FlopCounterMode counts matrix products and convolutions only: an elementwise
        # formulation (ECA's k-tap window sum) legitimately counts 0
        assert isinstance(r["flops"], int) and r["flops"] >= 0 and r["train_flops"] >= r["flops"]
        for key in ("params", "eval_ms", "train_ms", "floor_eval_ms", "floor_train_ms",
                    "eval_vs_floor", "train_vs_floor", "eval_vs_timm", "train_vs_timm",
                    "mem_eval_mib", "mem_train_mib"):
            assert r.get(key) is not None and r[key] > 0, (name, key, r.get(key))
        assert r["eval_q1_ms"] <= r["eval_ms"] <= r["eval_q3_ms"]
        assert r["timm"] == TIMM_PEERS[name]
    assert rows["se"]["flops"] > 0  # its two linear layers
    # the floor's eval peak is its output, x.numel() floats (plus the tiny mean); a few
    # hundred KiB of heap freed at start-up may be reused (measured once: 0.40 of 0.50 MiB)
    floor = data["floor"][0]
    out_mib = torch.Size(SHAPE).numel() * 4 / 2**20
    assert 0.5 * out_mib <= floor["mem_eval_mib"] <= 2.5 * out_mib
    md = (out / "bench.md").read_text()
    assert "| se |" in md and "| eca |" in md and "FLOOR" in md
    assert data["config"]["threads"] == 1 and data["env"]["torch"] == torch.__version__
    if sys.platform.startswith("linux"):
        assert data["env"]["allocator"].startswith("glibc malloc") and "allocator: glibc" in md
    # an existing folder is never reused
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_bench_model_against_plain(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["bench", "--model", "resnet8", "--attention", "se", "--shapes", "2x3x32x32", "--rounds", "3",
            "--threads", "1", "--block-ms", "5", "--no-memory", "--out", str(out)]
    assert cli.main(argv) == 0
    data = json.loads((out / "bench.json").read_text())
    rows = {r["key"]: r for r in data["rows"]}
    assert set(rows) == {"plain", "se"}
    assert rows["plain"]["eval_vs_plain"] == 1.0
    assert rows["se"]["eval_vs_plain"] > 0 and rows["se"]["eval_ms"] > 0
    assert rows["se"]["params"] > rows["plain"]["params"] > 0


def test_flops_count_the_two_linear_layers_of_se():
    c, hidden, b = 64, 4, 3
    m = create_attention("se", c, hidden=hidden)
    x = make_input((b, c, 8, 8))
    assert count_flops(m, x, "eval") == 2 * b * (c * hidden + hidden * c)
    assert count_flops(m, x, "train") == 3 * count_flops(m, x, "eval")



def _cbam_flops(b: int, c: int, spatial: tuple[int, ...], reduction: int = 16, k: int = 7) -> int:
    """CBAM's counted FLOPs (2 per multiply-add) for a (b, c, *spatial) input, from its equation:
    the shared MLP C -> C/r -> C on the two pooled vectors (GAP, GMP), and the 2 -> 1 k^d conv."""
    hidden = c // reduction
    mlp = 2 * (2 * b) * (c * hidden + hidden * c)
    conv = 2 * b * math.prod(spatial) * 2 * k ** len(spatial)
    return mlp + conv


def test_flops_of_a_resnet_with_cbam_add_the_cbam_blocks():
    """FLOPs of create_model's resnet8 + cbam = plain resnet8 + each CBAM block's MLP and 7x7 conv."""
    from convattn.attention.cbam import CBAM
    from convattn.models import create_model

    x = make_input((2, 3, 32, 32))
    plain = create_model("resnet8")
    model = create_model("resnet8", attention="cbam")
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: shapes.append(tuple(a[0].shape)))
             for m in model.modules() if isinstance(m, CBAM)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    assert len(shapes) == 3 and {s[1] for s in shapes} == {16, 32, 64}
    expected = sum(_cbam_flops(s[0], s[1], s[2:]) for s in shapes)
    base = count_flops(plain, x, "eval")
    assert base > 0 and count_flops(model, x, "eval") - base == expected
    # train: forward + input and weight gradients, 3x every matrix product and conv
    assert count_flops(model, x, "train") - count_flops(plain, x, "train") == 3 * expected


@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (2, 16, 24, 24), (2, 16, 4, 4, 4), (2, 16, 20)])
def test_flops_of_cbam_count_its_maths(shape):
    """The spatial gate's 2 -> 1 conv and CBAM's MLP and conv count as their maths, eval
    and train, on 1-3 spatial dims; the fast paths stay on afterwards."""
    from convattn import fast

    dims = len(shape) - 2
    x = make_input(shape)
    conv = 2 * shape[0] * math.prod(shape[2:]) * 2 * 7 ** dims
    sp = create_attention("cbam_spatial", 16, dims=dims)
    assert count_flops(sp, x, "eval") == conv
    assert count_flops(sp, x, "train") == 3 * conv
    m = create_attention("cbam", 16, dims=dims)
    assert count_flops(m, x, "eval") == _cbam_flops(shape[0], 16, shape[2:])
    assert count_flops(m, x, "train") == 3 * _cbam_flops(shape[0], 16, shape[2:])
    assert fast.enabled()


def test_flops_of_a_grouped_conv_backward():
    # each gradient of a depthwise conv costs its forward (torch's own formula counts groups x more)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = make_input((2, 8, 6, 6))
    fwd = 2 * 2 * 8 * 36 * 9
    assert count_flops(conv, x, "eval") == fwd and count_flops(conv, x, "train") == 3 * fwd


def test_flops_count_every_registered_module_and_model():
    """FLOP counting never fails: every registered module at each supported dims, and
    create_model's resnet8 with every attention (a failed count shows as "-" in bench tables)."""
    from convattn import get_spec, list_attention
    from convattn.models import create_model

    sizes = {1: (12,), 2: (8, 8), 3: (4, 4, 4)}
    for name in list_attention():
        for d in get_spec(name).dims:
            x = make_input((2, 32) + sizes[d])
            m = create_attention(name, 32, dims=d, **narrow_options(name, 32))
            e, t = count_flops(m, x, "eval"), count_flops(m, x, "train")
            assert 0 <= e <= t, (name, d, e, t)
    x = make_input((2, 3, 16, 16))
    base = count_flops(create_model("resnet8"), x, "eval")
    for name in list_attention():
        model = create_model("resnet8", attention=name, **narrow_options(name, 16))  # resnet8 starts at 16 channels
        assert count_flops(model, x, "eval") >= base > 0, name

@pytest.mark.parametrize("name", [n for n in ("se", "eca", "cbam") if timm_peer_available(n, 2)])
def test_timm_peer_has_our_widths(name):
    ours = create_attention(name, 64)
    peer = build_timm_peer(name, ours, 64)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--modules", "se,nope"], "unknown attention 'nope'"),
        (["--modules", "se", "--dtype", "float16"], "unknown dtype 'float16'; valid: float32, bfloat16, float64"),
        (["--modules", "se", "--shapes", "8x256"], "bad shape"),
        (["--modules", "se", "--shapes", "8xAx2x2"], "bad shape"),
        (["--modules", "se", "--threads", "0"], "threads must be a positive int"),
        (["--modules", "se", "--modes", "eval,infer"], "unknown mode"),
        (["--model", "resnet8", "--attention", "cbam,nope"], "unknown attention 'nope'"),
        (["--model", "resnet9000"], "unknown model"),
    ],
)
def test_bad_bench_options_fail_with_one_line(argv, msg, tmp_path, capsys):
    assert cli.main(["bench", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_option_parsers():
    assert parse_shape("8x256x28x28") == (8, 256, 28, 28)
    assert parse_shapes("8x256x28x28, 32x64x56x56") == [(8, 256, 28, 28), (32, 64, 56, 56)]
    assert parse_shape("2x16x12") == (2, 16, 12) and parse_shape("1x4x2x2x2") == (1, 4, 2, 2, 2)
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float64") is torch.float64
    for bad in ("8x0x2x2", "8x2x2x2x2x2", "", "8,256"):
        with pytest.raises(ValueError, match="shape"):
            parse_shapes(bad)


def _fake_run(ratios: dict, time_utc: str, floor_ms: float) -> dict:
    """A run_modules-shaped result with given eval ratios to FLOOR (shape 2x8x4x4)."""
    rows = [{"name": n, "shape": [2, 8, 4, 4], "eval_vs_floor": r} for n, r in ratios.items()]
    return {"kind": "modules", "rows": rows, "floor": [{"name": "FLOOR", "shape": [2, 8, 4, 4], "eval_ms": floor_ms}],
            "config": {"modes": ["eval"], "dtype": "float32", "threads": 2, "channels_last": False},
            "env": {"time_utc": time_utc, "torch": "x", "load_avg_start": [0.5, 0, 0], "load_avg_end": [0.7, 0, 0]}}


def test_combine_runs_judges_the_median_over_runs():
    from convattn.bench.report import combine_runs, runs_markdown

    runs = [_fake_run({"se": 1.23, "cbam": 2.5, "ge": 3.0}, "2026-01-01T10:00:00Z", 0.15),
            _fake_run({"se": 0.99, "cbam": 1.9}, "2026-01-01T10:05:00Z", 0.17),
            _fake_run({"se": 1.10, "cbam": 2.1}, "2026-01-01T10:09:00Z", 0.16)]
    rows = {r["name"]: r for r in combine_runs(runs, {"se": 1.2, "cbam": 2.0})}
    assert rows["se"]["ratios"] == [1.23, 0.99, 1.10] and rows["se"]["median"] == pytest.approx(1.10)
    assert rows["se"]["pass"] is True and rows["se"]["runs_met"] == 2 and rows["se"]["runs"] == 3
    assert rows["cbam"]["median"] == pytest.approx(2.1) and rows["cbam"]["pass"] is False and rows["cbam"]["runs_met"] == 1
    # a module without a target, timed in one run only: reported, not judged
    assert rows["ge"]["ratios"] == [3.0, None, None] and rows["ge"]["pass"] is None and rows["ge"]["median"] == 3.0
    # an even number of runs: the mean of the middle two
    assert combine_runs(runs[:2], {"se": 1.2})[0]["median"] == pytest.approx((1.23 + 0.99) / 2)
    md = runs_markdown(runs, combine_runs(runs, {"se": 1.2, "cbam": 2.0}), "t")
    assert "| se | <= 1.2x | 1.23x | 0.99x | 1.10x | 1.10x | pass | 2/3 |" in md
    assert "| cbam | <= 2.0x | 2.50x | 1.90x | 2.10x | 2.10x | **FAIL** | 1/3 |" in md
    assert "| FLOOR (ms) | | 0.150 | 0.170 | 0.160 |" in md and "run 2, 10:05 (load 0.5)" in md
    with pytest.raises(ValueError, match="no results"):
        combine_runs([], {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_pin_allocator_keeps_freed_memory_in_the_process():
    """A 64 MiB tensor freed and allocated again: glibc maps it afresh each time
    (page faults on every touch) unless the allocator is pinned."""
    code = (
        "import resource, sys, torch\n"
        "from convattn.bench.measure import pin_allocator\n"
        "def faults():\n"
        "    a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(5): torch.ones(16 << 20)\n"
        "    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a) / 5\n"
        "faults(); before = faults(); desc = pin_allocator(); faults(); after = faults()\n"
        "print(before, after, desc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    # 64 MiB is 16,384 pages of 4 KiB (32 huge pages where transparent huge pages are always on)
    assert before >= 16 and after <= before / 10, out
    assert " ".join(out[2:]).startswith("glibc malloc")


def test_benchmark_timer_imports_without_the_cuda_warning():
    """torch.utils.benchmark's import logs "No CUDA runtime is found" through
    torch.utils.cpp_extension on CPU-only machines; benchmark_timer keeps it out of
    the benchmarks' output and leaves that logger's level as it was."""
    code = (
        "import logging\n"
        "from convattn.bench.measure import benchmark_timer\n"
        "log = logging.getLogger('torch.utils.cpp_extension'); log.setLevel(logging.INFO)\n"
        "Timer = benchmark_timer()\n"
        "print(Timer.__name__, log.level == logging.INFO)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["Timer", "True"]
    assert "No CUDA runtime" not in run.stderr, run.stderr


@pytest.mark.parametrize("name", [n for n in ("ela", "strip", "scoord", "lcbam") if timm_peer_available(n, 2)])
def test_timm_peers_of_the_timm_variants_have_our_parameter_count(name):
    """ela's peer is timm's configuration, which ELA.timm builds; the others' defaults are timm's."""
    from convattn.attention.ela import ELA

    ours = ELA.timm(64) if name == "ela" else create_attention(name, 64)
    peer = build_timm_peer(name, ours, 64)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())
    assert peer(torch.randn(2, 64, 6, 6)).shape == (2, 64, 6, 6)
