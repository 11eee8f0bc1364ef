"""The one training loop: :func:`fit` (single process or torchrun/DDP) and :func:`evaluate`.

Generic over the problem through a task object (:mod:`convattn.engine.tasks`):
classification today, segmentation/detection later, with the same loop,
checkpoints, progress and distributed handling.

Reproducibility on CPU: the model is initialised right after
``torch.manual_seed(seed)`` (attention weights on a stream of their own, so
that every shared layer starts the same with or without attention); a
training set with ``for_epoch(e)`` (the embedded canvases) gives new samples
every epoch, the same for every variant; the order of the training samples in epoch ``e``
comes from a ``torch.Generator`` seeded with ``(seed, e)`` (no worker
processes, no global RNG), so an epoch is the same whether or not the run was
resumed; the learning rate is a pure function of the step (linear warm-up then
cosine decay), so nothing but the weights, the optimiser state and the epoch
needs restoring; ``torch.use_deterministic_algorithms(True, warn_only=True)``
is on during training and restored afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from . import distributed
from .checkpoint import LATEST, load_checkpoint, save_checkpoint
from .progress import Progress
from .tasks import ClassificationTask, Task


class ConfigRecord:
    """``as_dict``/``from_dict`` for the config dataclasses saved in checkpoints."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The record from plain JSON data: unknown fields and values of the wrong type are a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; valid: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            if not _has_type(v, hints[k]):
                raise ValueError(f"config field {k!r} is {v!r}, not of type {hints[k]}")
        return cls(**d)


