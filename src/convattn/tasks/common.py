"""What ``convattn segment`` and ``convattn detect`` share: options, the job, the report additions.

Both commands run :func:`convattn.engine.experiment.run_experiment` (the one
training loop :func:`convattn.engine.fit`, one checkpoint folder per
variant x seed, the compare report: report.md, metrics.json, metrics.csv,
learning curves) with their own task object and model builder, then add a
task section (per-class numbers, a PNG of predictions) to the same report.

Order of work as in ``convattn compare``: validate the options, load the data
(a missing file or a malformed annotation fails here, before any folder is
created), then create the run folder, write ``config.json``, train, report.
Single process only (the detection metric is not reduced across ranks).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.trainer import ConfigRecord, TrainConfig


@dataclass
class TaskCommand:
    """A task command's pieces (see segmentation.py / detection.py)."""

    name: str
    defaults: dict[str, Any]
    models: tuple[str, ...]
    load_data: Callable[[Any], Any]  # a TaskJob (or anything with its data fields) -> DataBundle
    make_task: Callable[[Any, Any], Any]  # (DataBundle, TaskJob) -> task object
    build: Callable[[TrainConfig], nn.Module]
    #: (run_dir, summary, data, models {variant: first-seed model}) -> markdown section (and writes PNGs)
    finish: Callable[[Path, dict[str, Any], Any, dict[str, nn.Module]], str]


def add_task_arguments(p: argparse.ArgumentParser, d: dict[str, Any], models: tuple[str, ...], data_help: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cluttered-mnist", help=data_help)
    g.add_argument("--image-size", type=int, default=None,
                   help=f"input size in pixels (default {d['image_size']}; the embedded 72x72 canvases are "
                        "area-resized, user images resized)")
    g.add_argument("--train-size", type=int, default=None,
                   help=f"training images per epoch (default {d['train_size']} embedded, all for user data)")
    g.add_argument("--canvases", choices=("fresh", "fixed"), default="fresh",
                   help="cluttered-mnist only: 'fresh' (default) draws new canvases from the training digits every "
                        "epoch; 'fixed' reuses the same --train-size canvases")
    g.add_argument("--test-size", type=int, default=None,
                   help=f"use the first N test images (default {d['test_size']} embedded, all for user data)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="user data: number of classes (default: inferred from the annotations)")
    g.add_argument("--cache-dir", default=None, help="where the embedded data set is cached")
    g = p.add_argument_group("variants and training (the same for every variant and seed)")
    g.add_argument("--model", default=d["model"], choices=models, help=f"network (default {d['model']})")
    g.add_argument("--variants", default=d["variants"],
                   help=f"comma-separated registry keys, 'none' = no attention (default {d['variants']})")
    g.add_argument("--seeds", default=str(d["seeds"]), help=f"number of seeds or a list (default {d['seeds']})")
    g.add_argument("--epochs", type=int, default=d["epochs"], help=f"default {d['epochs']}")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"default {d['batch_size']}")
    g.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']})")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"default {d['weight_decay']}")
    g.add_argument("--optimizer", default=d.get("optimizer", "sgd"), choices=("sgd", "adamw"),
                   help=f"sgd (Nesterov) or adamw (default {d.get('optimizer', 'sgd')})")
    g.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum of sgd (default 0.9)")
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    if "class_weights" in d:
        g.add_argument("--class-weights", default=d["class_weights"], choices=("balanced", "none"),
                       help="per-class cross-entropy weights: 'balanced' = square root of median-frequency "
                            f"balancing from the training masks, 'none' = unweighted (default {d['class_weights']})")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--jobs", type=int, default=d.get("jobs", 1),
                   help="trainings run at once in separate processes, the threads split between them "
                        f"(default {d.get('jobs', 1)})")
    g = p.add_argument_group("output")
    g.add_argument("--gallery-images", type=int, default=6, help="test images in the predictions PNG (default 6)")
    g.add_argument("--out", default=None, help="run folder to create (must not exist)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run with its options")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def fresh_epochs(job: Any) -> int | None:
    """How many epochs of new canvases to draw (``job.epochs`` with ``--canvases fresh``), else None."""
    return job.epochs if getattr(job, "canvases", "fixed") == "fresh" else None


def embedded(args: Any) -> bool:
    from ..data import parse_spec

    try:
        kind, _ = parse_spec(args.data)
    except ValueError:
        return False
    return kind == "embedded"


