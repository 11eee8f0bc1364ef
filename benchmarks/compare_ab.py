"""A before/after table from two runs of bench_modules.py or bench_models.py.

Each run's ratios (to FLOOR for modules, to the plain model for models) were
timed in its own rounds; this script only lines them up, row by row, with the
change of each ratio (after / before) and its spread. A change is called noise
when the two interquartile ranges overlap.

    python benchmarks/compare_ab.py BEFORE.json AFTER.json --out benchmarks/results/X.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _key(row: dict) -> tuple:
    return (row["name"], tuple(row.get("shape") or ()))


def _ratio_columns(kind: str) -> list[str]:
    return ["eval_vs_floor", "train_vs_floor"] if kind == "modules" else ["eval_vs_plain"]


def _cell(before: dict, after: dict, col: str) -> tuple[str, float | None]:
    a, b = before.get(col), after.get(col)
    if a is None or b is None:
        return "-", None
    qa = (before.get(f"{col}_q1"), before.get(f"{col}_q3"))
    qb = (after.get(f"{col}_q1"), after.get(f"{col}_q3"))
    overlap = None not in qa + qb and qa[0] <= qb[1] and qb[0] <= qa[1]
    change = b / a
    text = f"{a:.2f}x [{qa[0]:.2f}-{qa[1]:.2f}] -> {b:.2f}x [{qb[0]:.2f}-{qb[1]:.2f}]: {change:.2f}"
    return text + (" (noise)" if overlap else ""), change


def table(before: dict, after: dict) -> tuple[str, list[float]]:
    kind = "modules" if before["rows"] and "eval_vs_floor" in before["rows"][0] else "models"
    cols = _ratio_columns(kind)
    old = {_key(r): r for r in before["rows"]}
    lines = ["| row | shape | " + " | ".join(f"{c} before -> after: change" for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    changes = []
    for r in after["rows"]:
        o = old.get(_key(r))
        if o is None or (r.get("source") not in (None, "convattn")):
            continue
        cells = []
        for c in cols:
            text, change = _cell(o, r, c)
            cells.append(text)
            if change is not None:
                changes.append(change)
        shape = "x".join(map(str, r.get("shape") or ()))
        lines.append(f"| {r['name']} | {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines), changes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--title", default="Before / after")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    before, after = (json.loads(Path(f).read_text()) for f in (args.before, args.after))
    body, changes = table(before, after)
    def load(d: dict) -> str:
        e = d.get("env", {})
        start, end = (e.get(k) or [None] for k in ("load_avg_start", "load_avg_end"))
        fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "?"  # noqa: E731
        return f"load average {fmt(start[0])} -> {fmt(end[0])}"

    text = (f"# {args.title}\n\nbefore: {args.before} ({load(before)})\n\n"
            f"after: {args.after} ({load(after)})\n\n{body}\n\n"
            f"Median change of the ratios: {sorted(changes)[len(changes) // 2]:.2f} over {len(changes)} cells; "
            f"largest {max(changes):.2f}, smallest {min(changes):.2f}.\n")
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
