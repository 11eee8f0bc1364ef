"""Run folders and reports shared by every command that trains or evaluates.

- :func:`new_run_dir`: one folder per run, never reusing an existing one;
- :func:`welch`: is a variant's difference from the baseline outside the noise;
- :func:`write_report`: ``report.md``, ``metrics.json``, ``metrics.csv`` and the
  learning-curve PNG from a *summary* dict (see :func:`convattn.engine.experiment.run_experiment`
  for its fields); the attention gallery is written by the caller
  (:func:`convattn.explain.save_gallery`) and linked if present;
- :func:`summary_table`: the same table for the terminal (rich).

The numbers in ``report.md`` are the numbers of ``metrics.json`` rounded for
display by :func:`table_rows` (the one formatting function both use).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write_bytes

ALPHA = 0.05


def new_run_dir(out: str | Path | None, command: str, root: str | Path = "runs") -> Path:
    """Create the run folder: ``out`` (must not exist) or ``root/<command>-<timestamp>[-k]``."""
    if out is not None:
        path = Path(out).expanduser()
        if path.exists():
            raise FileExistsError(f"output folder {path} already exists; choose a new --out (nothing was overwritten)")
        path.mkdir(parents=True)
        return path
    base = Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free run folder name under {root}")


def check_out_free(out: str | Path | None) -> None:
    """Fail early (before any work) when ``--out`` already exists."""
    if out is not None and Path(out).expanduser().exists():
        raise FileExistsError(
            f"output folder {Path(out).expanduser()} already exists; choose a new --out or pass --resume to continue it"
        )


def mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def welch(values: list[float], baseline: list[float], name: str, base_name: str, scale: float = 100.0,
          unit: str = "points") -> dict[str, Any]:
    """Welch's t-test of ``values`` against ``baseline`` (scipy, unequal variances), said plainly."""
    diff = (mean_std(values)[0] - mean_std(baseline)[0]) * scale
    out: dict[str, Any] = {"diff": diff, "p_value": None, "outside_noise": None}
    head = f"{name}: {diff:+.2f} {unit} vs {base_name}"
    if len(values) < 2 or len(baseline) < 2:
        out["statement"] = f"{head}; not tested (Welch's t-test needs >= 2 seeds per variant)."
        return out
    if mean_std(values)[1] == 0 and mean_std(baseline)[1] == 0:
        same = values[0] == baseline[0]
        out["outside_noise"] = False if same else None
        out["statement"] = (
            f"{head}; identical results on every seed." if same
            else f"{head}; no spread within either variant, so the t-test is undefined."
        )
        return out
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(values, baseline, equal_var=False).pvalue)
    if math.isnan(p):
        same = all(v == baseline[0] for v in values + baseline)
        out["statement"] = (
            f"{head}; identical results on every seed." if same
            else f"{head}; no spread within either variant, so the t-test is undefined."
        )
        out["outside_noise"] = False if same else None
        return out
    out["p_value"] = p
    out["outside_noise"] = p < ALPHA
    if p < ALPHA:
        out["statement"] = (
            f"{head}; Welch's t-test p = {p:.3f} < {ALPHA}: outside the seed-to-seed noise"
            f" ({'better' if diff > 0 else 'worse'} than {base_name})."
        )
    else:
        out["statement"] = f"{head}; Welch's t-test p = {p:.3f}: within the seed-to-seed noise (no evidence of a difference)."
    return out


# --------------------------------------------------------------------- tables

