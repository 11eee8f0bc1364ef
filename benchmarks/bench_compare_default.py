"""The default ``convattn compare``: wall time over several fresh runs, and its answer at twice the budget.

Runs ``convattn compare`` with no options ``--repeats`` times (each a fresh
process; the first with an empty data cache, as on a fresh clone), then once
with ``--epochs`` doubled, and writes ``results/compare_default.{md,json}``:
the wall times with the machine's load before each run, each run's table
(accuracy, convergence, paired difference), and how far each variant's mean
moved at the doubled budget.

    python benchmarks/bench_compare_default.py [--repeats 3] [--no-doubled]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load() -> float:
    return os.getloadavg()[0]


def run_compare(out: Path, cache: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "convattn.cli", "compare", "--out", str(out), "--cache-dir", str(cache),
           "--quiet", *extra]
    before = load()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {"args": extra, "wall_s": wall, "load_before": before, "metrics": m}


def table(m: dict) -> list[str]:
    rows = ["| variant | test acc % | plateaued | Δ vs none [95 % CI] | p (Holm) | latency vs none |",
            "|---|---:|:---:|---:|---:|---:|"]
    for name, v in m["variants"].items():
        vs = v.get("vs_baseline")
        diff = "baseline" if vs is None else (
            f"{vs['mean']:+.2f} [{vs['ci_low']:+.2f}, {vs['ci_high']:+.2f}]" if vs.get("ci_low") is not None
            else f"{vs['mean']:+.2f}")
        p = "–" if vs is None or vs.get("p_holm", vs.get("p_value")) is None else f"{vs.get('p_holm') or vs['p_value']:.3f}"
        lat = "1" if name == m.get("baseline") else (v.get("latency") or {}).get("text", "–")
        rows.append(f"| {name} | {v['accuracy_mean'] * 100:.2f} ± {v['accuracy_std'] * 100:.2f} | "
                    f"{'yes' if v['converged'] else 'no'} | {diff} | {p} | {lat} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-doubled", action="store_true", help="skip the run at twice the epochs")
    ap.add_argument("--out", default=str(HERE / "results" / "compare_default"))
    args = ap.parse_args()
    from convattn.engine.options import DEFAULTS

    work = Path(tempfile.mkdtemp(prefix="convattn-bench-compare-"))
    runs = []
    for k in range(args.repeats):
        # the first run starts from an empty cache (a fresh clone); later ones reuse it
        runs.append(run_compare(work / f"default-{k}", work / "cache", []))
        print(f"default run {k + 1}: {runs[-1]['wall_s']:.0f} s (load {runs[-1]['load_before']:.2f})", flush=True)
    doubled = None
    if not args.no_doubled:
        doubled = run_compare(work / "doubled", work / "cache", ["--epochs", str(2 * DEFAULTS["epochs"])])
        print(f"doubled run: {doubled['wall_s']:.0f} s", flush=True)

    lines = ["# The default `convattn compare`", "",
             f"{os.cpu_count()} CPU(s); defaults: {json.dumps(DEFAULTS)}.", "",
             "| run | wall time (s) | 1-min load before | baseline acc % | every variant plateaued |",
             "|---|---:|---:|---:|:---:|"]
    for k, r in enumerate(runs):
        m = r["metrics"]
        lines.append(f"| default {k + 1}{' (empty cache)' if k == 0 else ''} | {r['wall_s']:.0f} | "
                     f"{r['load_before']:.2f} | {m['variants']['none']['accuracy_mean'] * 100:.2f} | "
                     f"{'yes' if m['converged'] else 'no'} |")
    if doubled:
        m = doubled["metrics"]
        lines.append(f"| --epochs {2 * DEFAULTS['epochs']} | {doubled['wall_s']:.0f} | {doubled['load_before']:.2f} | "
                     f"{m['variants']['none']['accuracy_mean'] * 100:.2f} | {'yes' if m['converged'] else 'no'} |")
    lines += ["", "## Default run 1", "", *table(runs[0]["metrics"]), ""]
    if doubled:
        lines += [f"## --epochs {2 * DEFAULTS['epochs']}", "", *table(doubled["metrics"]), "",
                  "## Doubled budget against the default (first run)", "",
                  "| variant | default % | doubled % | moved (points) |", "|---|---:|---:|---:|"]
        for name, v in runs[0]["metrics"]["variants"].items():
            d = doubled["metrics"]["variants"][name]["accuracy_mean"]
            lines.append(f"| {name} | {v['accuracy_mean'] * 100:.2f} | {d * 100:.2f} | "
                         f"{(d - v['accuracy_mean']) * 100:+.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    slim = [{k: v for k, v in r.items() if k != "metrics"} | {"summary": _slim(r["metrics"])} for r in runs]
    payload = {"defaults": DEFAULTS, "runs": slim,
               "doubled": None if doubled is None else {"wall_s": doubled["wall_s"], "summary": _slim(doubled["metrics"])}}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return 0


def _slim(m: dict) -> dict:
    return {"converged": m["converged"], "wall_seconds": m["wall_seconds"],
            "variants": {n: {"accuracy": v["accuracy"], "converged": v["converged"], "plateau": v["plateau"],
                             "vs_baseline": v.get("vs_baseline"), "latency": v.get("latency")}
                         for n, v in m["variants"].items()}}


if __name__ == "__main__":
    sys.exit(main())
