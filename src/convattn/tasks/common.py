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

from ..engine.trainer import TrainConfig

SAVED = ("data", "image_size", "train_size", "test_size", "model", "epochs", "batch_size", "lr",
         "weight_decay", "momentum", "warmup", "gallery_images", "num_classes")


@dataclass
class TaskCommand:
    """A task command's pieces (see segmentation.py / detection.py)."""

    name: str
    defaults: dict[str, Any]
    models: tuple[str, ...]
    load_data: Callable[[argparse.Namespace], Any]
    make_task: Callable[[Any], Any]
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
                   help=f"use the first N training images (default {d['train_size']} embedded, all for user data)")
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
    g.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate of SGD (default {d['lr']})")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"default {d['weight_decay']}")
    g.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (default 0.9)")
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("output")
    g.add_argument("--gallery-images", type=int, default=6, help="test images in the predictions PNG (default 6)")
    g.add_argument("--out", default=None, help="run folder to create (must not exist)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run with its options")
    g.add_argument("--quiet", action="store_true", help="no progress output")


def embedded(args: argparse.Namespace) -> bool:
    from ..data import parse_spec

    try:
        kind, _ = parse_spec(args.data)
    except ValueError:
        return False
    return kind == "embedded"


def run_task_job(cmd: TaskCommand, args: argparse.Namespace) -> int:
    from ..engine.experiment import run_experiment, variant_label
    from ..engine.options import (
        check_positive,
        check_variant,
        parse_seeds,
        parse_variants,
    )
    from ..engine.progress import Progress
    from ..runs.folders import (
        check_out_free,
        load_run_config,
        new_run_dir,
        save_run_config,
        write_json,
    )
    from ..runs.report import summary_table

    t0 = time.perf_counter()
    resume_dir = None
    if args.resume is not None:
        payload = load_run_config(args.resume, cmd.name)
        for k, v in payload["args"].items():
            setattr(args, k, v)
        variants, seeds = [check_variant(v) for v in payload["variants"]], payload["seeds"]
        resume_dir = Path(args.resume).expanduser()
    else:
        check_out_free(args.out)
        variants, seeds = parse_variants(args.variants), parse_seeds(args.seeds)
    for name in ("epochs", "batch_size", "gallery_images"):
        check_positive(name.replace("_", "-"), getattr(args, name), allow_none=False)
    for name in ("image_size", "train_size", "test_size", "threads", "num_classes"):
        check_positive(name.replace("_", "-"), getattr(args, name))
    if args.model not in cmd.models:
        raise ValueError(f"unknown --model {args.model!r}; valid: {', '.join(cmd.models)}")
    d = cmd.defaults
    if embedded(args):
        for k in ("image_size", "train_size", "test_size"):
            if getattr(args, k) is None:
                setattr(args, k, d[k])
    TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                momentum=args.momentum, warmup=args.warmup).validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = cmd.load_data(args)
    if len(data.train) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the training set ({len(data.train)} images); "
                         f"valid: 1..{len(data.train)}")
    base = TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, warmup=args.warmup, data=args.data,
        image_size=data.image_size, train_size=args.train_size, test_size=args.test_size,
        num_classes=data.num_classes, in_chans=data.in_chans, eval_batch_size=d.get("eval_batch_size", 100),
    ).validate()
    run_dir = resume_dir if resume_dir is not None else new_run_dir(args.out, cmd.name)
    save_run_config(run_dir, {"command": cmd.name, "variants": variants, "seeds": seeds,
                              "args": {k: getattr(args, k, None) for k in SAVED},
                              "train_config": base.as_dict(), "cache_dir": args.cache_dir})
    task = cmd.make_task(data)
    with Progress(quiet=args.quiet) as progress:
        if resume_dir is not None:
            progress.print(f"resuming {run_dir} with its saved options")
        summary = run_experiment(
            cmd.name, variants, seeds, base, data, run_dir, task=task, progress=progress,
            resume=resume_dir is not None, gallery_images=args.gallery_images, build=cmd.build,
            extra={"classes": list(data.classes)},
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
    if not args.quiet:
        progress.console.print(summary_table(summary))
    print(f"report: {report}", flush=True)
    print(str(run_dir), flush=True)
    return 0


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
