"""The job behind ``convattn train``, ``convattn compare`` and :func:`convattn.compare`.

A job is a typed :class:`Comparison` (the command line only turns its
arguments into one) run by :func:`run_comparison`, which returns a
:class:`CompareResult` whose ``summary`` is what ``metrics.json`` holds.

Order of work, so that bad input never leaves anything behind: validate the
options, load the data (a missing path fails here), check the variants and
their options, and only then create the run folder, write ``config.json``,
train, and report. Under ``torchrun`` every rank runs this; rank 0 creates the
folder and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..runs.folders import (
    check_out_free,
    load_job,
    new_run_dir,
    save_run_config,
    to_jsonable,
    write_json,
)
from . import distributed
from .experiment import run_experiment
from .options import (
    DEFAULTS,
    MAX_IMAGE_SIZE,
    MAX_SEEDS,
    check_positive,
    check_threads,
    check_variant,
    parse_attention_options,
)
from .progress import Progress
from .trainer import ConfigRecord, TrainConfig

DEFAULT_VARIANTS = ("none", "se", "eca", "cbam", "parallel_gate")
CANVASES = ("fresh", "fixed")


@dataclass
class Comparison(ConfigRecord):
    """Everything a comparison (or a single training) needs; saved in ``config.json``.

    ``train_size`` is the number of training images per epoch; on the embedded
    data with ``canvases="fresh"`` every epoch draws that many new canvases from
    the training digits (``"fixed"``: the same canvases every epoch). Sizes left
    at None take the embedded set's defaults, or all of a user's data.
    ``train_sizes`` runs the comparison once per training-set size (fixed
    canvases, the same number of optimisation steps for every size).
    The training fields left at None (model, epochs, batch size, optimiser, ...)
    take the data's recipe (:func:`convattn.engine.options.recipe_for`) when the
    job is validated: the image recipe, or the time-series one for ``ucr:NAME``.
    """

    command: str = "compare"
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data: str = "cluttered-mnist"
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    warmup: float | None = None
    optimizer: str | None = None
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    canvases: str = "fresh"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_sizes: list[int] | None = None
    gallery_images: int = 6
    localisation_images: int = 500
    threads: int | None = None
    jobs: int | None = None
    cache_dir: str | None = None

    def validate(self) -> Comparison:
        """Every impossible option -> one ValueError, before anything is loaded or written.

        Fills the training fields left at None from the data's recipe."""
        from ..data import parse_spec
        from ..models import list_models
        from .options import recipe_for, unknown_model

        for name, value in recipe_for(self.data).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if not self.variants:
            raise ValueError("no variants; give a comma-separated list such as none,se,cbam")
        dup = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if dup:
            raise ValueError(f"variants {dup} are listed more than once")
        self.variants = [check_variant(v) for v in self.variants]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {self.seeds!r}")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"{len(self.seeds)} seeds are more than the limit of {MAX_SEEDS}")
        for name in ("epochs", "batch_size", "gallery_images", "localisation_images"):
            check_positive(name.replace("_", "-"), getattr(self, name), allow_none=False)
        for name in ("image_size", "train_size", "test_size", "threads", "jobs"):
            check_positive(name.replace("_", "-"), getattr(self, name))
        check_threads(self.threads)
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"--image-size {self.image_size} is larger than the limit of {MAX_IMAGE_SIZE} pixels; "
                             f"valid: 8..{MAX_IMAGE_SIZE}")
        if self.model not in list_models():
            raise unknown_model(self.model)
        if self.canvases not in CANVASES:
            raise ValueError(f"--canvases must be one of {', '.join(CANVASES)}, got {self.canvases!r}")
        kind, _ = parse_spec(self.data)
        if self.train_sizes is not None:
            if not self.train_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                           for n in self.train_sizes):
                raise ValueError(f"--train-sizes must be positive integers, got {self.train_sizes!r}")
            if len(set(self.train_sizes)) != len(self.train_sizes):
                raise ValueError(f"--train-sizes lists a size more than once: {self.train_sizes!r}")
            if self.train_size is not None:
                raise ValueError("give --train-size or --train-sizes, not both")
        self.attention_options = parse_attention_options(self.attention_options, self.variants)
        self.train_config(in_chans=1, num_classes=2, image_size=32).validate()
        return self

    @property
    def embedded(self) -> bool:
        from ..data import parse_spec

        return parse_spec(self.data)[0] == "embedded"

    def sizes(self) -> dict[str, int | None]:
        """Image size and split sizes, with the embedded set's defaults filled in."""
        e = self.embedded
        return {
            "image_size": self.image_size if self.image_size is not None else (DEFAULTS["image_size"] if e else None),
            "train_size": self.train_size if self.train_size is not None else (DEFAULTS["train_size"] if e else None),
            "test_size": self.test_size if self.test_size is not None else (DEFAULTS["test_size"] if e else None),
        }

    def train_config(self, *, in_chans: int, num_classes: int, image_size: int) -> TrainConfig:
        s = self.sizes()
        return TrainConfig(
            model=self.model, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, momentum=self.momentum, warmup=self.warmup, optimizer=self.optimizer,
            data=self.data,
            image_size=image_size, train_size=s["train_size"], test_size=s["test_size"],
            num_classes=num_classes, in_chans=in_chans,
        )

    def workers(self) -> tuple[int, int]:
        """(trainings at once, threads each): ``jobs`` if set; else, for the small CIFAR
        ResNets, one training per core (up to 4) on one thread each; else one at a time."""
        from ..models.cifar_resnet import CIFAR_DEPTHS

        threads = self.threads or torch.get_num_threads()
        n = len(self.variants) * len(self.seeds)
        jobs = self.jobs if self.jobs is not None else (min(threads, 4) if self.model in CIFAR_DEPTHS else 1)
        jobs = max(1, min(jobs, n))
        return jobs, max(1, threads // jobs)

    def load_data(self):
        from ..data import load_data

        s = self.sizes()
        fresh = self.embedded and self.canvases == "fresh" and self.train_sizes is None
        return load_data(self.data, image_size=s["image_size"], train_size=s["train_size"],
                         test_size=s["test_size"], cache=self.cache_dir, fresh_epochs=self.epochs if fresh else None)


@dataclass
class CompareResult:
    """What a comparison found; ``summary`` equals the run's ``metrics.json``."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def converged(self) -> bool:
        return bool(self.summary.get("converged"))

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.summary["variants"]

    def accuracy(self, variant: str) -> tuple[float, float]:
        """(mean, std) over seeds of the headline metric, as fractions."""
        m = self.summary["metric"]
        return self.variants[variant][f"{m}_mean"], self.variants[variant][f"{m}_std"]

    def difference(self, variant: str) -> dict[str, Any] | None:
        """The paired difference from the baseline (points, interval, p-values, statement)."""
        return self.variants[variant].get("vs_baseline")


def comparison_from_args(command: str, args: argparse.Namespace, variants: list[str], seeds: list[int]) -> Comparison:
    return Comparison(
        command=command, variants=list(variants), seeds=list(seeds), data=args.data, model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, warmup=args.warmup, optimizer=getattr(args, "optimizer", None),
        image_size=args.image_size, train_size=args.train_size,
        test_size=args.test_size, canvases=args.canvases, attention_options=args.attention_options or {},
        train_sizes=getattr(args, "train_sizes", None),
        gallery_images=getattr(args, "gallery_images", 6), localisation_images=getattr(args, "localisation_images", 500),
        threads=args.threads, jobs=getattr(args, "jobs", None), cache_dir=args.cache_dir,
    )


def load_comparison(run_dir: str | Path, command: str) -> Comparison:
    """The :class:`Comparison` saved in a run folder's ``config.json``."""
    return load_job(run_dir, command, Comparison)


def run_comparison(job: Comparison, *, out: str | Path | None = None, resume: str | Path | None = None,
                   quiet: bool = True, console_summary: bool = False) -> CompareResult:
    """Validate, load the data, train every variant x seed, report; see :class:`Comparison`."""
    t0 = time.perf_counter()
    resume_dir = None
    if resume is not None:
        job = load_comparison(resume, job.command)
        resume_dir = Path(resume).expanduser()
    else:
        check_out_free(out, job.cache_dir)
    job.validate()
    if job.threads:
        torch.set_num_threads(job.threads)
    world = distributed.setup()
    try:
        if job.train_sizes is not None:
            return _run_sample_efficiency(job, out, resume_dir, quiet, t0)
        data = job.load_data()
        base = job.train_config(in_chans=data.in_chans, num_classes=data.num_classes, image_size=data.image_size)
        _check_batch(base, data, world)
        _check_models(job, base)
        run_dir = None
        if world.is_main:
            if resume_dir is None:  # a resumed run keeps the config.json it was made with
                run_dir = new_run_dir(out, job.command)
                save_run_config(run_dir, {"command": job.command, "job": job.as_dict(), "train_config": base.as_dict(),
                                          "cache_dir": job.cache_dir})
            else:
                run_dir = resume_dir
        run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else None, world))
        quiet = quiet or not world.is_main
        with Progress(quiet=quiet) as progress:
            if resume_dir is not None:
                progress.print(f"resuming {run_dir} with its saved options")
            summary = run_experiment(
                job.command, job.variants, job.seeds, base, data, run_dir,
                progress=progress, resume=resume_dir is not None, world=world,
                gallery_images=job.gallery_images, localisation_images=job.localisation_images,
                attention_options=job.attention_options,
                workers=job.workers()[0], threads_per_training=job.workers()[1],
                extra={"canvases": job.canvases if job.embedded else None,
                       "published": published_baseline(job.data, job.model)},
            )
        if world.is_main:
            summary["command_seconds"] = time.perf_counter() - t0
            write_json(run_dir / "metrics.json", summary)
            if console_summary:
                _print_summary(progress, summary)
    finally:
        distributed.teardown()
    return CompareResult(run_dir, to_jsonable(summary) if summary else {})


