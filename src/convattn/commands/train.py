"""``convattn train``: one model (one attention variant, one seed), with checkpoints and a report.

Runs as is or under ``torchrun --nproc_per_node N -m convattn.cli train ...``
(DistributedDataParallel over gloo on CPU).
"""

from __future__ import annotations

import argparse

HELP = "train one model (a backbone with one attention variant, one seed); checkpoints every epoch, report at the end"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.options import add_training_arguments

    p.add_argument("--attention", default="none", help="registry key, or 'none' for the plain backbone (default none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..engine.jobs import run_training_job
    from ..engine.options import check_variant

    if args.resume is None:
        if args.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
        variants, seeds = [check_variant(args.attention)], [args.seed]
    else:
        variants, seeds = [], []
    args.gallery_images, args.localisation_images, args.train_sizes = 6, 500, None
    return run_training_job("train", args, variants, seeds)
