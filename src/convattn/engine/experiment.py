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
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .measure import count_flops, count_params, latency_per_image
from .progress import Progress
from .report import mean_std, welch, write_report
from .tasks import ClassificationTask, Task
from .trainer import TrainConfig, fit

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
    latency_time: float = 0.3,
    extra: dict[str, Any] | None = None,
    build: Any = None,
) -> dict[str, Any]:
    """Train every (variant, seed), measure and explain, write the report; returns the summary.

    ``build(cfg) -> nn.Module`` replaces :func:`convattn.engine.trainer.build_model`
    (task commands with their own models: segment, detect).
    """
    from ..explain import box_area_fraction, save_gallery, spatial_attention
    from ..explain.localisation import energy_in_box, pointing_game

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
        loc_boxes = test["box"][:localisation_images]
    input_shape = (1, data.in_chans, data.image_size, data.image_size)
    summary_variants: dict[str, dict[str, Any]] = {}
    gallery_maps: dict[str, torch.Tensor | None] = {}
    progress.overall(len(variants) * len(seeds))
    for v in variants:
        name = variant_label(v)
        entry: dict[str, Any] = {"attention": None if name == BASELINE else name, "seeds": list(seeds), metric: [],
                                 "test_loss": [], "history": [], "train_seconds": [], "resumed_from_epoch": []}
        loc_seed: dict[str, list[float]] | None = {"pointing_game": [], "energy_in_box": []}
        for i, seed in enumerate(seeds):
            cfg = dataclasses.replace(base, attention=None if name == BASELINE else name, seed=seed)
            res = fit(
                cfg, data, task,
                checkpoint_dir=run_dir / "runs" / f"{name}-seed{seed}",
                resume=resume, progress=progress, label=f"{name} seed {seed}", world=world, build=build,
            )
            progress.overall_advance()
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
                entry["latency_s"] = latency_per_image(model, input_shape, latency_time)
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
    for name, entry in summary_variants.items():
        entry["vs_baseline"] = None
        if baseline is not None and name != baseline:
            entry["vs_baseline"] = welch(entry[metric], summary_variants[baseline][metric], name, baseline)
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
            title="spatial attention (mean over blocks), first seed; green: digit box",
        )
        gallery = "attention_gallery.png"
    summary["gallery"] = gallery
    summary["wall_seconds"] = time.perf_counter() - t0
    write_report(run_dir, summary, gallery)
    return summary
