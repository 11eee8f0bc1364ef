"""``convattn bench``: what attention modules and models with attention cost.

Modules (all registered, or ``--modules se,cbam``) at ``--shapes``: params,
FLOPs, eval and train latency as ratios to the memory-traffic floor and to
timm's module, peak memory. Models (``--model resnet50 --attention se,cbam,eca``):
the same against the plain model and timm's model with its own attention.
Writes bench.md, bench.json and bench.png into a new folder and prints it.
"""

from __future__ import annotations

import argparse

HELP = "measure params, FLOPs, latency and peak memory of attention modules or of models with attention"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modules", help="comma-separated registry keys (default: every registered module)")
    p.add_argument("--model", help="benchmark this backbone (see create_model) instead of modules alone")
    p.add_argument("--attention", default="se,cbam,eca",
                   help="with --model: comma-separated attentions to compare with the plain model (default se,cbam,eca)")
    p.add_argument("--where", default="block", help="with --model: placement passed to create_model, block "
                   "(default) or stage")
    p.add_argument("--shapes", help="input shapes BxCxHxW, comma-separated (default 8x256x28x28,32x64x56x56 for "
                   "modules, 8x3x224x224 for --model)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float64")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for inputs and weights")
    p.add_argument("--threads", type=int, default=2, help="torch threads while timing (default 2)")
    p.add_argument("--modes", default=None, help="eval,train (default both for modules, eval for --model)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (default 15)")
    p.add_argument("--block-ms", type=float, default=None,
                   help="time per variant per round in ms (default 50 for modules, 300 for --model)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-peers", action="store_true", help="skip timm's implementations")
    p.add_argument("--out", help="output folder (must not exist; default runs/bench-<time>)")


def _validate(args: argparse.Namespace):
    from ..bench.options import (
        DEFAULT_MODEL_SHAPE,
        DEFAULT_MODULE_SHAPES,
        check_buildable,
        check_modes,
        check_modules,
        check_shapes_fit,
        check_threads,
        check_where,
        parse_dtype,
        parse_names,
        parse_shapes,
    )

    dtype = parse_dtype(args.dtype)
    check_threads(args.threads)
    check_where(args.where)
    if args.block_ms is not None and not args.block_ms > 0:
        raise ValueError(f"--block-ms must be > 0, got {args.block_ms}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    modes = check_modes(parse_names(args.modes)) if args.modes else (("eval",) if args.model else ("eval", "train"))
    if args.model:
        if args.modules:
            raise ValueError("give either --modules or --model, not both")
        from ..models import list_models

        if args.model not in list_models():
            import difflib

            close = difflib.get_close_matches(args.model, list_models(), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"unknown model {args.model!r}; {hint}valid: {', '.join(list_models())}")
        attentions = check_modules(parse_names(args.attention))
        if not attentions:
            raise ValueError("--attention is empty; give registry keys such as se,cbam,eca")
        shapes = parse_shapes(args.shapes) if args.shapes else [DEFAULT_MODEL_SHAPE]
        if len(shapes) != 1 or len(shapes[0]) != 4:
            raise ValueError(f"--model takes one BxCxHxW shape, got {args.shapes!r}")
        check_shapes_fit(shapes, dtype)
        return modes, attentions, shapes
    from ..registry import list_attention

    names = check_modules(parse_names(args.modules)) if args.modules else list_attention()
    shapes = parse_shapes(args.shapes) if args.shapes else list(DEFAULT_MODULE_SHAPES)
    check_shapes_fit(shapes, dtype)
    check_buildable(names, shapes)
    return modes, names, shapes


def run(args: argparse.Namespace) -> int:

    from rich.console import Console

    from ..bench import print_table, run_models, run_modules, write_outputs
    from ..runs.folders import check_out_free, new_run_dir

    modes, names, shapes = _validate(args)  # every bad option fails here, before any work
    check_out_free(args.out)
    console = Console(stderr=True)
    common = dict(dtype=args.dtype, channels_last=args.channels_last, threads=args.threads, modes=modes,
                  peers=not args.no_peers, memory=not args.no_memory, rounds=args.rounds)
    if args.block_ms is not None:
        common["block_s"] = args.block_ms / 1000.0
    with console.status("benchmarking...") as status:
        def progress(msg: str) -> None:
            status.update(f"benchmarking: {msg}")

        if args.model:
            result = run_models(args.model, names, where=args.where, shape=shapes[0], progress=progress, **common)
        else:
            result = run_modules(names, shapes, progress=progress, **common)
    print_table(result)
    out = new_run_dir(args.out, "bench")  # made only once the measurements succeeded
    paths = write_outputs(result, out)
    print(f"wrote {paths['md']}, {paths['json'].name} and {paths['png'].name} in {out}")
    return 0
