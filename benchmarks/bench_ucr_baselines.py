"""The `none` baseline on the five time-series sets with published results, against Fawaz et al. 2019.

Runs ``convattn.compare(["none"], ...)`` on each set with the time-series recipe (or
the options given) and writes benchmarks/results/ucr_baselines.md: mean ± std over
seeds, the published mean ± std, the gap, whether the run plateaued, and the wall time.

    python benchmarks/bench_ucr_baselines.py [--model fcn1d] [--seeds 3] [--epochs N] [--sets GunPoint,...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import convattn
from convattn.data.ucr import PUBLISHED

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn1d", choices=("fcn1d", "resnet1d"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: the time-series recipe's")
    p.add_argument("--sets", default=",".join(PUBLISHED))
    p.add_argument("--out", default=str(RESULTS / "ucr_baselines.md"))
    args = p.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            options = {} if args.epochs is None else {"epochs": args.epochs}
            res = convattn.compare(["none"], seeds=args.seeds, out=Path(tmp) / "run", data=f"ucr:{name}",
                                   model=args.model, **options)
        wall = time.perf_counter() - t0
        mean, std = (v * 100 for v in res.accuracy("none"))
        pub_mean, pub_std = PUBLISHED[name][args.model]
        rows.append((name, mean, std, pub_mean, pub_std, mean - pub_mean, res.converged,
                     res.summary["config"]["epochs"], wall))
        print(f"{name}: {mean:.2f} ± {std:.2f} (published {pub_mean} ± {pub_std}), {wall:.0f} s", flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        f"# `none` baseline on UCR/UEA sets: {args.model}, {args.seeds} seeds, against Fawaz et al. 2019",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before/after "
        f"{load_before:.2f}/{load_after:.2f} (1-minute). Published: mean (std) of 10 runs (hfawaz/dl-4-tsc result files).",
        "",
        "| data set | this run % | published % | gap (points) | within 2 points | plateaued | epochs | wall s |",
        "|---|---:|---:|---:|---|---|---:|---:|",
    ]
    for name, m, s, pm, ps, gap, conv, ep, wall in rows:
        lines.append(f"| {name} | {m:.2f} ± {s:.2f} | {pm:.1f} ± {ps:.1f} | {gap:+.2f} | "
                     f"{'yes' if abs(gap) <= 2 or gap > 0 else 'no'} | {'yes' if conv else 'no'} | {ep} | {wall:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
