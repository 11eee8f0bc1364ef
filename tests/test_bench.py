"""`convattn bench` and convattn.bench: files, fields, FLOPs, memory, timm peers, errors.

No timing is asserted (the machine is shared): only that every field is there
and positive, and that what can be computed exactly (FLOPs, parameter counts,
the floor's memory) is right.
"""

from __future__ import annotations

import json

import pytest
import torch

from convattn import cli, create_attention
from convattn.bench import count_flops, make_input, parse_dtype, parse_shape, parse_shapes
from convattn.bench.targets import TIMM_PEERS, build_timm_peer, timm_peer_available

SHAPE = (4, 32, 32, 32)  # output 512 KiB: allocated from fresh pages, so its peak is visible


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
    # the floor's eval peak is its output, x.numel() floats (plus the tiny mean)
    floor = data["floor"][0]
    out_mib = torch.Size(SHAPE).numel() * 4 / 2**20
    assert 0.9 * out_mib <= floor["mem_eval_mib"] <= 2.5 * out_mib
    md = (out / "bench.md").read_text()
    assert "| se |" in md and "| eca |" in md and "FLOOR" in md
    assert data["config"]["threads"] == 1 and data["env"]["torch"] == torch.__version__
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