def published_baseline(data: str, model: str) -> dict[str, Any] | None:
    """The published accuracy of ``model`` on ``data`` (time-series sets), or None."""
    from ..data import parse_spec

    if parse_spec(data)[0] != "ucr":
        return None
    from ..data.ucr import published

    return published(data, model)


def _check_batch(base: TrainConfig, data: Any, world: distributed.World) -> None:
    if data.num_classes < 2:
        raise ValueError(f"data {data.name} has {data.num_classes} class ({', '.join(data.classes)}); a classifier "
                         "needs at least 2 classes")
    if base.batch_size % world.size:
        raise ValueError(f"--batch-size {base.batch_size} must be divisible by the number of processes ({world.size})")
    if len(data.train) < base.batch_size:
        raise ValueError(
            f"--batch-size {base.batch_size} is larger than the training set ({len(data.train)} images); "
            f"valid: 1..{len(data.train)}"
        )


def _check_models(job: Comparison, base: TrainConfig) -> None:
    """Build every variant's model once, so that options that do not fit it fail before any folder exists."""
    from .trainer import build_model

    for v in job.variants:
        cfg = dataclasses.replace(base, attention=None if v == "none" else v,
                                  attention_options=dict(job.attention_options.get(v, {})))
        try:
            build_model(cfg)
        except (TypeError, ValueError) as e:
            opts = f" with {cfg.attention_options}" if cfg.attention_options else ""
            raise ValueError(f"attention {v!r}{opts} does not fit {job.model}: {' '.join(str(e).split())}") from None


