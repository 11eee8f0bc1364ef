"""The default ``convattn segment``, ``detect`` and ``generate``: do their models learn the task, and how fast?

Runs each command with no options in a fresh process on an empty data cache
(as on a fresh clone) and writes ``results/task_defaults.{md,json}``: wall time
with the machine's load before and after, each variant's headline numbers over
seeds, whether it plateaued, what a trivial model scores, and the quality
floors and time budgets each default is meant to meet:

- segment: mIoU >= 70 % with every digit class above 40 % IoU, <= 10 minutes;
- detect: mAP@0.5 >= 80 %, <= 10 minutes;
- generate: class accuracy >= 85 % and Frechet distance <= 15, <= 8 minutes.

    python benchmarks/bench_task_defaults.py [--commands segment,detect,generate]
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
BUDGET_S = {"segment": 600, "detect": 600, "generate": 480}


def run(command: str, root: Path) -> dict:
    out = root / command
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convattn.cli", command, "--out", str(out), "--cache-dir", str(root / "cache"),
                    "--quiet"], check=True)
    wall = time.perf_counter() - t0
    return {"command": command, "wall_seconds": wall, "load_start": load0, "load_end": os.getloadavg()[0],
            "metrics": json.loads((out / "metrics.json").read_text())}


def rows_of(r: dict) -> list[dict]:
    """One row per variant: the numbers the floors are about."""
    m, cmd = r["metrics"], r["command"]
    rows = []
    for name, v in m["variants"].items():
        row = {"variant": name, "converged": v.get("converged")}
        if cmd == "segment":
            digits = {k: x for k, x in v["per_class_iou"].items() if k != "background"}
            low = min(digits, key=digits.get)
            row |= {"headline": f"mIoU {v['miou_mean'] * 100:.2f} ± {v['miou_std'] * 100:.2f} %",
                    "detail": f"lowest digit IoU {digits[low] * 100:.1f} % (digit {low})",
                    "meets": v["miou_mean"] >= 0.70 and min(digits.values()) > 0.40}
        elif cmd == "detect":
            row |= {"headline": f"mAP@0.5 {v['map50_mean'] * 100:.2f} ± {v['map50_std'] * 100:.2f} %",
                    "detail": f"mAP@[.5:.95] {v['map_mean'] * 100:.2f} ± {v['map_std'] * 100:.2f} %",
                    "meets": v["map50_mean"] >= 0.80}
        else:
            row |= {"headline": f"class accuracy {v['class_accuracy_mean'] * 100:.2f} ± "
                                f"{v['class_accuracy_std'] * 100:.2f} %",
                    "detail": f"Frechet distance {v['frechet_distance_mean']:.2f} ± {v['frechet_distance_std']:.2f}",
                    "meets": v["class_accuracy_mean"] >= 0.85 and v["frechet_distance_mean"] <= 15}
        rows.append(row)
    return rows


def trivial_text(r: dict) -> str:
    m, cmd = r["metrics"], r["command"]
    if cmd == "segment":
        return f"all background: mIoU {m['trivial']['miou'] * 100:.2f} %"
    if cmd == "detect":
        return (f"no detections: mAP@0.5 {m['trivial']['nothing']['map50'] * 100:.2f} %; exact boxes, random labels: "
                f"{m['trivial']['boxes, random labels']['map50'] * 100:.2f} %")
    ref = m["reference"]
    return (f"uniform noise: FD {ref['noise_frechet_distance']:.1f}; real training digits: class accuracy "
            f"{ref['real_class_accuracy'] * 100:.1f} %, FD {ref['real_frechet_distance']:.2f}")


def markdown(results: list[dict]) -> str:
    lines = ["# The default task commands", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs; each command a fresh process "
             "on an empty data cache. Mean ± std over the default seeds.", "",
             "| command | wall (s) | budget (s) | load start → end | variant | headline | detail | plateaued | "
             "meets the floor | trivial model |",
             "|---|---:|---:|---|---|---|---|---|---|---|"]
    for r in results:
        head = [r["command"], f"{r['wall_seconds']:.0f}", str(BUDGET_S[r["command"]]),
                f"{r['load_start']:.1f} → {r['load_end']:.1f}"]
        for i, row in enumerate(rows_of(r)):
            cells = (head if i == 0 else [""] * 4) + [
                row["variant"], row["headline"], row["detail"], "yes" if row["converged"] else "no",
                "yes" if row["meets"] else "NO", trivial_text(r) if i == 0 else ""]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Plateaued: the convergence rule written in each report (the seed mean moved at most max(0.3 "
              "points, the seed std) over the last quarter of the epochs).", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commands", default="segment,detect,generate")
    args = p.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    unknown = sorted(set(commands) - set(BUDGET_S))
    if unknown:
        p.error(f"unknown command(s) {', '.join(unknown)}; valid: {', '.join(BUDGET_S)}")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(c, Path(tmp)) for c in commands]
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "task_defaults.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "metrics"} | {"rows": rows_of(r), "trivial": trivial_text(r)}
         for r in results], indent=2))
    (out / "task_defaults.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
