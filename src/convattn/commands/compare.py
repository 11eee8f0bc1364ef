"""``convattn compare``: attention variants x seeds, same data, budget and schedule; one report."""

from __future__ import annotations

import argparse

HELP = ("train several attention variants x paired seeds on the same data and budget until they plateau, then "
        "report test accuracy, the paired difference from none with its interval, params, FLOPs, latency and "
        "where each variant looks")

DEFAULT_VARIANTS = "none,se,eca,cbam,parallel_gate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..engine.options import add_training_arguments

    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated registry keys, 'none' = no attention (default {DEFAULT_VARIANTS})")
    p.add_argument("--seeds", default="3", help="number of seeds (3 = seeds 0,1,2) or a comma-separated list")
    p.add_argument("--gallery-images", type=int, default=6, help="test images in the attention gallery (default 6)")
    p.add_argument("--localisation-images", type=int, default=500,
                   help="test images scored by the pointing game (default 500)")
    p.add_argument("--train-sizes", default=None, metavar="N,N,...",
                   help="sample efficiency: run the comparison at each training-set size (fixed canvases, the same "
                        "number of steps for each) and plot accuracy against size")
    add_training_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..engine.jobs import run_training_job
    from ..engine.options import check_positive, parse_seeds, parse_variants

    check_positive("gallery-images", args.gallery_images, allow_none=False)
    check_positive("localisation-images", args.localisation_images, allow_none=False)
    variants = parse_variants(args.variants) if args.resume is None else []
    seeds = parse_seeds(args.seeds) if args.resume is None else []
    args.train_sizes = None if args.train_sizes is None else parse_sizes(args.train_sizes)
    return run_training_job("compare", args, variants, seeds)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--train-sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"--train-sizes must be comma-separated positive integers, got {text!r}")
    return sizes
