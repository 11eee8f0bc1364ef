"""The modules' speed targets over several fresh processes: latency / FLOOR, median over runs.

One process's ratios move with the machine's load and with its allocator state
(measured: the same code gave se 0.99x in one run and 1.23x in the next), so
this runs ``bench_modules.py`` for the target modules ``--runs`` times, each in a
new process, and writes benchmarks/results/targets.md and targets.json: every
run's ratio, their median, the verdict on the median, and how many runs met the
target.

    python benchmarks/bench_targets.py               # 5 runs, about 2 minutes each on 2 cores
    python benchmarks/bench_targets.py --runs 3 --rounds 11
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convattn.bench.report import combine_runs, runs_markdown

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_modules import RESULTS, TARGETS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes (default 5)")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--shapes", default="8x256x28x28,32x64x56x56")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between runs (spread them over the machine's moods)")
    p.add_argument("--out", default=str(RESULTS), help="folder for targets.md / targets.json")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            if k and args.pause > 0:
                time.sleep(args.pause)
            print(f"run {k + 1}/{args.runs}", file=sys.stderr, flush=True)
            out = Path(tmp) / f"run{k}"
            cmd = [sys.executable, str(HERE / "bench_modules.py"), "--modules", ",".join(TARGETS), "--no-memory",
                   "--rounds", str(args.rounds), "--shapes", args.shapes, "--threads", str(args.threads),
                   "--out", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            results.append(json.loads((out / "modules.json").read_text()))
    combined = combine_runs(results, TARGETS)
    note = (f"Each run is `bench_modules.py --modules {','.join(TARGETS)} --no-memory --rounds {args.rounds}` in a "
            "new process; a run's ratio is its median of per-round ratios to FLOOR timed interleaved with the "
            "module. A target is met when the median over the runs is within it; `runs met` counts the single runs "
            "within it. Written by `python benchmarks/bench_targets.py`.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "targets.json").write_text(json.dumps({"runs": results, "combined": combined}, indent=2) + "\n")
    (out / "targets.md").write_text(runs_markdown(results, combined, "The modules' speed targets", note))
    failed = [f"{r['name']} {r['mode']} {'x'.join(map(str, r['shape']))}" for r in combined if r["pass"] is False]
    print(f"wrote {out / 'targets.md'}; " + ("every target met on the median" if not failed
                                             else "missed on the median: " + ", ".join(failed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
