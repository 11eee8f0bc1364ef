"""Several trainings at once: one process per training, one thread each.

Small CNNs use two cores poorly inside one training (each step is a chain of
small ops); two trainings side by side on one thread each get more done. A
training's numbers do not depend on how many run beside it: each worker calls
the same training function with the same config and checkpoint folder as a
sequential run with ``threads_per_training`` threads would.

Workers are forked (Linux, macOS), so they share the data set already in
memory; where fork is not available the trainings run one after the other.
:func:`map_forked` is the general runner (``convattn generate`` uses it for its
GANs); :func:`train_many` runs :func:`convattn.engine.fit` trainings with it.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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


def _run_one(index: int) -> tuple[int, Any]:
    s = _SHARED
    torch.set_num_threads(s["threads"])
    queue = s["queue"]
    return index, s["fn"](s["items"][index], queue.put)


def map_forked(fn: Callable[[Any, Callable[[str], None]], Any], items: list[Any], *, workers: int,
               threads: int = 1, progress: Progress | None = None,
               on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``[fn(item, say) for item in items]``, ``workers`` at a time in forked processes of ``threads`` threads.

    ``fn`` runs in the child and returns something picklable and free of
    tensors (torch sends tensors as shared-memory handles, which die with the
    worker); ``say(text)`` prints ``text`` through ``progress`` in the parent.
    ``on_done(index, result)`` runs in the parent as each item finishes. With ``workers <= 1``,
    one item, or no fork, the items run here one after the other (``say`` then
    prints directly).
    """
    progress = progress or Progress(quiet=True)
    if workers <= 1 or len(items) <= 1 or not can_fork():
        out = []
        for i, item in enumerate(items):
            out.append(fn(item, progress.print))
            if on_done is not None:
                on_done(i, out[-1])
        return out
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    _SHARED.update(fn=fn, items=items, threads=threads, queue=queue)

    def relay() -> None:
        while True:
            text = queue.get()
            if text is None:
                return
            progress.print(text)

    listener = threading.Thread(target=relay, daemon=True)
    listener.start()
    results: dict[int, Any] = {}
    try:
        # a worker that dies (killed, out of memory, a crash in native code) fails the map with
        # BrokenProcessPool instead of leaving the parent waiting for a result that never comes
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
            pending = [pool.submit(_run_one, i) for i in range(len(items))]
            try:
                for fut in as_completed(pending):
                    index, res = fut.result()
                    results[index] = res
                    if on_done is not None:
                        on_done(index, res)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    except BrokenProcessPool:
        raise RuntimeError("a training worker process died without a result (killed, out of memory, "
                           "or a crash in native code); rerun with --jobs 1 to see its error") from None
    finally:
        queue.put(None)
        listener.join(timeout=5)
        _SHARED.clear()
    return [results[i] for i in range(len(items))]


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

    def one(t: Training, say: Callable[[str], None]) -> dict[str, Any]:
        def report(epoch: int, row: dict[str, float]) -> None:
            say(f"{t.label}: epoch {epoch}/{t.cfg.epochs}  train loss {row['train_loss']:.4f}  "
                f"test {task.metric} {row['test_' + task.metric]:.4f}")

        res = fit(t.cfg, data, task, checkpoint_dir=t.checkpoint_dir, resume=resume, on_epoch_end=report,
                  build=build, world=distributed.World())
        return {"history": res.history, "final": res.final, "seconds": res.seconds, "resumed_from": res.resumed_from}

    def done(index: int, res: dict[str, Any]) -> None:
        progress.print(f"{trainings[index].label}: done, test {task.metric} "
                       f"{res['final'].get(task.metric, float('nan')):.4f}")
        progress.overall_advance()

    results = map_forked(one, trainings, workers=workers, threads=threads_per_training, progress=progress,
                         on_done=done)
    out = []
    for t, r in zip(trainings, results, strict=True):
        torch.manual_seed(t.cfg.seed)
        model = (build or build_model)(t.cfg)
        model.load_state_dict(load_checkpoint(t.checkpoint_dir, optimizer=False)["model_state"])
        model.eval()
        out.append(FitResult(model, t.cfg, r["history"], r["final"], r["seconds"], r["resumed_from"]))
    return out
