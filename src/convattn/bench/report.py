"""Turn a benchmark result (from :mod:`convattn.bench.runner`) into files and a table.

:func:`write_outputs` writes ``bench.json`` (everything), ``bench.md`` (the
table, the configuration and the machine) and ``bench.png`` (bar chart of the
latency ratios) into a new folder; it refuses to reuse an existing one.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _ratio(row: dict, key: str, compact: bool = False) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    q1, q3 = row.get(f"{key}_q1"), row.get(f"{key}_q3")
    if compact or q1 is None or q3 is None:
        return f"{v:.2f}x"
    return f"{v:.2f}x [{q1:.2f}-{q3:.2f}]"


def _count(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _shape(s) -> str:
    return "x".join(map(str, s))


def columns(result: dict, compact: bool = False) -> list[tuple[str, Any]]:
    """(header, row -> str) pairs of the table for this kind of result."""
    modes = result["config"]["modes"]
    if result["kind"] == "modules":
        cols: list[tuple[str, Any]] = [
            ("module", lambda r: r["name"]),
            ("shape", lambda r: _shape(r["shape"])),
            ("params", lambda r: _count(r.get("params"))),
            ("FLOPs", lambda r: _count(r.get("flops"))),
        ]
        for m in modes:
            cols += [
                (f"{m} ms", lambda r, m=m: _f(r.get(f"{m}_ms"), "{:.3f}")),
                (f"{m} / FLOOR", lambda r, m=m: _ratio(r, f"{m}_vs_floor", compact)),
                (f"{m} / timm", lambda r, m=m: _ratio(r, f"{m}_vs_timm", compact)),
            ]
        if result["config"].get("memory"):
            cols += [(f"peak MiB {m}", lambda r, m=m: _f(r.get(f"mem_{m}_mib"), "{:.1f}")) for m in modes]
        cols.append(("note", lambda r: r.get("error") or _first_error(r)))
        return cols
    cols = [
        ("variant", lambda r: r["name"]),
        ("params", lambda r: _count(r.get("params"))),
        ("FLOPs", lambda r: _count(r.get("flops"))),
    ]
    for m in modes:
        cols += [
            (f"{m} ms", lambda r, m=m: _f(r.get(f"{m}_ms"), "{:.1f}")),
            (f"{m} IQR ms", lambda r, m=m: f"{_f(r.get(f'{m}_q1_ms'), '{:.1f}')}-{_f(r.get(f'{m}_q3_ms'), '{:.1f}')}"),
            (f"{m} / plain", lambda r, m=m: _ratio(r, f"{m}_vs_plain", compact)),
        ]
    if result["config"].get("memory"):
        cols += [(f"peak MiB {m}", lambda r, m=m: _f(r.get(f"mem_{m}_mib"), "{:.0f}")) for m in modes]
    cols.append(("note", lambda r: r.get("error") or _first_error(r)))
    return cols


def _first_error(row: dict) -> str:
    for k, v in row.items():
        if k.endswith("_error") and v:
            return f"{k[:-6]}: {v}"
    return ""


def table_rows(result: dict, compact: bool = False, extra_cols=None) -> tuple[list[str], list[list[str]]]:
    cols = columns(result, compact)
    if extra_cols:
        cols = cols[:-1] + list(extra_cols) + cols[-1:]  # before the note column
    rows = list(result["rows"])
    if result["kind"] == "modules":
        # the FLOOR reference first for each shape
        by_shape = []
        for s in result["config"]["shapes"]:
            by_shape += [f for f in result.get("floor", []) if f["shape"] == s]
            by_shape += [r for r in rows if r["shape"] == s]
        rows = by_shape
    return [h for h, _ in cols], [[fn(r) for _, fn in cols] for r in rows]


def describe_config(result: dict) -> str:
    c, e = result["config"], result["env"]
    parts = [f"dtype {c['dtype']}", f"{c['threads']} threads", "channels_last" if c["channels_last"] else "contiguous"]
    if e.get("native_kernels"):
        parts.append(f"native kernels {e['native_kernels']}")
    if e.get("allocator"):
        parts.append(f"allocator: {e['allocator']}")
    if result["kind"] == "models":
        parts.insert(0, f"input {_shape(c['shape'])}, attention at {c['where']!r}")
    return (
        f"{', '.join(parts)}; torch {e['torch']}, timm {e.get('timm')}; {e.get('cpu')} "
        f"({e.get('cpu_count')} CPUs, load average {_load(e.get('load_avg_start'))} -> {_load(e.get('load_avg_end'))}); "
        f"{e['time_utc']}"
    )


def _load(v) -> str:
    return "-" if not v else f"{v[0]:.1f}"


METHOD = (
    "Latency: torch.utils.benchmark Timer, variants timed interleaved (one block of calls per variant per "
    "round), median over rounds with the interquartile range; ratios are medians of per-round ratios to the "
    "baseline timed in the same rounds. FLOOR = `x * x.mean(spatial)`, the reads and writes every gate needs. "
    "The process keeps freed memory (glibc's mmap and trim thresholds raised), so no variant pays page faults "
    "that depend on what ran before it. "
    "Train = forward + backward (gradients of the input and every parameter). FLOPs from "
    "torch.utils.flop_counter (matrix, matrix-vector products and convolutions only; elementwise work is not counted). Peak memory: VmHWM - VmRSS around one "
    "full-size call in a fresh process after a tiny warm-up call and a reset of /proc/self/clear_refs."
)


def markdown(result: dict, title: str | None = None, extra: str = "", extra_cols=None) -> str:
    """The result as a markdown document; ``extra_cols`` are (header, row -> str) pairs."""
    headers, rows = table_rows(result, extra_cols=extra_cols)
    title = title or ("Attention modules" if result["kind"] == "modules" else f"{result['config']['model']} with attention")
    out = [f"# {title}", "", describe_config(result), ""]
    if extra:
        out += [extra, ""]
    out += ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    out += ["", METHOD, ""]
    return "\n".join(out)


def print_table(result: dict, title: str | None = None, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    headers, rows = table_rows(result, compact=True)
    table = Table(title=title or describe_config(result), show_lines=False)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 or h in ("shape", "note") else "right", overflow="fold")
    last_shape = None
    for r in rows:
        if result["kind"] == "modules":  # a section per shape
            if last_shape is not None and r[1] != last_shape:
                table.add_section()
            last_shape = r[1]
        table.add_row(*r)
    (console or Console()).print(table)


def plot(result: dict, path: str | Path) -> Path:
    """Bar chart of the latency ratios (to FLOOR for modules, to the plain model for models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    modes = result["config"]["modes"]
    if result["kind"] == "modules":
        shapes = result["config"]["shapes"]
        fig, axes = plt.subplots(len(shapes), 1, figsize=(max(6.0, 0.5 * len(result["config"]["modules"]) + 2), 3.2 * len(shapes)),
                                 squeeze=False)
        for ax, s in zip(axes[:, 0], shapes, strict=True):
            rows = [r for r in result["rows"] if r["shape"] == s and not r.get("error")]
            names = [r["name"] for r in rows]
            width = 0.8 / max(1, len(modes))
            for i, m in enumerate(modes):
                vals = [r.get(f"{m}_vs_floor") or 0.0 for r in rows]
                ax.bar([j + i * width for j in range(len(rows))], vals, width, label=m)
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(rows))])
            ax.set_xticklabels(names, rotation=45, ha="right")
            ax.set_ylabel("latency / FLOOR")
            ax.set_yscale("log")
            ax.set_title(_shape(s))
            ax.legend()
    else:
        rows = [r for r in result["rows"] if not r.get("error")]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4))
        width = 0.8 / max(1, len(modes))
        for i, m in enumerate(modes):
            vals = [r.get(f"{m}_vs_plain") or 0.0 for r in rows]
            lo = [max(0.0, v - (r.get(f"{m}_vs_plain_q1") or v)) for v, r in zip(vals, rows, strict=True)]
            hi = [max(0.0, (r.get(f"{m}_vs_plain_q3") or v) - v) for v, r in zip(vals, rows, strict=True)]
            ax.bar([j + i * width for j in range(len(rows))], vals, width, yerr=[lo, hi], label=m, capsize=3)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(rows))])
        ax.set_xticklabels([r["name"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("latency / plain model")
        vals = [r.get(f"{m}_vs_plain") or 1.0 for r in rows for m in modes]
        ax.set_ylim(min(0.9, min(vals) - 0.02), max(vals) + 0.05)
        ax.set_title(f"{result['config']['model']}, input {_shape(result['config']['shape'])}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: str | Path, title: str | None = None, extra_md: str = "") -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into ``out_dir`` (new, or an empty folder)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} is not empty; choose another --out (results are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(markdown(result, title, extra_md))
    plot(result, paths["png"])
    return paths


def combine_runs(results: list[dict], targets: dict[str, float]) -> list[dict[str, Any]]:
    """Latency ratios to FLOOR of several :func:`~convattn.bench.run_modules` results
    (separate processes, same modules and shapes), per (mode, shape, module).

    Each row: the ratio of every run (None where a run has none), their median, the
    target (``targets``, name -> largest allowed ratio) and how many runs met it. A
    module meets its target when the median over runs does: one process's ratio moves
    with the machine's load and its allocator state, so single runs disagree.
    """
    if not results:
        raise ValueError("combine_runs: no results to combine")
    modes = results[0]["config"]["modes"]
    out: list[dict[str, Any]] = []
    for mode in modes:
        seen: list[tuple[str, tuple]] = []
        for res in results:
            for row in res["rows"]:
                key = (row["name"], tuple(row["shape"]))
                if key not in seen:
                    seen.append(key)
        seen.sort(key=lambda k: (k[1], list(targets).index(k[0]) if k[0] in targets else len(targets), k[0]))
        for name, shape in seen:
            ratios = []
            for res in results:
                row = next((r for r in res["rows"] if r["name"] == name and tuple(r["shape"]) == shape), None)
                ratios.append(None if row is None else row.get(f"{mode}_vs_floor"))
            have = [r for r in ratios if r is not None]
            median = statistics.median(have) if have else None
            target = targets.get(name)
            met = None if target is None else sum(r <= target for r in have)
            out.append({
                "mode": mode, "shape": list(shape), "name": name, "ratios": ratios, "median": median,
                "target": target, "runs_met": met, "runs": len(have),
                "pass": None if target is None or median is None else median <= target,
            })
    return out


def runs_markdown(results: list[dict], combined: list[dict], title: str, note: str = "") -> str:
    """:func:`combine_runs` as markdown: one table per (mode, shape), a column per run."""
    heads = []
    for i, res in enumerate(results, 1):
        e = res["env"]
        heads.append(f"run {i}, {e['time_utc'][11:16]} (load {_load(e.get('load_avg_start'))})")
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += [f"Configuration (run 1): {describe_config(results[0])}.", ""]
    groups: dict[tuple, list[dict]] = {}
    for row in combined:
        groups.setdefault((row["mode"], tuple(row["shape"])), []).append(row)
    for (mode, shape), rows in groups.items():
        floors = []
        for res in results:
            f = next((r for r in res.get("floor", []) if tuple(r["shape"]) == shape), {})
            floors.append(_f(f.get(f"{mode}_ms"), "{:.3f}"))
        lines += [f"## {mode}, {_shape(shape)}", "",
                  "| module | target | " + " | ".join(heads) + " | median | verdict | runs met |",
                  "|---|---|" + "---|" * len(heads) + "---|---|---|",
                  "| FLOOR (ms) | | " + " | ".join(floors) + " | | | |"]
        for r in rows:
            cells = [("-" if v is None else f"{v:.2f}x") for v in r["ratios"]]
            tgt = "" if r["target"] is None else f"<= {r['target']}x"
            verdict = "" if r["pass"] is None else ("pass" if r["pass"] else "**FAIL**")
            met = "" if r["runs_met"] is None else f"{r['runs_met']}/{r['runs']}"
            med = "-" if r["median"] is None else f"{r['median']:.2f}x"
            lines.append(f"| {r['name']} | {tgt} | " + " | ".join(cells) + f" | {med} | {verdict} | {met} |")
        lines.append("")
    return "\n".join(lines)