@dataclass
class TaskJob(ConfigRecord):
    """The typed config of a task command (``convattn segment`` / ``convattn detect``); saved in config.json.

    Field names match the command-line options; sizes left at None take the
    command's defaults on the embedded data and all of a user's data otherwise.
    """

    command: str
    variants: list[str]
    seeds: list[int]
    model: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float = 0.9
    warmup: float = 0.1
    optimizer: str = "sgd"
    data: str = "cluttered-mnist"
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    num_classes: int | None = None
    gallery_images: int = 6
    threads: int | None = None
    cache_dir: str | None = None
    canvases: str = "fresh"
    class_weights: str | None = None
    jobs: int = 1

    def validate(self, cmd: TaskCommand) -> TaskJob:
        from ..engine.options import (
            MAX_IMAGE_SIZE,
            check_fits,
            check_positive,
            check_threads,
            check_variant,
        )

        if self.command != cmd.name:
            raise ValueError(f"a {self.command!r} job cannot run as {cmd.name!r}")
        self.variants = [check_variant(v) for v in self.variants]
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct and not empty, got {self.variants!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        if self.canvases not in ("fresh", "fixed"):
            raise ValueError(f"unknown --canvases {self.canvases!r}; valid: fresh, fixed")
        if self.class_weights is None and "class_weights" in cmd.defaults:
            self.class_weights = cmd.defaults["class_weights"]
        if self.class_weights is not None:
            if "class_weights" not in cmd.defaults:
                raise ValueError(f"--class-weights is an option of 'convattn segment', not of {cmd.name!r}")
            if self.class_weights not in ("balanced", "none"):
                raise ValueError(f"unknown --class-weights {self.class_weights!r}; valid: balanced, none")
        for name in ("epochs", "batch_size", "gallery_images", "jobs"):
            check_positive(name.replace("_", "-"), getattr(self, name), allow_none=False)
        for name in ("image_size", "train_size", "test_size", "threads", "num_classes"):
            check_positive(name.replace("_", "-"), getattr(self, name))
        if self.model not in cmd.models:
            raise ValueError(f"unknown --model {self.model!r}; valid: {', '.join(cmd.models)}")
        if embedded(self):
            for k in ("image_size", "train_size", "test_size"):
                if getattr(self, k) is None:
                    setattr(self, k, cmd.defaults[k])
        check_threads(self.threads)
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"--image-size {self.image_size} is larger than the limit of {MAX_IMAGE_SIZE} pixels; "
                             f"valid: 1..{MAX_IMAGE_SIZE}")
        size = self.image_size or cmd.defaults["image_size"]
        n = (self.train_size or 0) * (self.epochs if embedded(self) and self.canvases == "fresh" else 1)
        n += self.test_size or 0
        # RGB float images, masks or boxes, and the embedded canvases they come from (twice while resizing)
        check_fits(f"{n:,} images at {size}x{size} (--train-size, --test-size, --image-size)", n * 2 * 28 * size ** 2)
        TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                    momentum=self.momentum, warmup=self.warmup, optimizer=self.optimizer).validate()
        return self


def task_job_from_args(cmd: TaskCommand, args: argparse.Namespace) -> TaskJob:
    from ..engine.options import parse_seeds, parse_variants

    return TaskJob(
        command=cmd.name, variants=parse_variants(args.variants), seeds=parse_seeds(args.seeds), model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, warmup=args.warmup, optimizer=args.optimizer, data=args.data, image_size=args.image_size,
        train_size=args.train_size, test_size=args.test_size, num_classes=args.num_classes,
        gallery_images=args.gallery_images, threads=args.threads, cache_dir=args.cache_dir,
        canvases=args.canvases, class_weights=getattr(args, "class_weights", None), jobs=args.jobs,
    )


def run_task_job(cmd: TaskCommand, args: argparse.Namespace) -> int:
    """The command line's entry: arguments (or ``--resume``) -> :class:`TaskJob` -> :func:`run_task`."""
    job = None if args.resume is not None else task_job_from_args(cmd, args)
    run_dir = run_task(cmd, job, out=args.out, resume=args.resume, quiet=args.quiet)
    print(f"report: {run_dir / 'report.md'}", flush=True)
    print(str(run_dir), flush=True)
    return 0