COLUMNS = [
    ("variant", "variant"),
    ("acc", "test acc % (mean ± std)"),
    ("seeds", "seeds"),
    ("diff", "Δ vs baseline (points)"),
    ("p", "Welch p"),
    ("params", "params"),
    ("flops", "MFLOPs"),
    ("latency", "latency ms/img"),
    ("pointing", "pointing game"),
    ("energy", "energy in box"),
]


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The report table as strings (shared by report.md and the terminal)."""
    rows = []
    metric = summary["metric"]
    for name, v in summary["variants"].items():
        loc = v.get("localisation")
        vs = v.get("vs_baseline")
        if loc is None:
            pointing = energy = "no spatial map" if summary.get("has_boxes") else "no boxes"
        else:
            pointing, energy = _fmt(loc["pointing_game"], 3), _fmt(loc["energy_in_box"], 3)
        rows.append(
            {
                "variant": name,
                "acc": f"{v[metric + '_mean'] * 100:.2f} ± {v[metric + '_std'] * 100:.2f}",
                "seeds": str(len(v["seeds"])),
                "diff": "baseline" if vs is None and name == summary.get("baseline") else
                        ("–" if vs is None else f"{vs['diff']:+.2f}"),
                "p": "–" if vs is None or vs["p_value"] is None else f"{vs['p_value']:.3f}",
                "params": f"{v['params']:,}",
                "flops": f"{v['flops'] / 1e6:.2f}",
                "latency": f"{v['latency_s'] * 1e3:.3f}",
                "pointing": pointing,
                "energy": energy,
            }
        )
    return rows


def metric_header(metric: str = "accuracy") -> str:
    """The header of the metric column: "test acc %" for accuracy, "test <metric> %" otherwise."""
    return "test acc % (mean ± std)" if metric == "accuracy" else f"test {metric} % (mean ± std)"


def markdown_table(rows: list[dict[str, str]], metric: str = "accuracy") -> str:
    head = "| " + " | ".join(metric_header(metric) if k == "acc" else h for k, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "variant" else "---:" for k, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(r[k] for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


#: shorter headers for the terminal (same columns, same numbers as report.md)
SHORT = {"acc": "acc % ± std", "seeds": "n", "diff": "Δ pts", "p": "p", "flops": "MFLOPs",
         "latency": "ms/img", "pointing": "pointing", "energy": "energy"}


def summary_table(summary: dict[str, Any]):
    from rich import box
    from rich.table import Table

    cols = [(k, h) for k, h in COLUMNS if k != "seeds"]
    table = Table(
        title=f"{summary['command']}: test {summary['metric']} over {len(summary['seeds'])} seed(s) "
              f"({summary['data']['name']})",
        box=box.SIMPLE_HEAD, pad_edge=False,
    )
    for k, h in cols:
        head = f"{summary['metric']} % ± std" if k == "acc" and summary["metric"] != "accuracy" else SHORT.get(k, h)
        table.add_column(head, justify="left" if k == "variant" else "right",
                         style="bold" if k == "variant" else None)
    for r in table_rows(summary):
        table.add_row(*(r[k].replace("no spatial map", "no map").replace("baseline", "base") for k, _ in cols))
    return table


# -------------------------------------------------------------------- writers


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True).encode()
    return atomic_write_bytes(path, lambda f: f.write(text))


def write_csv(path: str | Path, summary: dict[str, Any]) -> Path:
    """One row per (variant, seed) training."""
    metric = summary["metric"]
    fields = ["variant", "seed", f"test_{metric}", "test_loss", f"train_{metric}", "train_loss", "epochs",
              "train_seconds", "params", "flops", "latency_s", "pointing_game", "energy_in_box"]
    lines = []
    for name, v in summary["variants"].items():
        for i, seed in enumerate(v["seeds"]):
            last = v["history"][i][-1] if v["history"][i] else {}
            loc = v.get("localisation") or {}
            lines.append(
                {
                    "variant": name,
                    "seed": seed,
                    f"test_{metric}": v[metric][i],
                    "test_loss": last.get("test_loss"),
                    f"train_{metric}": last.get(f"train_{metric}"),
                    "train_loss": last.get("train_loss"),
                    "epochs": len(v["history"][i]),
                    "train_seconds": v["train_seconds"][i],
                    "params": v["params"],
                    "flops": v["flops"],
                    "latency_s": v["latency_s"],
                    "pointing_game": (loc.get("pointing_game_per_seed") or [None] * len(v["seeds"]))[i],
                    "energy_in_box": (loc.get("energy_in_box_per_seed") or [None] * len(v["seeds"]))[i],
                }
            )

    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in lines:
        w.writerow({k: ("" if row[k] is None else row[k]) for k in fields})
    data = buf.getvalue().encode()
    return atomic_write_bytes(path, lambda f: f.write(data))


def plot_learning_curves(path: str | Path, summary: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    metric = summary["metric"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, v in summary["variants"].items():
        hist = [h for h in v["history"] if h]
        if not hist:
            continue
        n = min(len(h) for h in hist)
        ep = np.arange(1, n + 1)
        for ax, key, scale in ((ax1, f"test_{metric}", 100.0), (ax2, "train_loss", 1.0)):
            a = np.array([[row[key] for row in h[:n]] for h in hist]) * scale
            m = a.mean(0)
            s = a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(m)
            line = ax.plot(ep, m, marker="o", ms=3, label=name)[0]
            ax.fill_between(ep, m - s, m + s, color=line.get_color(), alpha=0.15)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"test {metric} (%)")
    ax1.set_title(f"test {metric}: mean ± std over seeds")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("train loss")
    ax2.set_title("training loss (epoch mean)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def render_markdown(summary: dict[str, Any], files: dict[str, str]) -> str:
    metric = summary["metric"]
    cfg = summary["config"]
    data = summary["data"]
    lines = [
        f"# convattn {summary['command']}: {', '.join(summary['variants'])}",
        "",
        f"Data: **{data['name']}** ({data['train_size']} training / {data['test_size']} test images, "
        f"{data['num_classes']} classes, {data['in_chans']} channel(s), {data['image_size']}x{data['image_size']} input). "
        f"{data.get('notes', '')}".rstrip(),
        "",
        f"Model **{cfg['model']}**; {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, SGD (Nesterov momentum "
        f"{cfg['momentum']}, weight decay {cfg['weight_decay']}), peak lr {cfg['lr']}, linear warm-up over "
        f"{cfg['warmup']:.0%} of the steps then cosine decay; seeds {summary['seeds']}. Every variant gets the same "
        f"data, budget and schedule. Wall time {summary['wall_seconds']:.1f} s on {summary['threads']} thread(s).",
        "",
        "## Results",
        "",
        markdown_table(table_rows(summary), metric),
        "",
        f"Test {metric} is measured after the last epoch on the whole test split; mean ± sample std over seeds. "
        "Params: all parameters. MFLOPs: one forward of one image counted by torch.utils.flop_counter "
        "(convolutions and matrix multiplies, 2 FLOPs per multiply-add; element-wise gates are not counted). "
        "Latency: median of a batch-of-one forward on this CPU (noisy; compare rows of the same run).",
        "",
        "## Is the difference from the baseline outside the noise?",
        "",
    ]
    base = summary.get("baseline")
    any_test = False
    for v in summary["variants"].values():
        if v.get("vs_baseline") is not None:
            lines.append(f"- {v['vs_baseline']['statement']}")
            any_test = True
    if any_test:
        lines += [
            "",
            f"Welch's t-test (unequal variances, two-sided, α = {ALPHA}) on the per-seed test {metric} values, "
            f"each variant against {base}. With only {len(summary['seeds'])} seeds per variant the test has little "
            "power: only large differences can show up as outside the noise, a 'within the noise' verdict does not "
            "mean the variants are equal, and no correction is made for testing several variants.",
        ]
    else:
        lines.append(
            f"No comparison: it needs the baseline ({base or 'none'}) among the variants."
            if base is None else "No comparison (only the baseline was run)."
        )
    lines += ["", "## Where does the network look?", ""]
    if summary.get("has_boxes"):
        chance = summary.get("chance_localisation")
        lines += [
            f"Localisation on the first {summary.get('localisation_images', 0)} test images: the spatial attention "
            "maps (kind \"spatial\" from convattn.capture_maps) of every block are upsampled bilinearly to the input "
            "size and averaged. *Pointing game*: the fraction of images whose map peak falls inside the digit's box. "
            "*Energy in box*: the share of the map's total inside the box. Mean over seeds. "
            f"A map that ignores the image scores the box's share of the image on average: {chance:.3f}.",
            "",
        ]
        for name, v in summary["variants"].items():
            loc = v.get("localisation")
            if loc is None:
                lines.append(f"- {name}: no spatial attention map (channel-only or no attention), so no score.")
            else:
                lines.append(
                    f"- {name}: pointing game {loc['pointing_game']:.3f}, energy in box {loc['energy_in_box']:.3f}."
                )
    else:
        lines.append("This data set has no boxes, so no localisation score.")
    lines.append("")
    if files.get("gallery"):
        lines += [
            "Attention maps (the same test images for every variant; first seed's model; colours scaled per image):",
            "",
            f"![attention maps]({files['gallery']})",
            "",
        ]
    if files.get("curves"):
        lines += ["## Learning curves", "", f"![learning curves]({files['curves']})", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: every number above, per seed, with the per-epoch history and the configuration;",
        "- `metrics.csv`: one row per training (variant, seed);",
        "- `runs/<variant>-seed<k>/`: checkpoints of each training (safetensors weights, optimiser state, "
        "latest.json); `convattn eval <that folder>` re-evaluates one.",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: str | Path, summary: dict[str, Any], gallery: str | None = None) -> dict[str, Path]:
    """Write report.md, metrics.json, metrics.csv and learning_curves.png into ``folder``."""
    folder = Path(folder)
    files = {"gallery": gallery}
    written = {}
    if any(any(h) for v in summary["variants"].values() for h in v["history"]):
        written["curves"] = plot_learning_curves(folder / "learning_curves.png", summary)
        files["curves"] = "learning_curves.png"
    written["metrics.json"] = write_json(folder / "metrics.json", summary)
    written["metrics.csv"] = write_csv(folder / "metrics.csv", summary)
    text = render_markdown(summary, files).encode()
    written["report.md"] = atomic_write_bytes(folder / "report.md", lambda f: f.write(text))
    return written
