"""The job behind ``convattn train`` and ``convattn compare``.

Order of work, so that bad input never leaves anything behind: validate the
options, load the data (a missing path fails here), check the variants, and
only then create the run folder, write ``config.json``, train, and report.
Under ``torchrun`` every rank runs this; rank 0 creates the folder and writes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import distributed
from .experiment import run_experiment
from .options import (
    check_variant,
    data_kwargs,
    load_run_config,
    save_run_config,
    train_config,
    validate_training_args,
)
from .progress import Progress
from .report import check_out_free, new_run_dir, summary_table

#: argparse fields saved in config.json and restored by --resume
SAVED = ("data", "image_size", "train_size", "test_size", "model", "epochs", "batch_size", "lr",
         "weight_decay", "momentum", "warmup", "gallery_images", "localisation_images")


def run_training_job(command: str, args: argparse.Namespace, variants: list[str], seeds: list[int]) -> int:
    t0 = time.perf_counter()
    resume_dir = None
    if args.resume is not None:
        payload = load_run_config(args.resume, command)
        for k, v in payload["args"].items():
            setattr(args, k, v)
        variants, seeds = payload["variants"], payload["seeds"]
        resume_dir = Path(args.resume).expanduser()
    else:
        check_out_free(args.out)
    validate_training_args(args)
    variants = [check_variant(v) for v in variants]
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    world = distributed.setup()
    try:
        from ..data import load_data

        data = load_data(args.data, **data_kwargs(args))
        base = train_config(args, data)
        if base.batch_size % world.size:
            raise ValueError(f"--batch-size {base.batch_size} must be divisible by the number of processes ({world.size})")
        if len(data.train) < base.batch_size:
            raise ValueError(
                f"--batch-size {base.batch_size} is larger than the training set ({len(data.train)} images); "
                f"valid: 1..{len(data.train)}"
            )
        run_dir = None
        if world.is_main:
            run_dir = resume_dir if resume_dir is not None else new_run_dir(args.out, command)
            save_run_config(
                run_dir,
                {
                    "command": command,
                    "variants": variants,
                    "seeds": seeds,
                    "args": {k: getattr(args, k, None) for k in SAVED},
                    "train_config": base.as_dict(),
                    "cache_dir": args.cache_dir,
                },
            )
        run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir else None, world))
        quiet = args.quiet or not world.is_main
        with Progress(quiet=quiet) as progress:
            if resume_dir is not None:
                progress.print(f"resuming {run_dir} with its saved options")
            summary = run_experiment(
                command, variants, seeds, base, data, run_dir,
                progress=progress, resume=resume_dir is not None, world=world,
                gallery_images=getattr(args, "gallery_images", 6) or 6,
                localisation_images=getattr(args, "localisation_images", 500) or 500,
            )
        if world.is_main:
            summary["command_seconds"] = time.perf_counter() - t0
            if not args.quiet:
                progress.console.print(summary_table(summary))
            print(f"report: {run_dir / 'report.md'}", flush=True)
            print(str(run_dir), flush=True)
    finally:
        distributed.teardown()
    return 0