def run_task(cmd: TaskCommand, job: TaskJob | None, *, out: str | Path | None = None,
             resume: str | Path | None = None, quiet: bool = True) -> Path:
    """Train and report a task comparison; returns the run folder (metrics.json holds the numbers)."""
    from ..engine.experiment import run_experiment, variant_label
    from ..engine.progress import Progress
    from ..runs.folders import (
        check_out_free,
        load_job,
        new_run_dir,
        save_run_config,
        write_json,
    )
    from ..runs.report import summary_table

    t0 = time.perf_counter()
    resume_dir = None
    if resume is not None:
        job = load_job(resume, cmd.name, TaskJob)
        resume_dir = Path(resume).expanduser()
    else:
        check_out_free(out, job.cache_dir)
    job.validate(cmd)
    if job.threads:
        torch.set_num_threads(job.threads)
    data = cmd.load_data(job)
    if len(data.train) < job.batch_size:
        raise ValueError(f"--batch-size {job.batch_size} is larger than the training set ({len(data.train)} images); "
                         f"valid: 1..{len(data.train)}")
    base = TrainConfig(
        model=job.model, epochs=job.epochs, batch_size=job.batch_size, lr=job.lr,
        weight_decay=job.weight_decay, momentum=job.momentum, warmup=job.warmup, optimizer=job.optimizer,
        data=job.data,
        image_size=data.image_size, train_size=job.train_size, test_size=job.test_size,
        num_classes=data.num_classes, in_chans=data.in_chans, eval_batch_size=cmd.defaults.get("eval_batch_size", 100),
    ).validate()
    variants, seeds = job.variants, job.seeds
    if resume_dir is None:  # a resumed run keeps the config.json it was made with
        run_dir = new_run_dir(out, cmd.name)
        save_run_config(run_dir, {"command": cmd.name, "job": job.as_dict(), "train_config": base.as_dict(),
                                  "cache_dir": job.cache_dir})
    else:
        run_dir = resume_dir
    task = cmd.make_task(data, job)
    with Progress(quiet=quiet) as progress:
        if resume_dir is not None:
            progress.print(f"resuming {run_dir} with its saved options")
        summary = run_experiment(
            cmd.name, variants, seeds, base, data, run_dir, task=task, progress=progress,
            resume=resume_dir is not None, gallery_images=job.gallery_images, build=cmd.build,
            extra={"classes": list(data.classes)}, workers=job.jobs,
        )
    models: dict[str, nn.Module] = {}
    from ..engine.checkpoint import load_checkpoint

    for v in variants:
        name = variant_label(v)
        cfg = dataclasses.replace(base, attention=None if name == "none" else name, seed=seeds[0])
        model = cmd.build(cfg)
        model.load_state_dict(load_checkpoint(run_dir / "runs" / f"{name}-seed{seeds[0]}", optimizer=False)["model_state"])
        models[name] = model.eval()
    section = cmd.finish(run_dir, summary, data, models)
    summary["command_seconds"] = time.perf_counter() - t0
    write_json(run_dir / "metrics.json", summary)
    report = run_dir / "report.md"
    text = report.read_text()
    marker = "## Files"
    text = text.replace(marker, section.rstrip() + "\n\n" + marker, 1) if marker in text else text + "\n" + section
    report.write_text(text)
    if not quiet:
        progress.console.print(summary_table(summary))
        if not summary.get("converged"):
            progress.console.print(f"[bold red]{summary['convergence_warning']}[/] "
                                   f"(not plateaued: {', '.join(summary['not_converged'])})")
    return run_dir


def per_class_table(summary: dict[str, Any], prefix: str, classes: list[str], title: str) -> tuple[str, dict]:
    """Markdown table of the per-class test values ``test_<prefix><k>`` (mean over seeds) and the numbers."""
    import math

    from ..runs.stats import mean_std

    numbers: dict[str, dict[str, float | None]] = {}
    for name, v in summary["variants"].items():
        row = {}
        for k, c in enumerate(classes):
            vals = [h[-1].get(f"test_{prefix}{k}") for h in v["history"] if h]
            vals = [x for x in vals if x is not None and not math.isnan(x)]
            row[c] = mean_std(vals)[0] if vals else None
        numbers[name] = row
        v[f"per_class_{prefix.rstrip('_')}"] = row
    head = "| variant | " + " | ".join(classes) + " |"
    sep = "|---|" + "---:|" * len(classes)
    body = ["| " + name + " | " + " | ".join("–" if x is None else f"{x * 100:.1f}" for x in row.values()) + " |"
            for name, row in numbers.items()]
    return "\n".join([f"## {title}", "", head, sep, *body, ""]), numbers


def denormalise(images: torch.Tensor, data: Any) -> torch.Tensor:
    """Normalised (N, C, H, W) -> [0, 1] for display."""
    mean = torch.tensor(data.mean or [0.0] * images.shape[1]).view(1, -1, 1, 1)
    std = torch.tensor(data.std or [1.0] * images.shape[1]).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0, 1)