def _print_summary(progress: Progress, summary: dict[str, Any]) -> None:
    from ..runs.report import summary_table

    progress.console.print(summary_table(summary))
    if summary.get("converged"):
        progress.console.print("every variant plateaued by the convergence rule (see report.md)")
    else:
        progress.console.print(f"[bold red]{summary['convergence_warning']}[/] "
                               f"(not plateaued: {', '.join(summary['not_converged'])})")
    for v in summary["variants"].values():
        if v.get("vs_baseline"):
            progress.console.print(f"  {v['vs_baseline']['statement']}")


def _run_sample_efficiency(job: Comparison, out, resume_dir, quiet, t0) -> CompareResult:
    """One comparison per training-set size, then accuracy against size with the intervals."""
    from ..runs.report import write_sample_efficiency

    sizes = sorted(job.train_sizes)
    if resume_dir is None:  # a resumed run keeps the config.json it was made with
        run_dir = new_run_dir(out, job.command)
        save_run_config(run_dir, {"command": job.command, "job": job.as_dict(), "cache_dir": job.cache_dir})
    else:
        run_dir = resume_dir
    steps = max(sizes) * job.epochs
    per_size: dict[str, Any] = {}
    for n in sizes:
        epochs = max(job.epochs, round(steps / n))
        sub = dataclasses.replace(job, train_sizes=None, train_size=n, canvases="fixed", epochs=epochs)
        sub_dir = run_dir / f"size-{n}"
        if (sub_dir / "metrics.json").is_file():  # finished before an interruption
            per_size[str(n)] = json.loads((sub_dir / "metrics.json").read_text())
            continue
        res = run_comparison(sub, out=sub_dir, quiet=quiet) if not (sub_dir / "config.json").exists() else \
            run_comparison(sub, resume=sub_dir, quiet=quiet)
        per_size[str(n)] = res.summary
    summary = {"command": job.command, "sample_efficiency": True, "train_sizes": sizes, "job": job.as_dict(),
               "per_size": per_size, "converged": all(s["converged"] for s in per_size.values()),
               "command_seconds": time.perf_counter() - t0}
    write_sample_efficiency(run_dir, summary)
    write_json(run_dir / "metrics.json", summary)
    return CompareResult(run_dir, to_jsonable(summary))


def run_training_job(command: str, args: argparse.Namespace, variants: list[str], seeds: list[int]) -> int:
    """The command line's entry: arguments -> :class:`Comparison` -> :func:`run_comparison`."""
    job = Comparison(command=command) if args.resume is not None else comparison_from_args(command, args, variants, seeds)
    res = run_comparison(job, out=args.out, resume=args.resume, quiet=args.quiet, console_summary=not args.quiet)
    if res.summary:
        print(f"report: {res.run_dir / 'report.md'}", flush=True)
        print(str(res.run_dir), flush=True)
    return 0


def compare(variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS, seeds: int | list[int] = 3, *,
            out: str | Path | None = None, quiet: bool = True, **options: Any) -> CompareResult:
    """Run ``convattn compare`` from Python; ``options`` are :class:`Comparison`'s fields.

    >>> res = convattn.compare(["none", "se"], seeds=3, epochs=8)   # doctest: +SKIP
    >>> res.difference("se")["statement"]                              # doctest: +SKIP
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    job = Comparison(command="compare", variants=list(variants), seeds=seed_list, **options)
    return run_comparison(job, out=out, quiet=quiet)
