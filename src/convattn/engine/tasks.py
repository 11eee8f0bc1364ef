"""Tasks: what the generic training loop needs to know about a problem.

A task turns a batch (a dict of tensors) and a model into a loss and into
*sums* of metric statistics (so they add up across batches and across
distributed ranks); :meth:`summarise` turns the summed statistics into metrics.
Segmentation or detection plug into :func:`convattn.engine.fit` with their own
task object: no second training loop.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Task(Protocol):
    #: the headline metric (reported as mean +- std over seeds), higher is better
    metric: str
    #: the summed statistics :meth:`step` returns, in a fixed order
    stats: tuple[str, ...]

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mean loss to back-propagate, {stat: summed value over the batch})."""

    def summarise(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from statistics summed over a whole epoch or data set."""


class ClassificationTask:
    """Cross-entropy on ``batch["image"]`` -> ``batch["label"]``; top-1 accuracy."""

    metric = "accuracy"
    stats = ("loss_sum", "correct", "count")

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def step(self, model, batch):
        x, y = batch["image"], batch["label"]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
        n = torch.tensor(float(len(y)))
        return loss, {"loss_sum": loss.detach() * n, "correct": correct.double(), "count": n.double()}

    def summarise(self, sums):
        n = max(sums["count"], 1.0)
        return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct"] / n}
