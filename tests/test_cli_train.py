"""``convattn train`` / ``eval``: round trip, torchrun on loopback, and every input error (exit 2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convattn.cli import main

TINY = ["--epochs", "2", "--train-size", "64", "--test-size", "32", "--image-size", "16", "--batch-size", "16",
        "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "convattn-cache")


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # default run folders (runs/...) land in the test's tmp folder
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("train") / "run"
    assert main(["train", "--attention", "cbam", *TINY, "--cache-dir", cache, "--out", str(out)]) == 0
    return out


def history(run: Path, variant: str) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["variants"][variant]["history"][0]


def test_train_writes_a_run_and_eval_reproduces_its_accuracy(trained, cache, tmp_path, capsys):
    m = json.loads((trained / "metrics.json").read_text())
    assert list(m["variants"]) == ["cbam"] and m["config"]["epochs"] == 2
    for f in ("report.md", "metrics.csv", "learning_curves.png", "attention_gallery.png"):
        assert (trained / f).is_file()
    ck = trained / "runs" / "cbam-seed0"
    assert main(["eval", str(ck), "--cache-dir", cache, "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["test"]["accuracy"] == m["variants"]["cbam"]["accuracy"][0]
    assert ev["localisation"]["pointing_game"] == m["variants"]["cbam"]["localisation"]["pointing_game"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "ev")
    # the train run folder itself also works (it holds one checkpoint)
    assert main(["eval", str(trained), "--cache-dir", cache, "--out", str(tmp_path / "ev2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["test"] == ev["test"]


def test_train_same_seed_same_metrics(trained, cache, tmp_path):
    out = tmp_path / "again"
    assert main(["train", "--attention", "cbam", *TINY, "--cache-dir", cache, "--out", str(out)]) == 0
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(history(out, "cbam")) == strip(history(trained, "cbam"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_on_loopback(trained, cache, tmp_path):
    """The same entry point under torchrun (DDP, gloo): close to the single-process run."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "convattn.cli", "train", "--attention", "cbam", *TINY,
           "--cache-dir", cache, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2
    ddp, single = history(tmp_path / "ddp", "cbam"), history(trained, "cbam")
    assert len(ddp) == len(single) == 2
    for a, b in zip(ddp, single, strict=True):
        # per-rank BatchNorm statistics make DDP differ slightly from one process
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=0.05)
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.15
    assert a["train_loss"] != b["train_loss"]  # really two processes, not a silent fallback


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--variants", "none,sex"], "unknown attention variant 'sex'; did you mean se"),
        (["compare", "--variants", "none,none"], "more than once"),
        (["train", "--attention", "cbma"], "unknown attention variant 'cbma'; did you mean cbam"),
        (["train", "--data", "/no/such/folder"], "data path /no/such/folder does not exist"),
        (["train", "--data", "cifar10:/no/such/cifar"], "does not exist"),
        (["train", "--batch-size", "0"], "--batch-size must be a positive integer (>= 1), got 0"),
        (["compare", "--epochs", "0"], "--epochs must be a positive integer (>= 1), got 0"),
        (["compare", "--seeds", "0"], "--seeds must be a count >= 1"),
        (["train", "--model", "resnet9"], "unknown --model 'resnet9'"),
        (["train", "--lr", "-1"], "lr must be a positive number"),
        (["train", "--batch-size", "65", "--train-size", "64"], "larger than the training set"),
        (["eval", "nowhere"], "checkpoint nowhere does not exist"),
        (["compare", "--resume", "nowhere"], "no such run folder"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(argv, message, cache, capsys, tmp_path):
    code, err = run_cli([*argv, "--cache-dir", cache] if argv[0] != "eval" else argv, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_corrupt_checkpoint(trained, tmp_path, capsys):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(trained / "runs" / "cbam-seed0", ck)
    weights = next(ck.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = run_cli(["eval", str(ck)], capsys)
    assert code == 2 and "is corrupt" in err and len(err.splitlines()) == 1
    (ck / "latest.json").write_text("[1, 2")
    code, err = run_cli(["eval", str(ck)], capsys)
    assert code == 2 and "not valid JSON" in err
    assert not (tmp_path / "runs").exists()


def test_existing_out_is_never_overwritten(trained, cache, capsys):
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}
    code, err = run_cli(["train", *TINY, "--cache-dir", cache, "--out", str(trained)], capsys)
    assert code == 2 and "already exists" in err
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_default_run_folders_get_new_names(cache, tmp_path, capsys):
    args = ["train", "--epochs", "1", "--train-size", "16", "--test-size", "16", "--image-size", "8",
            "--batch-size", "16", "--threads", "1", "--quiet", "--cache-dir", cache]
    assert main(args) == 0 and main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("runs")]
    assert len(lines) == 2 and lines[0] != lines[1]
    assert all((tmp_path / ln / "report.md").is_file() for ln in lines)
