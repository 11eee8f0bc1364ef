"""Variants x seeds on the same data, budget and schedule, then one report.

:func:`run_experiment` is what ``convattn compare`` (many variants and seeds)
and ``convattn train`` (one of each) run: every training goes through
:func:`convattn.engine.fit` with its own checkpoint folder
``<run>/runs/<variant>-seed<k>/``, so ``resume=True`` skips finished trainings
and continues an interrupted one from its last epoch. Afterwards (rank 0 only)
each variant is measured (parameters, FLOPs, latency), its spatial attention is
scored against the boxes, and the report is written.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..runs.report import write_report
from ..runs.stats import (
    NOT_CONVERGED,
    PLATEAU_POINTS,
    PLATEAU_RULE,
    compare_to_baseline,
    latency_verdict,
    mean_std,
    plateau,
)
from . import distributed
from .measure import count_flops, count_params
from .parallel import Training, train_many
from .progress import Progress
from .tasks import ClassificationTask, Task
from .trainer import TrainConfig

BASELINE = "none"


def variant_label(v: str | None) -> str:
    return BASELINE if v in (None, BASELINE) else str(v)


def run_experiment(
    command: str,
    variants: list[str],
    seeds: list[int],
    base: TrainConfig,
    data: Any,
    run_dir: str | Path,
    *,
    task: Task | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    world: distributed.World | None = None,
    gallery_images: int = 6,
    localisation_images: int = 500,
    latency_rounds: int = 15,
    latency_batch: int = 32,
    attention_options: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    threads_per_training: int | None = None,
    extra: dict[str, Any] | None = None,
    build: Any = None,
) -> dict[str, Any]:
    """Train every (variant, seed), measure and explain, write the report; returns the summary.

    Seeds are paired: under seed k every variant sees the same data in the same
    order and starts from the same weights in every layer it shares with the
    others (see :func:`convattn.models.separate_rng`). Afterwards each variant's
    convergence is judged by :func:`convattn.runs.stats.plateau`, its paired
    difference from ``none`` by :func:`convattn.runs.stats.compare_to_baseline`
    (Holm-corrected), and its eval latency is timed interleaved with the others
    (``latency_rounds`` rounds of a batch of ``latency_batch``) as a ratio to ``none``.

    ``workers > 1`` trains that many models at once, in forked processes with
    ``threads_per_training`` threads each (:mod:`convattn.engine.parallel`).
    ``build(cfg) -> nn.Module`` replaces :func:`convattn.engine.trainer.build_model`
    (task commands with their own models: segment, detect).
    """
    from ..explain import box_area_fraction, save_gallery, spatial_attention
    from ..explain.localisation import box_targets, energy_in_box, pointing_game

    t0 = time.perf_counter()
    task = task or ClassificationTask()
    world = world or distributed.current()
    progress = progress or Progress(quiet=True)
    run_dir = Path(run_dir)
    metric = task.metric
    has_boxes = bool(getattr(data, "has_boxes", False))
    test = getattr(data.test, "tensors", None)
    loc_images = loc_boxes = None
    if has_boxes and test is not None:
        loc_images = test["image"][:localisation_images]
        loc_boxes = box_targets(test)[:localisation_images]
    input_shape = data.input_shape if hasattr(data, "input_shape") else (1, data.in_chans, data.image_size, data.image_size)
    summary_variants: dict[str, dict[str, Any]] = {}
    gallery_maps: dict[str, torch.Tensor | None] = {}
    first_models: dict[str, torch.nn.Module] = {}
    attention_options = attention_options or {}
    threads_per_training = threads_per_training or max(1, torch.get_num_threads() // max(workers, 1))
    progress.overall(len(variants) * len(seeds))
    trainings = [
        Training(dataclasses.replace(base, attention=None if variant_label(v) == BASELINE else variant_label(v),
                                     seed=seed, attention_options=dict(attention_options.get(variant_label(v), {}))),
                 run_dir / "runs" / f"{variant_label(v)}-seed{seed}", f"{variant_label(v)} seed {seed}")
        for v in variants for seed in seeds
    ]
    if workers > 1 and world.is_main:
        progress.print(f"training {len(trainings)} models, {workers} at a time ({threads_per_training} thread(s) each)")
    results = iter(train_many(trainings, data, task, build=build, resume=resume, progress=progress, world=world,
                              workers=workers, threads_per_training=threads_per_training))
    for v in variants:
        name = variant_label(v)
        entry: dict[str, Any] = {"attention": None if name == BASELINE else name, "seeds": list(seeds), metric: [],
                                 "test_loss": [], "history": [], "train_seconds": [], "resumed_from_epoch": []}
        loc_seed: dict[str, list[float]] | None = {"pointing_game": [], "energy_in_box": []}
        for i, _seed in enumerate(seeds):
            res = next(results)
            entry[metric].append(res.final[metric])
            entry["test_loss"].append(res.final.get("loss"))
            entry["history"].append(res.history)
            entry["train_seconds"].append(sum(r.get("seconds", 0.0) for r in res.history))
            entry["resumed_from_epoch"].append(res.resumed_from)
            model = res.model
            if not world.is_main:
                continue
            if i == 0:
                entry["params"] = count_params(model)
                entry["flops"] = count_flops(model, input_shape)
                first_models[name] = model
            if loc_images is not None:
                maps = spatial_attention(model, loc_images)
                if maps is None:
                    loc_seed = None
                elif loc_seed is not None:
                    loc_seed["pointing_game"].append(pointing_game(maps, loc_boxes))
                    loc_seed["energy_in_box"].append(energy_in_box(maps, loc_boxes))
                if i == 0:
                    gallery_maps[name] = None if maps is None else maps[:gallery_images]
        m, s = mean_std(entry[metric])
        entry[f"{metric}_mean"], entry[f"{metric}_std"] = m, s
        entry["attention_options"] = dict(attention_options.get(name, {}))
        verdict = plateau([[row[f"test_{metric}"] for row in h] for h in entry["history"]])
        entry["plateau"] = verdict.as_dict()
        entry["converged"] = verdict.converged
        if loc_images is not None and loc_seed is not None:
            entry["localisation"] = {
                "pointing_game": mean_std(loc_seed["pointing_game"])[0],
                "energy_in_box": mean_std(loc_seed["energy_in_box"])[0],
                "pointing_game_per_seed": loc_seed["pointing_game"],
                "energy_in_box_per_seed": loc_seed["energy_in_box"],
            }
        else:
            entry["localisation"] = None
        summary_variants[name] = entry
    if not world.is_main:
        return {}
    baseline = BASELINE if BASELINE in summary_variants else None
    diffs = compare_to_baseline({n: e[metric] for n, e in summary_variants.items()}, baseline) if baseline else {}
    for name, entry in summary_variants.items():
        entry["vs_baseline"] = diffs[name].as_dict() if name in diffs else None
    progress.print("timing the trained models (eval, interleaved)...")
    latency = measure_latency(first_models, input_shape, baseline, batch=latency_batch, rounds=latency_rounds)
    for name, entry in summary_variants.items():
        entry.update(latency.get(name, {}))
    converged = all(e["converged"] for e in summary_variants.values())
    cfg_dict = base.as_dict()
    cfg_dict.pop("attention")
    cfg_dict.pop("seed")
    summary: dict[str, Any] = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metric": metric,
        "baseline": baseline,
        "seeds": list(seeds),
        "config": cfg_dict,
        "data": data.describe(),
        "has_boxes": loc_images is not None,
        "localisation_images": 0 if loc_images is None else len(loc_images),
        "localisation_method": "mean over blocks of the 'spatial' maps, bilinearly upsampled to the input size",
        "chance_localisation": None if loc_boxes is None else box_area_fraction(loc_boxes, data.image_size,
                                                                                 data.image_size),
        "threads": torch.get_num_threads(),
        "world_size": world.size,
        "converged": converged,
        "not_converged": [n for n, e in summary_variants.items() if not e["converged"]],
        "convergence_rule": PLATEAU_RULE.format(metric=metric, points=PLATEAU_POINTS),
        "convergence_warning": None if converged else NOT_CONVERGED,
        "latency_batch": latency_batch,
        "variants": summary_variants,
        **(extra or {}),
    }
    gallery = None
    if loc_images is not None and gallery_maps:
        save_gallery(
            run_dir / "attention_gallery.png",
            loc_images[:gallery_images],
            gallery_maps,
            loc_boxes[:gallery_images],
            title="spatial attention (mean over blocks), first seed; green: digit box(es)",
        )
        gallery = "attention_gallery.png"
    summary["gallery"] = gallery
    summary["wall_seconds"] = time.perf_counter() - t0
    write_report(run_dir, summary, gallery)
    return summary


def measure_latency(models: dict[str, torch.nn.Module], input_shape: tuple[int, ...], baseline: str | None, *,
                    batch: int = 32, rounds: int = 15, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Eval latency of each model, timed interleaved (:func:`convattn.bench.measure.time_interleaved`).

    Per variant: ``latency_s`` (median seconds per image), its per-round values,
    and against ``baseline`` the per-round ratio's median and 25-75 % range with
    the :func:`convattn.runs.stats.latency_verdict` (a number, or "noise").
    """
    from ..bench.measure import time_interleaved

    if not models:
        return {}
    threads = threads or torch.get_num_threads()
    x = torch.randn((batch,) + tuple(input_shape[1:]), generator=torch.Generator().manual_seed(0))
    fns = {}
    for name, model in models.items():
        model.eval()

        def fn(model=model):
            with torch.no_grad():
                return model(x)

        fns[name] = fn
    times = time_interleaved(fns, threads=threads, rounds=rounds, block_s=0.05, max_s=20.0)
    base = times.get(baseline) if baseline else None
    out: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        row: dict[str, Any] = {"latency_s": statistics.median(ts) / batch,
                               "latency_rounds_s": [t / batch for t in ts], "latency_threads": threads}
        if base is not None and name != baseline:
            ref = models[baseline]
            adds = sum(p.numel() for p in models[name].parameters()) >= sum(p.numel() for p in ref.parameters())
            row["latency"] = latency_verdict(ts, base, adds_work=adds).as_dict()
        out[name] = row
    return out
