"""A tiny ``convattn compare``: every report file, with numbers that agree with each other."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from convattn.cli import main

TINY = ["--epochs", "1", "--train-size", "64", "--test-size", "32", "--image-size", "16", "--batch-size", "16",
        "--threads", "1", "--localisation-images", "32", "--gallery-images", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "convattn-cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("compare") / "run"
    code = main(["compare", "--variants", "none,cbam", "--seeds", "2", *TINY, "--cache-dir", cache,
                 "--out", str(out), "--quiet"])
    torch.set_num_threads(threads)
    assert code == 0
    return out


def parse_table(md: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells, strict=True))
    return rows


def test_every_report_file_is_written(run):
    for name in ("report.md", "metrics.json", "metrics.csv", "learning_curves.png", "attention_gallery.png",
                 "config.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    from PIL import Image

    for png in ("learning_curves.png", "attention_gallery.png"):
        with Image.open(run / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
    for v in ("none", "cbam"):
        for s in (0, 1):
            assert (run / "runs" / f"{v}-seed{s}" / "latest.json").is_file()


def test_report_numbers_equal_metrics_json(run):
    m = json.loads((run / "metrics.json").read_text())
    md = (run / "report.md").read_text()
    table = parse_table(md)
    assert list(table) == ["none", "cbam"] == list(m["variants"])
    for name, v in m["variants"].items():
        row = table[name]
        acc, std = (float(x) for x in row["test acc % (mean ± std)"].split("±"))
        assert len(v["accuracy"]) == 2 and v["seeds"] == [0, 1]
        mean = sum(v["accuracy"]) / 2
        assert v["accuracy_mean"] == pytest.approx(mean)
        assert acc == round(v["accuracy_mean"] * 100, 2) and std == round(v["accuracy_std"] * 100, 2)
        assert row["params"].replace(",", "") == str(v["params"])
        assert float(row["MFLOPs"]) == round(v["flops"] / 1e6, 2)
        if name == "none":
            assert row["latency vs baseline"] == f"1 ({v['latency_s'] * 1e3:.3f} ms/img)"
        else:
            lat = v["latency"]
            assert row["latency vs baseline"] == ("noise" if lat["noise"] else
                                                  f"{lat['ratio']:.2f}x [{lat['low']:.2f}-{lat['high']:.2f}]")
            assert len(v["latency_rounds_s"]) == lat["rounds"] >= 5
        # each seed's accuracy is its last epoch's test accuracy
        assert [h[-1]["test_accuracy"] for h in v["history"]] == v["accuracy"]
    # channel-free baseline has no spatial map and says so; cbam has scores in [0, 1]
    assert table["none"]["pointing game"] == "no spatial map" and m["variants"]["none"]["localisation"] is None
    loc = m["variants"]["cbam"]["localisation"]
    assert float(table["cbam"]["pointing game"]) == round(loc["pointing_game"], 3)
    assert float(table["cbam"]["energy in box"]) == round(loc["energy_in_box"], 3)
    assert 0 <= loc["pointing_game"] <= 1 and 0 <= loc["energy_in_box"] <= 1
    vs = m["variants"]["cbam"]["vs_baseline"]
    from convattn.runs.stats import signed

    assert table["cbam"]["Δ vs baseline, points [95 % CI]"] == (
        f"{signed(vs['mean'])} [{signed(vs['ci_low'])}, {signed(vs['ci_high'])}]" if vs["ci_low"] is not None
        else signed(vs["mean"]))
    per_seed = [(a - b) * 100 for a, b in zip(m["variants"]["cbam"]["accuracy"], m["variants"]["none"]["accuracy"],
                                               strict=True)]
    assert vs["mean"] == pytest.approx(sum(per_seed) / 2)
    assert vs["statement"] in md and "80 % power" in md
    assert re.search(r"parameters|Params", md)


def test_one_epoch_is_reported_as_not_converged(run):
    m = json.loads((run / "metrics.json").read_text())
    md = (run / "report.md").read_text()
    assert m["converged"] is False and m["not_converged"] == ["none", "cbam"]
    assert all(v["converged"] is False and "at least 4" in v["plateau"]["reason"] for v in m["variants"].values())
    first = [ln for ln in md.splitlines()[1:] if ln.strip()][0]
    assert "Not converged: these differences measure how fast each variant learns, not where it ends" in first
    assert m["convergence_rule"] in md
    assert parse_table(md)["none"]["plateaued"] == "NO"


def test_terminal_summary_says_not_converged(tmp_path, cache, capsys):
    threads = torch.get_num_threads()
    code = main(["compare", "--variants", "none,se", "--seeds", "2", *TINY, "--cache-dir", cache,
                 "--out", str(tmp_path / "r")])
    torch.set_num_threads(threads)
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "not converged: these differences measure how fast each variant learns, not where it ends" in out
    assert "se: " in out and "points" in out


def test_python_api_result_equals_metrics_json(tmp_path, cache):
    import convattn

    threads = torch.get_num_threads()
    res = convattn.compare(["none", "eca"], seeds=2, out=tmp_path / "api", epochs=1, train_size=64, test_size=32,
                           image_size=16, batch_size=16, threads=1, localisation_images=32, gallery_images=3,
                           cache_dir=cache)
    torch.set_num_threads(threads)
    assert res.summary == json.loads((tmp_path / "api" / "metrics.json").read_text())
    assert res.run_dir == tmp_path / "api" and not res.converged
    assert res.accuracy("eca")[0] == res.summary["variants"]["eca"]["accuracy_mean"]
    assert res.difference("eca")["statement"].startswith("eca: ")


def test_csv_has_one_row_per_training(run):
    m = json.loads((run / "metrics.json").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [("none", "0"), ("none", "1"), ("cbam", "0"), ("cbam", "1")]
    for r in rows:
        v = m["variants"][r["variant"]]
        i = v["seeds"].index(int(r["seed"]))
        assert float(r["test_accuracy"]) == v["accuracy"][i]
        assert int(r["params"]) == v["params"]
    assert rows[0]["pointing_game"] == "" and float(rows[2]["pointing_game"]) == m["variants"]["cbam"]["localisation"]["pointing_game_per_seed"][0]


def test_resume_of_a_finished_compare_refuses_and_changes_nothing(run, cache, capsys):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["compare", "--resume", str(run), "--threads", "1", "--quiet", "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "that run is finished" in err and "nothing to do" in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_after_the_last_training_reports_from_the_checkpoints(run, cache, tmp_path, capsys):
    """Killed after every training, before metrics.json: the resume reports without training again."""
    import shutil

    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "metrics.json").unlink()
    before = json.loads((run / "metrics.json").read_text())
    assert main(["compare", "--resume", str(killed), "--threads", "1", "--quiet", "--cache-dir", cache]) == 0
    after = json.loads((killed / "metrics.json").read_text())
    for name in before["variants"]:
        assert after["variants"][name]["accuracy"] == before["variants"][name]["accuracy"]
        assert after["variants"][name]["resumed_from_epoch"] == [1, 1]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(killed)
    # the wall time is this invocation's, and the report says the trainings came from checkpoints
    train = sum(sum(v["train_seconds"]) for v in after["variants"].values())
    report = (killed / "report.md").read_text()
    assert "which resumed 4 training(s) from their checkpoints" in report
    assert f"took {train:.1f} s of training in all" in report
    assert "SGD (Nesterov momentum" in report


def test_sample_efficiency_runs_one_comparison_per_size(tmp_path, cache):
    threads = torch.get_num_threads()
    out = tmp_path / "se"
    code = main(["compare", "--variants", "none,se", "--seeds", "2", "--train-sizes", "32,64", "--epochs", "1",
                 "--test-size", "32", "--image-size", "16", "--batch-size", "16", "--threads", "1", "--jobs", "1",
                 "--localisation-images", "16", "--gallery-images", "2", "--cache-dir", cache, "--out", str(out),
                 "--quiet"])
    torch.set_num_threads(threads)
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_sizes"] == [32, 64] and set(m["per_size"]) == {"32", "64"}
    small, large = m["per_size"]["32"], m["per_size"]["64"]
    # a fixed set of that size, and the same number of optimisation steps at every size
    assert small["data"]["train_size"] == 32 and large["data"]["train_size"] == 64
    assert small["config"]["epochs"] == 2 and large["config"]["epochs"] == 1
    assert small["config"]["epochs"] * 32 == large["config"]["epochs"] * 64
    for n in ("32", "64"):
        sub = json.loads((out / f"size-{n}" / "metrics.json").read_text())
        assert sub == m["per_size"][n]
    md = (out / "report.md").read_text()
    assert "sample_efficiency.png" in md and m["per_size"]["32"]["variants"]["se"]["vs_baseline"]["statement"] in md
    from PIL import Image

    with Image.open(out / "sample_efficiency.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


@pytest.mark.parametrize("argv, message", [
    (["--train-sizes", "100,x"], "--train-sizes must be comma-separated positive integers"),
    (["--train-sizes", "100", "--train-size", "50"], "give --train-size or --train-sizes, not both"),
    (["--attention-options", "se:bogus=1", "--variants", "none,se"], "se has no option 'bogus'"),
    (["--canvases", "fixed", "--jobs", "0"], "--jobs must be a positive integer"),
    (["--attention-options", "se:reduction=32", "--variants", "none,se", "--train-size", "32", "--test-size", "16",
      "--epochs", "1"], "attention 'se' with {'reduction': 32} does not fit resnet8"),
])
def test_compare_option_errors_exit_2(tmp_path, cache, capsys, argv, message):
    out = tmp_path / "never"
    threads = torch.get_num_threads()
    code = main(["compare", *argv, "--threads", "1", "--cache-dir", cache, "--out", str(out)])
    torch.set_num_threads(threads)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
