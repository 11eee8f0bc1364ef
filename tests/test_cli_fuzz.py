"""Bad command lines over every subcommand: exit code 2, exactly one line on stderr, nothing left behind.

Each row of ``CASES`` runs ``convattn.cli.main`` in-process with the working
folder set to the test's empty ``tmp_path``; ``{data}`` is a module-wide folder
of small inputs built once (broken images, malformed COCO files and masks, run
folders with broken ``config.json``/``latest.json``, a finished run and its
checkpoint), ``{ro}`` a folder that cannot be written. After the call neither
folder may hold a new or changed file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.cli import main

TINY = ["--epochs", "1", "--batch-size", "4", "--image-size", "8", "--threads", "1", "--quiet"]
EMBEDDED = ["--train-size", "32", "--test-size", "16", "--batch-size", "16", "--image-size", "8", "--threads", "1",
            "--quiet", "--cache-dir", "{data}/cache"]
TASK = ["--epochs", "1", "--batch-size", "2", "--image-size", "32", "--seeds", "1", "--variants", "none",
        "--threads", "1", "--quiet"]
GAN = ["--epochs", "1", "--batch-size", "16", "--train-size", "32", "--eval-samples", "20", "--width", "16",
       "--classifier-epochs", "1", "--seeds", "1", "--variants", "none", "--jobs", "1", "--threads", "1", "--quiet",
       "--cache-dir", "{data}/cache"]


def _image(path: Path, size: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _coco(path: Path, annotations, images=None) -> None:
    images = images if images is not None else [
        {"id": i, "file_name": f"im{i}.png", "width": 32, "height": 32} for i in range(10)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))


def _copy_run(src: Path, dst: Path, edit=None) -> None:
    shutil.copytree(src, dst)
    if edit is not None:
        edit(dst)


def _set_json(path: Path, value) -> None:
    path.write_text(json.dumps(value))


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-data")
    # image folders: two good classes, another pair of class names, one broken file, a single class
    for c in ("a", "b"):
        for i in range(6):
            _image(root / "folder" / c / f"{i}.png", seed=i)
            _image(root / "other" / ("x" if c == "a" else "y") / f"{i}.png", seed=i)
            _image(root / "broken" / c / f"{i}.png", seed=i)
    (root / "broken" / "b" / "7.png").write_bytes(b"not an image")
    for i in range(6):
        _image(root / "oneclass" / "a" / f"{i}.png", seed=i)
    # COCO files: a good one, and one per malformation
    for i in range(10):
        _image(root / "coco" / f"im{i}.png", size=32, seed=i)
    good = [{"image_id": i, "bbox": [2, 2, 12, 12], "category_id": 1 + i % 2} for i in range(10)]
    _coco(root / "coco" / "ok.json", good)
    _coco(root / "coco" / "nan.json", [{**good[0], "bbox": [math.nan, 2, 12, 12]}, *good[1:]])
    _coco(root / "coco" / "null_box.json", [{**good[0], "bbox": None}, *good[1:]])
    _coco(root / "coco" / "str_box.json", [{**good[0], "bbox": ["2", 2, 12, 12]}, *good[1:]])
    _coco(root / "coco" / "zero_box.json", [{**good[0], "bbox": [2, 2, 0, 12]}, *good[1:]])
    _coco(root / "coco" / "list_id.json", good,
          images=[{"id": [0], "file_name": "im0.png"}, *({"id": i, "file_name": f"im{i}.png"} for i in range(1, 10))])
    _coco(root / "coco" / "float_category.json", [{**good[0], "category_id": 1.5}, *good[1:]])
    _coco(root / "coco" / "annotations_5.json", 5)
    _coco(root / "coco" / "empty.json", [])
    # segmentation folders: good, every mask ignored, a broken image
    rng = np.random.default_rng(0)
    for name in ("seg", "seg_ignored", "seg_broken"):
        for i in range(10):
            _image(root / name / "images" / f"{i}.png", seed=i)
            values = np.full((16, 16), 255) if name == "seg_ignored" else rng.integers(0, 3, (16, 16))
            _mask(root / name / "masks" / f"{i}.png", values)
    (root / "seg_broken" / "images" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # a finished train run on the folder (its checkpoint knows the class names a, b), and broken copies
    run = root / "runs" / "finished"
    assert main(["train", "--data", str(root / "folder"), *TINY, "--out", str(run)]) == 0
    runs = root / "runs"
    _copy_run(run, runs / "config_list", lambda d: _set_json(d / "config.json", [1, 2]))
    _copy_run(run, runs / "config_command_only", lambda d: _set_json(d / "config.json", {"command": "train"}))
    _copy_run(run, runs / "config_bad_type", lambda d: _edit_json(
        d / "config.json", job={**json.loads((d / "config.json").read_text())["job"], "variants": 5}))
    unfinished = runs / "unfinished"
    _copy_run(run, unfinished, lambda d: (d / "metrics.json").unlink())
    ck = next((runs / "unfinished" / "runs").iterdir()) / "latest.json"
    _copy_run(unfinished, runs / "latest_outside",
              lambda d: _edit_json(d / ck.relative_to(unfinished), weights=str(root / "folder" / "a" / "0.png")))
    _copy_run(unfinished, runs / "latest_parent",
              lambda d: _edit_json(d / ck.relative_to(unfinished), optimizer="../../../config.json"))
    _copy_run(unfinished, runs / "history_str", lambda d: _edit_json(d / ck.relative_to(unfinished), history="x"))
    for cmd in ("segment", "detect", "generate"):
        (runs / f"{cmd}_command_only").mkdir()
        _set_json(runs / f"{cmd}_command_only" / "config.json", {"command": cmd})
    # the embedded data and generate's digit classifier at the sizes the rows use, cached once
    cache = [a.format(data=root) for a in EMBEDDED]
    assert main(["train", *cache, "--epochs", "1", "--out", str(root / "embedded")]) == 0
    assert main(["generate", *(a.format(data=root) for a in GAN), "--out", str(root / "generated")]) == 0
    return root


@pytest.fixture(scope="module")
def ro(tmp_path_factory) -> Path:
    """A folder nobody may write: read-only by its mode, or (as root, who ignores modes) one under /proc."""
    path = tmp_path_factory.mktemp("read-only")
    path.chmod(0o555)
    if os.access(path, os.W_OK):
        path = Path("/proc/convattn-no-such-folder")
    yield path
    if path.parent != Path("/proc"):
        path.chmod(0o755)


# (subcommand arguments, text the error must contain)
CASES = [
    # list
    (["list", "--channels", "0"], "--channels must be >= 1"),
    (["list", "--channels", "-4"], "--channels must be >= 1"),
    (["list", "--family", "temporal"], "invalid choice"),
    # train
    (["train", "--data", "{data}/broken", *TINY], "cannot read image"),
    (["train", "--data", "{data}/oneclass", *TINY], "needs at least 2 classes"),
    (["train", *EMBEDDED, "--image-size", "100000"], "limit of 4096"),
    (["train", *EMBEDDED, "--test-size", "10000000", "--image-size", "32"], "GB of memory"),
    (["train", *EMBEDDED, "--threads", "100000"], "valid: 1..1024"),
    (["train", "--data", "{data}/folder", *TINY, "--out", "{ro}/run"], "not writable"),
    (["train", *EMBEDDED, "--cache-dir", "{ro}/cache"], "--cache-dir"),
    (["train", *EMBEDDED, "--lr", "1e30", "--epochs", "1"], "the training diverged, try a lower --lr"),
    (["train", "--attention", "sex", *TINY], "did you mean se"),
    (["train", "--resume", "{data}/runs/config_list"], "config.json is not a JSON object"),
    (["train", "--resume", "{data}/runs/config_command_only"], "no 'job' table"),
    (["train", "--resume", "{data}/runs/config_bad_type"], "'variants' is 5"),
    (["train", "--resume", "{data}/runs/finished"], "that run is finished"),
    (["train", "--resume", "{data}/runs/latest_outside"], "must name a file inside"),
    (["train", "--resume", "{data}/runs/latest_parent"], "must name a file inside"),
    (["train", "--resume", "{data}/runs/history_str"], "'history' must be a list"),
    # eval
    (["eval", "{data}/runs/finished", "--data", "{data}/other", "--quiet"], "checkpoint was trained on [a, b]"),
    (["eval", "{data}/runs/finished", "--out", "{ro}/ev"], "not writable"),
    (["eval", "{data}/runs/finished", "--cache-dir", "{ro}/cache"], "--cache-dir"),
    (["eval", "{data}/runs/finished", "--test-size", "0"], "--test-size must be a positive integer"),
    (["eval", "{data}/runs/latest_outside"], "must name a file inside"),
    (["eval", "{data}/no-such-run"], "does not exist"),
    # compare
    (["compare", "--seeds", "1000000000", *EMBEDDED], "limit of 1000 seeds"),
    (["compare", "--seeds", "0,0", *EMBEDDED], "distinct"),
    (["compare", "--variants", "none,foo", *EMBEDDED], "unknown attention variant 'foo'"),
    (["compare", *EMBEDDED, "--image-size", "100000"], "limit of 4096"),
    (["compare", "--out", "{ro}/cmp", *EMBEDDED], "not writable"),
    (["compare", "--resume", "{data}/runs/finished"], "a 'train' run, not 'compare'"),
    # segment
    (["segment", "--data", "{data}/seg_ignored", *TASK], "no pixel other than 255"),
    (["segment", "--data", "{data}/seg_broken", *TASK], "cannot read image"),
    (["segment", "--data", "{data}/seg", *TASK, "--lr", "1e30"], "the training diverged, try a lower --lr"),
    (["segment", *TASK, "--image-size", "100000"], "limit of 4096"),
    (["segment", *TASK, "--test-size", "10000000"], "GB of memory"),
    (["segment", *TASK, "--threads", "100000"], "valid: 1..1024"),
    (["segment", "--data", "{data}/seg", *TASK, "--out", "{ro}/seg"], "not writable"),
    (["segment", "--resume", "{data}/runs/segment_command_only"], "no 'job' table"),
    # detect
    (["detect", "--data", "{data}/coco/nan.json", *TASK], "annotation 0 (image 0) has bbox [NaN, 2, 12, 12]"),
    (["detect", "--data", "{data}/coco/null_box.json", *TASK], "annotation 0 (image 0) has bbox null"),
    (["detect", "--data", "{data}/coco/str_box.json", *TASK], "4 finite numbers"),
    (["detect", "--data", "{data}/coco/zero_box.json", *TASK], "width or height <= 0"),
    (["detect", "--data", "{data}/coco/list_id.json", *TASK], "image 0 has id [0]"),
    (["detect", "--data", "{data}/coco/float_category.json", *TASK], "unknown class id 1.5"),
    (["detect", "--data", "{data}/coco/annotations_5.json", *TASK], "'annotations' must be a non-empty list, got 5"),
    (["detect", "--data", "{data}/coco/empty.json", *TASK], "'annotations' must be a non-empty list, got []"),
    (["detect", "--data", "{data}/coco/ok.json", *TASK, "--lr", "1e30"], "the training diverged, try a lower --lr"),
    (["detect", "--data", "{data}/coco/ok.json", *TASK, "--cache-dir", "{ro}/cache"], "--cache-dir"),
    (["detect", "--resume", "{data}/runs/detect_command_only"], "no 'job' table"),
    # generate
    (["generate", *GAN, "--lr-g", "1e30", "--lr-d", "1e30"], "lower --lr-g/--lr-d"),
    (["generate", *GAN, "--threads", "100000"], "valid: 1..1024"),
    (["generate", *GAN, "--seeds", "1000000000"], "limit of 1000 seeds"),
    (["generate", *GAN, "--out", "{ro}/gen"], "not writable"),
    (["generate", *GAN, "--cache-dir", "{ro}/cache"], "--cache-dir"),
    (["generate", "--resume", "{data}/runs/generate_command_only"], "no 'job' table"),
    # bench
    (["bench", "--model", "resnet8", "--where", "foo"], "unknown --where 'foo'; valid: block, stage"),
    (["bench", "--modules", "se,eca", "--shapes", "1x5x16x16"], "se cannot be built at 5 channels"),
    (["bench", "--modules", "se", "--shapes", "100000x100000x16x16"], "GB of memory"),
    (["bench", "--modules", "se", "--threads", "100000"], "valid: 1..1024"),
    (["bench", "--modules", "se", "--shapes", "2x16x8x8", "--out", "{ro}/bench"], "not writable"),
    (["bench", "--modules", "se", "--modes", "infer"], "unknown mode"),
    # export
    (["export", "resnet20", "--opset", "99"], "valid: 17.."),
    (["export", "resnet20", "--opset", "5"], "valid: 17.."),
    (["export", "resnet20", "--size", "100000"], "limit of 4096"),
    (["export", "resnet20", "--out", "{ro}/model.onnx"], "not writable"),
    (["export", "resnet20", "--format", "tflite"], "unknown export format"),
    (["export", "resnet2000"], "unknown model"),
]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``roots``; for files their size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for r in roots for p in r.rglob("*")}


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_command_line(argv, message, data, ro, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default run folders and export files would land here
    monkeypatch.setenv("CONVATTN_CACHE", str(data / "cache"))
    threads = torch.get_num_threads()
    argv = [a.format(data=data, ro=ro) for a in argv]
    before = _snapshot(tmp_path, data)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert _snapshot(tmp_path, data) == before, "files were written or changed"


def test_the_table_covers_every_subcommand():
    from convattn.cli import _command_modules

    commands = {name for name, _ in _command_modules()}
    counts = {c: sum(1 for argv, _ in CASES if argv[0] == c) for c in commands}
    assert all(n >= 3 for n in counts.values()) and sum(counts.values()) == len(CASES) >= 40, counts


def test_list_shows_every_module_at_small_widths(capsys):
    from convattn import list_attention

    for channels in ("8", "4", "1"):
        assert main(["list", "--channels", channels, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert sorted(r["name"] for r in rows) == sorted(list_attention())
        assert any(r["params"] is None for r in rows) and any(r["params"] for r in rows)
    assert main(["list", "--channels", "4"]) == 0
    assert "–" in capsys.readouterr().out


def test_ansi_codes_are_stripped_from_the_error_line(monkeypatch, capsys):
    import convattn.commands.list as list_command

    def fail(args):
        raise ValueError("\x1b[31mshape mismatch\x1b[0m in \x1b[1mlayer\x1b[0m")

    monkeypatch.setattr(list_command, "run", fail)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "convattn list: error: shape mismatch in layer\n"


def test_a_diverging_run_after_a_checkpoint_is_kept_for_resume(data, tmp_path, monkeypatch, capsys):
    """NaN at epoch 2: the folder with epoch 1's checkpoint stays, and the message says how to continue."""
    import convattn.engine.trainer as trainer

    real = trainer.lr_at
    monkeypatch.setattr(trainer, "lr_at", lambda step, total, cfg: 1e30 if step >= total // 2 else real(step, total, cfg))
    out = tmp_path / "run"
    code = main(["train", "--data", str(data / "folder"), *TINY, "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "epoch 2" in err and f"--resume {out}" in err, err
    assert json.loads(next(out.glob("runs/*/latest.json")).read_text())["epoch"] == 1
    report = (out / "report.md").read_text()  # the kept folder says why it stopped
    assert report.startswith("# Run stopped") and "epoch 2" in report and f"--resume {out}" in report


def test_resume_of_an_interrupted_run_removes_stale_temporary_files(data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(data / "runs" / "unfinished", run)
    stale = next(run.glob("runs/*")) / ".epoch-0001.safetensors.abc123.tmp"
    stale.write_bytes(b"half written")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not stale.exists() and (run / "metrics.json").is_file()
    capsys.readouterr()
