"""``convattn eval``: evaluate a saved checkpoint on a data set (its own by default)."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint (a train/compare run folder or its checkpoint) on a data set; writes a small report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder of `convattn train`, runs/<variant>-seed<k> of a compare run, "
                                      "or a checkpoint's latest.json")
    p.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test images (default: as trained)")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size (default 500)")
    p.add_argument("--cache-dir", default=None, help="cache folder of the embedded data set")
    p.add_argument("--out", default=None, help="report folder to create (default runs/eval-<time>)")
    p.add_argument("--quiet", action="store_true", help="no table, only the report path")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import load_data
    from ..engine import ClassificationTask, TrainConfig, build_model, evaluate, load_checkpoint
    from ..engine.options import check_positive
    from ..explain import box_area_fraction, localisation_scores
    from ..runs.folders import check_out_free, new_run_dir, write_json

    check_positive("batch-size", args.batch_size, allow_none=False)
    check_positive("test-size", args.test_size)
    check_out_free(args.out, args.cache_dir)
    ck = load_checkpoint(args.checkpoint, optimizer=False)
    try:
        cfg = TrainConfig.from_dict(ck["meta"]["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {args.checkpoint} has an unusable config: {e}") from None
    spec = args.data or cfg.data
    same = args.data is None or args.data == cfg.data
    test_size = args.test_size if args.test_size is not None else (cfg.test_size if same else None)
    data = load_data(spec, image_size=cfg.image_size, train_size=1, test_size=test_size, cache=args.cache_dir)
    if data.num_classes != cfg.num_classes or data.in_chans != cfg.in_chans:
        raise ValueError(
            f"data {spec} has {data.num_classes} classes and {data.in_chans} channel(s) but the checkpoint expects "
            f"{cfg.num_classes} and {cfg.in_chans}"
        )
    trained = ck["meta"].get("classes")
    if trained is not None and list(data.classes) != trained:
        raise ValueError(f"data {spec} has classes {_names(data.classes)} but the checkpoint was trained on "
                         f"{_names(trained)}; evaluate on data with the same class names")
    model = build_model(cfg)
    try:
        model.load_state_dict(ck["model_state"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {args.checkpoint} does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
    task = ClassificationTask()
    metrics = evaluate(model, data.test, task, batch_size=args.batch_size)
    loc = None
    test = getattr(data.test, "tensors", None)
    if data.has_boxes and test is not None:
        loc = localisation_scores(model, test["image"][:500], test["box"][:500])
    run_dir = new_run_dir(args.out, "eval")
    result = {
        "command": "eval",
        "checkpoint": str(Path(ck["meta"]["_folder"])),
        "epoch": ck["meta"]["epoch"],
        "config": cfg.as_dict(),
        "data": data.describe(),
        "test": metrics,
        "localisation": loc,
        "chance_localisation": box_area_fraction(test["box"][:500], data.image_size, data.image_size)
        if loc is not None else None,
    }
    write_json(run_dir / "metrics.json", result)
    lines = [
        f"# convattn eval: {cfg.model} + {cfg.attention or 'none'} (seed {cfg.seed}, epoch {result['epoch']})",
        "",
        f"Checkpoint: `{result['checkpoint']}`; data: **{data.name}** ({len(data.test)} test images).",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| test accuracy % | {metrics['accuracy'] * 100:.2f} |",
        f"| test loss | {metrics['loss']:.4f} |",
    ]
    if loc is not None:
        lines += [f"| pointing game | {loc['pointing_game']:.3f} |", f"| energy in box | {loc['energy_in_box']:.3f} |"]
    elif data.has_boxes:
        lines += ["| pointing game | no spatial map |"]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    if not args.quiet:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"eval {cfg.model} + {cfg.attention or 'none'} on {data.name}")
        t.add_column("metric")
        t.add_column("value", justify="right")
        t.add_row("test accuracy %", f"{metrics['accuracy'] * 100:.2f}")
        t.add_row("test loss", f"{metrics['loss']:.4f}")
        if loc is not None:
            t.add_row("pointing game", f"{loc['pointing_game']:.3f}")
            t.add_row("energy in box", f"{loc['energy_in_box']:.3f}")
        Console().print(t)
    print(f"report: {run_dir / 'report.md'}")
    print(str(run_dir))
    return 0


def _names(classes: list[str], n: int = 6) -> str:
    shown = ", ".join(classes[:n])
    return f"[{shown}{', ...' if len(classes) > n else ''}]"
