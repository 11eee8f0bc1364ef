"""The comparison report shared by every command that trains variants over seeds.

- :func:`convergence_paragraph`: the report's first words, whether every variant plateaued;
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
import math
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write_bytes
from .folders import write_json
from .stats import ALPHA, NOT_CONVERGED, PLATEAU_MIN_WINDOW, mean_std, signed

# --------------------------------------------------------------------- tables

COLUMNS = [
    ("variant", "variant"),
    ("acc", "test acc % (mean ± std)"),
    ("converged", "plateaued"),
    ("diff", "Δ vs baseline, points [95 % CI]"),
    ("p", "p (Holm)"),
    ("mde", "detectable Δ"),
    ("params", "params"),
    ("flops", "MFLOPs"),
    ("latency", "latency vs baseline"),
    ("pointing", "pointing game"),
    ("energy", "energy in box"),
]


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _p_text(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The report table as strings (shared by report.md and the terminal)."""
    rows = []
    metric = summary["metric"]
    base = summary.get("baseline")
    for name, v in summary["variants"].items():
        loc = v.get("localisation")
        vs = v.get("vs_baseline")
        if loc is None:
            pointing = energy = "no spatial map" if summary.get("has_boxes") else "no boxes"
        else:
            pointing, energy = _fmt(loc["pointing_game"], 3), _fmt(loc["energy_in_box"], 3)
        if vs is None:
            diff = "baseline" if name == base else "–"
        elif vs.get("ci_low") is None:
            diff = signed(vs["mean"])
        else:
            diff = f"{signed(vs['mean'])} [{signed(vs['ci_low'])}, {signed(vs['ci_high'])}]"
        lat = v.get("latency")
        if name == base:
            latency = f"1 ({v['latency_s'] * 1e3:.3f} ms/img)" if v.get("latency_s") else "–"
        else:
            latency = "–" if lat is None else lat["text"]
        rows.append(
            {
                "variant": name,
                "acc": f"{v[metric + '_mean'] * 100:.2f} ± {v[metric + '_std'] * 100:.2f}",
                "seeds": str(len(v["seeds"])),
                "converged": "yes" if v.get("converged") else "NO",
                "diff": diff,
                "p": "–" if vs is None else _p_text(vs.get("p_holm") if vs.get("p_holm") is not None
                                                    else vs.get("p_value")),
                "mde": "–" if vs is None or vs.get("minimal_detectable") is None else f"{vs['minimal_detectable']:.2f}",
                "params": f"{v['params']:,}",
                "flops": f"{v['flops'] / 1e6:.2f}",
                "latency": latency,
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
SHORT = {"acc": "acc % ± std", "seeds": "n", "converged": "plateau", "diff": "Δ pts [95% CI]", "p": "p Holm",
         "mde": "min Δ", "flops": "MFLOPs", "latency": "latency", "pointing": "pointing", "energy": "energy"}


#: the columns the terminal shows (report.md has them all)
TERMINAL = ("variant", "acc", "converged", "diff", "p", "latency")


def summary_table(summary: dict[str, Any]):
    from rich import box
    from rich.table import Table

    cols = [(k, h) for k, h in COLUMNS if k in TERMINAL]
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
    """Test metric and training loss per epoch (mean ± std over seeds), and the plateau window enlarged."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    metric = summary["metric"]
    epochs = min((len(h) for v in summary["variants"].values() for h in v["history"] if h), default=0)
    q = max(PLATEAU_MIN_WINDOW, math.ceil(epochs / 4)) if epochs >= 4 else 0
    fig, axes = plt.subplots(1, 3 if q else 2, figsize=(14 if q else 10, 3.8))
    ax1, ax2 = axes[0], axes[1]
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
            if q and ax is ax1:
                ok = v.get("converged")
                axes[2].plot(ep[-q:], m[-q:], marker="o", ms=4, color=line.get_color(),
                             ls="-" if ok else "--", label=f"{name} ({'plateaued' if ok else 'not plateaued'})")
    if q:
        ax1.axvspan(epochs - q + 0.85, epochs + 0.15, color="0.5", alpha=0.12, lw=0, label="plateau window")
        ax3 = axes[2]
        ax3.set_xlabel("epoch")
        ax3.set_ylabel(f"test {metric} (%), seed mean")
        ax3.set_title(f"plateau window (last {q} epochs), enlarged")
        ax3.legend(fontsize=7)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"test {metric} (%)")
    ax1.set_title(f"test {metric}: mean ± std over seeds")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("train loss")
    ax2.set_title("training loss (epoch mean)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def optimizer_text(cfg: dict[str, Any]) -> str:
    """The optimiser of a run's config in words."""
    if cfg.get("optimizer", "sgd") == "adamw":
        return f"AdamW (weight decay {cfg['weight_decay']})"
    return f"SGD (Nesterov momentum {cfg['momentum']}, weight decay {cfg['weight_decay']})"


def resumed_text(summary: dict[str, Any]) -> str:
    """Empty, or a clause saying that the wall time excludes epochs trained by an earlier invocation."""
    resumed = [e for v in summary["variants"].values() for e in v.get("resumed_from_epoch", []) if e]
    if not resumed:
        return ""
    train = sum(sum(v.get("train_seconds", [])) for v in summary["variants"].values())
    return (f" for this invocation, which resumed {len(resumed)} training(s) from their checkpoints (the epochs "
            f"recorded in them took {train:.1f} s of training in all)")


def convergence_paragraph(summary: dict[str, Any]) -> str:
    """The report's first words: did every variant finish learning, by the written-out rule."""
    rule = summary.get("convergence_rule", "")
    if summary.get("converged"):
        return f"**Every variant plateaued** ({rule}), so the differences below compare where the variants end."
    names = ", ".join(summary.get("not_converged", []))
    return (f"**{NOT_CONVERGED[0].upper() + NOT_CONVERGED[1:]}.** Not plateaued: {names}. "
            f"Rule: {rule}. Train longer (`--epochs`) before reading the comparison as an answer.")


def data_line(data: dict[str, Any]) -> str:
    """The report's sentence about the data set."""
    if data.get("dims", 2) == 1:
        shape = f"{data['in_chans']} channel(s) x {data['image_size']} steps"
        what = "series"
    else:
        shape = f"{data['in_chans']} channel(s), {data['image_size']}x{data['image_size']} input"
        what = "images"
    return (f"Data: **{data['name']}** ({data['train_size']} training {what} per epoch / {data['test_size']} test "
            f"{what}, {data['num_classes']} classes, {shape}). {data.get('notes', '')}").rstrip()


def published_lines(summary: dict[str, Any]) -> list[str]:
    """A section setting the baseline's accuracy beside the published figure, when there is one."""
    pub = summary.get("published")
    base = summary["variants"].get(summary.get("baseline") or "")
    if not pub or base is None or summary.get("metric") != "accuracy":
        return []
    mean, std = base["accuracy_mean"] * 100, base["accuracy_std"] * 100
    gap = mean - pub["accuracy_mean"]
    return [
        "## Against the published baseline",
        "",
        "| | test accuracy % (mean ± std) | runs |",
        "|---|---|---|",
        f"| {pub['model']}, this run (none) | {mean:.2f} ± {std:.2f} | {len(summary['seeds'])} |",
        f"| {pub['model']}, published | {pub['accuracy_mean']:.1f} ± {pub['accuracy_std']:.1f} | {pub['runs']} |",
        "",
        f"This run's baseline is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} the published mean. "
        f"Source: {pub['source']}.",
        "",
    ]


def render_markdown(summary: dict[str, Any], files: dict[str, str]) -> str:
    metric = summary["metric"]
    cfg = summary["config"]
    data = summary["data"]
    n_seeds = len(summary["seeds"])
    options = {k: v["attention_options"] for k, v in summary["variants"].items() if v.get("attention_options")}
    opts_text = ("Attention options: " + "; ".join(f"{k}: " + ", ".join(f"{o}={val!r}" for o, val in v.items())
                                                  for k, v in options.items()) + ". ") if options else ""
    lines = [
        f"# convattn {summary['command']}: {', '.join(summary['variants'])}",
        "",
        convergence_paragraph(summary),
        "",
        data_line(data),
        "",
        f"Model **{cfg['model']}**; {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, {optimizer_text(cfg)}, "
        f"peak lr {cfg['lr']}, linear warm-up over "
        f"{cfg['warmup']:.0%} of the steps then cosine decay; seeds {summary['seeds']}, paired: under one seed every "
        "variant sees the same data in the same order and starts from the same weights in every layer the variants "
        f"share (attention weights come from a stream of their own). {opts_text}Wall time "
        f"{summary['wall_seconds']:.1f} s on {summary['threads']} thread(s){resumed_text(summary)}.",
        "",
        "## Results",
        "",
        markdown_table(table_rows(summary), metric),
        "",
        f"Test {metric}: after the last epoch, on the whole test split; mean ± sample std over seeds. "
        "Plateaued: the convergence rule above. Δ: the mean over seeds of (variant − baseline) on the same seed, "
        "with its 95 % t interval; p: the paired t-test, Holm-corrected across the variants; detectable Δ: the "
        "smallest true difference this run would have found with 80 % power at the observed spread of the "
        "differences. Params: all parameters. MFLOPs: one forward of one image counted by torch.utils.flop_counter "
        "(convolutions and matrix multiplies, 2 FLOPs per multiply-add; element-wise gates are not counted). "
        f"Latency: eval forward of a batch of {summary.get('latency_batch', 32)} after training, all variants timed "
        f"interleaved in rounds on {summary['threads']} thread(s); the median per-round ratio to the baseline with "
        "its 25-75 % range, or *noise* when that range includes 1 or a variant that only adds work measures faster.",
        "",
    ]
    lines += published_lines(summary)
    lines += [
        "## Is the difference from the baseline real?",
        "",
    ]
    base = summary.get("baseline")
    any_test = False
    for v in summary["variants"].values():
        if v.get("vs_baseline") is not None:
            vs = v["vs_baseline"]
            boot = ""
            if vs.get("bootstrap_low") is not None:
                boot = f" (bootstrap 95 % interval [{signed(vs['bootstrap_low'])}, {signed(vs['bootstrap_high'])}])"
            lines.append(f"- {vs['statement']}{boot}")
            any_test = True
    n_tested = sum(1 for v in summary["variants"].values() if v.get("vs_baseline"))
    if any_test:
        lines += [
            "",
            f"Each statement: the paired difference over {n_seeds} seeds (scipy.stats.ttest_rel and its t interval"
            + ("; a percentile bootstrap of the mean difference from 5 seeds up" if n_seeds >= 5 else "")
            + (f"), Holm's correction over the {n_tested} variants at α = {ALPHA}" if n_tested > 1
               else f"), one variant, so no correction, α = {ALPHA}")
            + ". A difference is called real only when its corrected test says so; "
            "'no evidence' does not mean the variants are equal: read the interval and the detectable difference.",
        ]
        if not summary.get("converged"):
            lines += ["", f"Caution: {NOT_CONVERGED}."]
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
            "size and averaged. *Pointing game*: the fraction of images whose map peak falls inside a digit's box. "
            "*Energy in box*: the share of the map's total inside the box (inside any of the boxes when an image "
            "has several). Mean over seeds. "
            f"A map that ignores the image scores the boxes' share of the image on average: {chance:.3f}.",
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


def plot_sample_efficiency(path: str | Path, summary: dict[str, Any]) -> Path:
    """Test metric against training-set size per variant: mean over seeds with its 95 % t interval."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy import stats as sps

    sizes = summary["train_sizes"]
    first = summary["per_size"][str(sizes[0])]
    metric = first["metric"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in first["variants"]:
        means, lo, hi = [], [], []
        for n in sizes:
            vals = [x * 100 for x in summary["per_size"][str(n)]["variants"][name][metric]]
            m, s = mean_std(vals)
            half = float(sps.t.ppf(0.975, len(vals) - 1) * s / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
            means.append(m)
            lo.append(m - half)
            hi.append(m + half)
        line = ax.plot(sizes, means, marker="o", label=name)[0]
        ax.fill_between(sizes, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training images (fixed set)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(f"{metric} against training-set size: mean and 95 % interval over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_sample_efficiency(folder: str | Path, summary: dict[str, Any]) -> Path:
    """report.md of a ``--train-sizes`` run: the plot, and each size's paired statements."""
    folder = Path(folder)
    plot_sample_efficiency(folder / "sample_efficiency.png", summary)
    sizes = summary["train_sizes"]
    lines = [f"# convattn {summary['command']}: sample efficiency over {', '.join(map(str, sizes))} training images", ""]
    if not summary["converged"]:
        bad = [n for n in sizes if not summary["per_size"][str(n)]["converged"]]
        lines += [f"**{NOT_CONVERGED[0].upper() + NOT_CONVERGED[1:]}** at size(s) {', '.join(map(str, bad))}.", ""]
    else:
        lines += ["**Every variant plateaued at every size** (the rule is in each size's report).", ""]
    lines += [
        "Each size is a full comparison on a fixed set of that many training canvases (the first N), with the same "
        "number of optimisation steps as the largest size (more epochs for the smaller sets), paired seeds, and "
        "its own report in `size-N/`.",
        "",
        "![sample efficiency](sample_efficiency.png)",
        "",
    ]
    for n in sizes:
        s = summary["per_size"][str(n)]
        lines += [f"## {n} training images ({s['config']['epochs']} epochs)", "",
                  markdown_table(table_rows(s), s["metric"]), ""]
        lines += [f"- {v['vs_baseline']['statement']}" for v in s["variants"].values() if v.get("vs_baseline")]
        lines.append("")
    text = "\n".join(lines).encode()
    return atomic_write_bytes(folder / "report.md", lambda f: f.write(text))
