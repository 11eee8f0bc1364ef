"""Several trainings at once: one process per training, one thread each.

Small CNNs use two cores poorly inside one training (each step is a chain of
small ops); two trainings side by side on one thread each get more done. A
training's numbers do not depend on how many run beside it: each worker calls
the same :func:`convattn.engine.fit` with the same config and checkpoint
folder as a sequential run with ``threads_per_training`` threads would.

Workers are forked (Linux, macOS), so they share the data set already in
memory; where fork is not available the trainings run one after the other.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import load_checkpoint
from .progress import Progress
from .trainer import FitResult, TrainConfig, build_model, fit


@dataclass
class Training:
    cfg: TrainConfig
    checkpoint_dir: Path
    label: str


#: what forked workers inherit (set just before the pool starts)
_SHARED: dict[str, Any] = {}


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def _worker(index: int) -> tuple[int, dict[str, Any]]:
    s = _SHARED
    t: Training = s["trainings"][index]
    torch.set_num_threads(s["threads"])
    queue = s["queue"]

    def report(epoch: int, row: dict[str, float]) -> None:
        queue.put((t.label, epoch, t.cfg.epochs, row))

    res = fit(t.cfg, s["data"], s["task"], checkpoint_dir=t.checkpoint_dir, resume=s["resume"],
              on_epoch_end=report, build=s["build"], world=distributed.World())
    return index, {"history": res.history, "final": res.final, "seconds": res.seconds,
                   "resumed_from": res.resumed_from}


def train_many(trainings: list[Training], data: Any, task: Any, *, build: Any = None, resume: bool = False,
               progress: Progress | None = None, world: distributed.World | None = None,
               workers: int = 1, threads_per_training: int = 1) -> list[FitResult]:
    """Run every training (``workers`` at a time when > 1) and return their results in order."""
    progress = progress or Progress(quiet=True)
    world = world or distributed.current()
    if workers <= 1 or len(trainings) <= 1 or world.distributed or not can_fork():
        out = []
        for t in trainings:
            out.append(fit(t.cfg, data, task, checkpoint_dir=t.checkpoint_dir, resume=resume, progress=progress,
                           label=t.label, world=world, build=build))
            progress.overall_advance()
        return out

    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    _SHARED.update(trainings=trainings, data=data, task=task, build=build, resume=resume,
                   threads=threads_per_training, queue=queue)

    def relay() -> None:
        while True:
            item = queue.get()
            if item is None:
                return
            label, epoch, epochs, row = item
            progress.print(f"{label}: epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  "
                           f"test {task.metric} {row['test_' + task.metric]:.4f}")

    listener = threading.Thread(target=relay, daemon=True)
    listener.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        with ctx.Pool(processes=min(workers, len(trainings)), maxtasksperchild=1) as pool:
            for index, res in pool.imap_unordered(_worker, range(len(trainings))):
                results[index] = res
                progress.print(f"{trainings[index].label}: done, test {task.metric} "
                               f"{res['final'].get(task.metric, float('nan')):.4f}")
                progress.overall_advance()
    finally:
        queue.put(None)
        listener.join(timeout=5)
        _SHARED.clear()
    out = []
    for i, t in enumerate(trainings):
        r = results[i]
        torch.manual_seed(t.cfg.seed)
        model = (build or build_model)(t.cfg)
        model.load_state_dict(load_checkpoint(t.checkpoint_dir, optimizer=False)["model_state"])
        model.eval()
        out.append(FitResult(model, t.cfg, r["history"], r["final"], r["seconds"], r["resumed_from"]))
    return out
