"""Every registered attention module alone: latency as a ratio to FLOOR and to timm.

Eval forward and train forward+backward at (8,256,28,28)
and (32,64,56,56), fp32, 2 threads; FLOOR = ``x * x.mean(spatial)`` timed
interleaved with each module in the same rounds; timm's module where timm has
one; peak memory in fresh processes. Writes benchmarks/results/modules.md and
modules.json with the speed targets and a pass/fail column.

    python benchmarks/bench_modules.py                 # everything (~15-30 min on 2 busy cores)
    python benchmarks/bench_modules.py --modules se,cbam --no-memory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convattn.bench import parse_names, run_modules
from convattn.bench.report import markdown

#: latency / FLOOR targets (eval and train)
TARGETS = {"se": 1.2, "eca": 1.2, "cbam": 2.0, "simam": 2.0, "scse": 2.0, "coord": 2.0, "triplet": 6.0}
RESULTS = Path(__file__).resolve().parent / "results"


def verdict(row: dict, mode: str) -> str:
    target = TARGETS.get(row["name"])
    v = row.get(f"{mode}_vs_floor")
    if target is None or v is None:
        return ""
    return "pass" if v <= target else "FAIL"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", help="comma-separated registry keys (default: all)")
    p.add_argument("--shapes", default="8x256x28x28,32x64x56x56")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--block-ms", type=float, default=40.0)
    p.add_argument("--max-s", type=float, default=20.0, help="cap on the timing of one module, one mode (s)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-pin-allocator", action="store_true",
                   help="leave glibc malloc at its defaults (freed blocks returned to the OS)")
    p.add_argument("--out", default=str(RESULTS), help="folder for modules.md / modules.json")
    args = p.parse_args(argv)

    names = parse_names(args.modules) or None
    result = run_modules(names, args.shapes, threads=args.threads, rounds=args.rounds, block_s=args.block_ms / 1e3,
                         max_s=args.max_s, memory=not args.no_memory, pin_allocator=not args.no_pin_allocator,
                         progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    for row in result["rows"]:
        row["target_vs_floor"] = TARGETS.get(row["name"])
        for mode in result["config"]["modes"]:
            row[f"{mode}_pass"] = {"pass": True, "FAIL": False}.get(verdict(row, mode))
    extra = [
        ("target", lambda r: f"<= {TARGETS[r['name']]}x" if r.get("name") in TARGETS else ""),
        *[(f"{m} pass", lambda r, m=m: verdict(r, m)) for m in result["config"]["modes"]],
    ]
    note = ("Targets: latency / FLOOR <= 1.2x for se and eca, <= 2.0x for cbam, simam, scse and coord, "
            "<= 6x for triplet, in eval and in train. The machine is shared with other jobs: the load average is "
            "given above; ratios are per-round medians so that drift cancels, [q1-q3] is their spread.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "modules.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "modules.md").write_text(markdown(result, "Attention modules vs FLOOR and timm", note, extra))
    print(f"wrote {out / 'modules.md'} and {out / 'modules.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