def _has_type(value: Any, tp: Any) -> bool:
    """Whether JSON ``value`` fits the annotation ``tp`` (int, float, str, bool, lists, dicts, unions)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_has_type, value, args))
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_has_type(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_has_type(v, args[1]) for v in value.values()))
    return True


OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig(ConfigRecord):
    """Everything that determines one training (saved in every checkpoint)."""

    model: str = "resnet8"
    attention: str | None = None
    attention_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: "sgd" (Nesterov momentum ``momentum``) or "adamw" (betas 0.9, 0.999; ``momentum`` unused)
    optimizer: str = "sgd"
    warmup: float = 0.1
    seed: int = 0
    data: str = "cluttered-mnist"
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    num_classes: int = 10
    in_chans: int = 1
    eval_batch_size: int = 500

    def validate(self) -> TrainConfig:
        def positive_int(name: str, v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer (>= 1), got {v!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("eval_batch_size", self.eval_batch_size)
        for name in ("image_size", "train_size", "test_size"):
            v = getattr(self, name)
            if v is not None:
                positive_int(name, v)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight-decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if not isinstance(self.attention_options, dict):
            raise ValueError(f"attention_options must be a dict of constructor options, got {self.attention_options!r}")
        return self



@dataclass
class FitResult:
    model: nn.Module
    config: TrainConfig
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def build_model(cfg: TrainConfig) -> nn.Module:
    from ..models import create_model

    attention = None if cfg.attention in (None, "none") else cfg.attention
    options = dict(cfg.attention_options) if attention is not None else {}
    return create_model(cfg.model, attention=attention, num_classes=cfg.num_classes, in_chans=cfg.in_chans, **options)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine decay to 0."""
    warm = int(round(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(total - warm, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


@contextmanager
def deterministic():
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, restored on exit."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _class_names(data: Any) -> list[str] | None:
    """The data set's class names (saved in checkpoints, so that eval can check a data set against them)."""
    classes = getattr(data, "classes", None)
    return [str(c) for c in classes] if classes is not None else None


def get_batch(dataset: Any, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch as a dict of tensors (fast path for in-memory sets)."""
    if hasattr(dataset, "batch"):
        return dataset.batch(index)
    return default_collate([dataset[int(i)] for i in index])


def _sum_into(acc: dict[str, float], stats: dict[str, torch.Tensor]) -> None:
    for k, v in stats.items():
        acc[k] = acc.get(k, 0.0) + float(v)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    task: Task | None = None,
    *,
    batch_size: int = 500,
    world: distributed.World | None = None,
) -> dict[str, float]:
    """``task``'s metrics of ``model`` (eval mode) on ``dataset``; sums over ranks."""
    task = task or ClassificationTask()
    world = world or distributed.current()
    was_training = model.training
    model.eval()
    index = torch.arange(len(dataset))[world.rank::world.size]
    sums: dict[str, float] = {k: 0.0 for k in task.stats}
    for start in range(0, len(index), batch_size):
        _, stats = task.step(model, get_batch(dataset, index[start:start + batch_size]))
        _sum_into(sums, stats)
    model.train(was_training)
    return task.summarise(distributed.all_reduce_sums(sums, world))


def fit(
    cfg: TrainConfig,
    data: Any,
    task: Task | None = None,
    *,
    model: nn.Module | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    label: str = "train",
    world: distributed.World | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    build: Callable[[TrainConfig], nn.Module] | None = None,
) -> FitResult:
    """Train ``cfg.epochs`` epochs on ``data.train``, evaluating on ``data.test`` each epoch.

    ``data`` has ``train`` and ``test`` data sets (a :class:`convattn.data.DataBundle`).
    With ``checkpoint_dir`` a checkpoint is written after every epoch (rank 0);
    with ``resume=True`` the latest one there is loaded and training continues
    from the next epoch, ending with the same metrics as an uninterrupted run.
    ``on_epoch_end(epoch, row)`` runs after the epoch's checkpoint is written.
    ``build(cfg)`` makes the model (right after ``torch.manual_seed(cfg.seed)``)
    when ``model`` is None; default :func:`build_model` (task commands such as
    ``convattn segment`` pass their own).
    """
    cfg.validate()
    task = task or ClassificationTask()
    world = world or distributed.current()
    progress = progress or Progress(quiet=True)
    n = len(data.train)  # per epoch (a set with ``for_epoch`` gives new samples every epoch)
    B = cfg.batch_size
    if B % world.size:
        raise ValueError(f"batch-size {B} must be divisible by the number of processes ({world.size})")
    steps = n // B
    if steps == 0:
        raise ValueError(f"batch-size {B} is larger than the training set ({n} samples); valid: 1..{n}")
    total = steps * cfg.epochs
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(cfg.seed)
        model = model if model is not None else (build or build_model)(cfg)
        decay, no_decay = [], []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=cfg.lr)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
        history: list[dict[str, float]] = []
        start_epoch = 1
        if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / LATEST).exists():
            ck = load_checkpoint(checkpoint_dir)
            saved = TrainConfig.from_dict(ck["meta"]["config"])
            if saved != cfg:
                diff = sorted(k for k, v in saved.as_dict().items() if cfg.as_dict()[k] != v)
                raise ValueError(f"cannot resume {checkpoint_dir}: its config differs in {diff}")
            try:
                model.load_state_dict(ck["model_state"], strict=True)
                opt.load_state_dict(ck["optimizer_state"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ValueError(f"checkpoint {checkpoint_dir} does not fit the model: {str(e).splitlines()[0]}") from None
            if ck["torch_rng"] is not None:
                torch.set_rng_state(ck["torch_rng"])
            history = list(ck["meta"]["history"])
            start_epoch = int(ck["meta"]["epoch"]) + 1
        resumed_from = start_epoch - 1
        net: nn.Module = model
        if world.distributed:
            net = nn.parallel.DistributedDataParallel(model)
        progress.start(label, total, first_step=resumed_from * steps)
        for epoch in range(start_epoch, cfg.epochs + 1):
            te = time.perf_counter()
            model.train()
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g)
            train_set = data.train.for_epoch(epoch) if hasattr(data.train, "for_epoch") else data.train
            sums: dict[str, float] = {k: 0.0 for k in task.stats}
            for s in range(steps):
                idx = perm[s * B:(s + 1) * B][world.rank::world.size]
                batch = get_batch(train_set, idx)
                lr = lr_at((epoch - 1) * steps + s, total, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, stats = task.step(net, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{label}: loss is {loss.item()} at epoch {epoch} step {s} (learning "
                                             f"rate {lr:.3g}); the training diverged, try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _sum_into(sums, stats)
                running = task.summarise(sums)
                progress.step(running["loss"], running[task.metric], task.metric)
            train_m = task.summarise(distributed.all_reduce_sums(sums, world))
            test_m = evaluate(model, data.test, task, batch_size=cfg.eval_batch_size, world=world)
            row = {"epoch": epoch, "lr": lr}
            row.update({f"train_{k}": v for k, v in train_m.items()})
            row.update({f"test_{k}": v for k, v in test_m.items()})
            row["seconds"] = time.perf_counter() - te
            history.append(row)
            if checkpoint_dir is not None and world.is_main:
                save_checkpoint(
                    checkpoint_dir,
                    model_state=model.state_dict(),
                    optimizer_state=opt.state_dict(),
                    epoch=epoch,
                    config=cfg.as_dict(),
                    history=history,
                    extra={"world_size": world.size, "classes": _class_names(data)},
                )
            distributed.barrier(world)
            progress.epoch(epoch, cfg.epochs, row, task.metric)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        progress.done()
    model.eval()
    final = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")} if history else {}
    return FitResult(model, cfg, history, final, time.perf_counter() - t0, resumed_from)
