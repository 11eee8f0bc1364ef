"""Semantic segmentation: the task object for the engine, data loading, the predictions PNG.

Loss: per-pixel cross-entropy, pixels labelled 255 ignored. Metric: the
confusion matrix of the argmax prediction (:func:`confusion_matrix`, equal to
torchmetrics' ``multiclass_confusion_matrix`` with ignore_index=255) is summed over batches (so
it adds up over a whole split and across ranks), then per class
``IoU_k = TP_k / (TP_k + FP_k + FN_k)``; mIoU is the mean over the classes
that occur in the ground truth or the prediction (a class absent from both
has no IoU). With every class present this is torchmetrics'
``MulticlassJaccardIndex(average="macro")`` (tested). The headline metric
``miou`` includes the background class, as PASCAL VOC and torchmetrics do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.multidigit import IGNORE_INDEX
from .common import TaskCommand, denormalise, embedded, fresh_epochs, per_class_table
from .heads import SEGMENTERS, build_segmenter

DEFAULTS = {
    "model": "unet", "variants": "none,scse", "seeds": 2, "epochs": 10, "batch_size": 16, "lr": 0.05,
    "weight_decay": 1e-4, "image_size": 72, "train_size": 1500, "test_size": 500, "eval_batch_size": 100,
    "class_weights": "balanced", "jobs": 2,
}


class SegmentationTask:
    """Cross-entropy on ``batch["image"]`` -> ``batch["mask"]`` (255 ignored); mIoU from a summed confusion matrix.

    ``class_weights`` (K,) weights each pixel's loss by its true class
    (``F.cross_entropy``'s ``weight``: the loss is the weighted mean over
    pixels); see :func:`balanced_weights`.
    """

    metric = "miou"

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, class_weights: torch.Tensor | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if class_weights is not None and tuple(class_weights.shape) != (num_classes,):
            raise ValueError(f"class_weights must have {num_classes} entries, got shape {tuple(class_weights.shape)}")
        self.weight = None if class_weights is None else class_weights.float()
        k = num_classes
        self.stats = ("loss_sum", "pixels", "count") + tuple(f"cm_{i}_{j}" for i in range(k) for j in range(k))

    def step(self, model, batch):
        x, y = batch["image"], batch["mask"]
        logits = model(x)
        loss = F.cross_entropy(logits, y, weight=self.weight, ignore_index=self.ignore_index)
        with torch.no_grad():
            cm = confusion_matrix(logits.argmax(1), y, self.num_classes, self.ignore_index)
            pixels = cm.sum()
        stats = {"loss_sum": loss.detach().double() * pixels, "pixels": pixels,
                 "count": torch.tensor(float(len(x)), dtype=torch.float64)}
        stats.update(zip(self.stats[3:], cm.flatten(), strict=True))
        return loss, stats

    def confusion(self, sums: dict[str, float]) -> torch.Tensor:
        k = self.num_classes
        return torch.tensor([sums[f"cm_{i}_{j}"] for i in range(k) for j in range(k)], dtype=torch.float64).view(k, k)

    def summarise(self, sums):
        cm = self.confusion(sums)
        iou = iou_from_confusion(cm)
        valid = [v for v in iou if not math.isnan(v)]
        out = {"loss": sums["loss_sum"] / max(sums["pixels"], 1.0), "miou": sum(valid) / len(valid) if valid else 0.0,
               "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp_min(1))}
        out.update({f"iou_{k}": v for k, v in enumerate(iou)})
        return out


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) float64 counts, rows the true class, columns the predicted one; ``ignore_index`` pixels left out.

    The same counts as torchmetrics' ``multiclass_confusion_matrix`` (tested), by
    one ``torch.bincount``: torchmetrics replaces bincount by a (pixels x K^2)
    comparison whenever deterministic algorithms are on, as they are while
    training, which made the metric cost a third of a U-Net's training step.
    """
    keep = target != ignore_index
    t, p = target[keep], pred[keep]
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).double().view(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> list[float]:
    """Per-class IoU from a (K, K) confusion matrix (rows: truth, columns: prediction); NaN for an absent class."""
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(t / u) if u > 0 else float("nan") for t, u in zip(tp, union, strict=True)]


def balanced_weights(masks: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Square-rooted median-frequency balancing: ``w_c = sqrt(median_f / f_c)``, scaled so the smallest is 1.

    ``f_c`` is class c's share of the labelled pixels of ``masks`` and the
    median is over the classes that occur (Eigen & Fergus, ICCV 2015, use
    ``median_f / f_c``; the square root tempers it: on the embedded canvases,
    where digits cover about 6 % of the pixels, the digit classes get 11-17
    times the weight of background instead of about 150 times). A class absent
    from ``masks`` gets weight 1.
    """
    m = masks[masks != ignore_index].flatten().long()
    f = torch.bincount(m, minlength=num_classes)[:num_classes].double()
    f = f / f.sum().clamp_min(1)
    present = f > 0
    w = torch.ones(num_classes, dtype=torch.float64)
    if present.any():
        w[present] = (f[present].median() / f[present]).sqrt()
        w = w / w[present].min()
        w[~present] = 1.0
    return w.float()


def make_task(data: Any, job: Any) -> SegmentationTask:
    weights = None
    if (job.class_weights or "none") == "balanced":
        train = data.train.for_epoch(1) if hasattr(data.train, "for_epoch") else data.train
        weights = balanced_weights(train.tensors["mask"], data.num_classes)
    return SegmentationTask(data.num_classes, class_weights=weights)


def trivial_scores(masks: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """mIoU and pixel accuracy of a model that predicts background (class 0) on every pixel of ``masks``."""
    cm = confusion_matrix(torch.zeros_like(masks), masks, num_classes, ignore_index)
    iou = [v for v in iou_from_confusion(cm) if not math.isnan(v)]
    return {"miou": sum(iou) / len(iou), "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp_min(1))}


def build(cfg) -> nn.Module:
    return build_segmenter(cfg.model, cfg.attention, cfg.num_classes, cfg.in_chans)


def load_data(args):  # a TaskJob: data, image_size, train_size, test_size, num_classes, cache_dir
    if embedded(args):
        from ..data.multidigit import load_multidigit

        if args.num_classes is not None:
            raise ValueError("--num-classes is only for user data (the embedded set has 11: background + 10 digits)")
        return load_multidigit("segment", image_size=args.image_size, train_size=args.train_size,
                               test_size=args.test_size, cache=args.cache_dir, fresh_epochs=fresh_epochs(args))
    from .datasets import load_segmentation_folder

    return load_segmentation_folder(args.data, image_size=args.image_size or 64, num_classes=args.num_classes,
                                    train_size=args.train_size, test_size=args.test_size)


def colour_masks(masks: torch.Tensor, k: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, H, W, 3) colours (background black, ignore grey)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if k <= 11 else "tab20"]
    table = torch.zeros(256, 3)
    for c in range(1, min(k, 255)):
        table[c] = torch.tensor(cmap((c - 1) % cmap.N)[:3])
    table[IGNORE_INDEX] = 0.5
    return table[masks.clamp(0, 255)]


def save_predictions(path: Path, images: torch.Tensor, masks: torch.Tensor, preds: dict[str, torch.Tensor],
                     classes: list[str], data: Any) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(images)
    rows = 2 + len(preds)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n + 1.2, 1.6 * rows + 0.6), squeeze=False)
    shown = denormalise(images, data)
    k = len(classes)
    panels = [("input", shown.permute(0, 2, 3, 1).squeeze(-1), "gray"), ("ground truth", colour_masks(masks, k), None)]
    panels += [(f"{name}", colour_masks(p, k), None) for name, p in preds.items()]
    for r, (label, imgs, cmap) in enumerate(panels):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c].numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    handles = [Patch(color=colour_masks(torch.tensor([[[c]]]), k)[0, 0, 0].tolist(), label=classes[c])
               for c in range(1, k)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False)
    fig.suptitle("test images: ground truth and each variant's prediction (first seed)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finish(run_dir: Path, summary: dict[str, Any], data: Any, models: dict[str, nn.Module]) -> str:
    classes = list(data.classes)
    table, _ = per_class_table(summary, "iou_", classes, "Per-class IoU (%)")
    n = summary.get("gallery_images_requested", 6)
    test = data.test.batch(torch.arange(min(n, len(data.test))))
    with torch.no_grad():
        preds = {name: m(test["image"]).argmax(1) for name, m in models.items()}
    save_predictions(run_dir / "predictions.png", test["image"], test["mask"], preds, classes, data)
    summary["predictions"] = "predictions.png"
    pix = {name: v["history"][0][-1].get("test_pixel_accuracy") for name, v in summary["variants"].items()}
    trivial = trivial_scores(data.test.tensors["mask"], len(classes))
    summary["trivial"] = {"model": "background on every pixel", **trivial}
    lines = [
        "## Against a trivial model",
        "",
        f"A model that predicts background on every pixel scores {trivial['miou'] * 100:.2f} % mIoU "
        f"(pixel accuracy {trivial['pixel_accuracy'] * 100:.2f} %) on this test split: pixel accuracy says little "
        "here, mIoU is the measure.",
        "",
        table,
        "IoU of each class on the whole test split (mean over seeds); mIoU in the results table is the mean over "
        "classes, background included. Pixel accuracy (first seed): "
        + ", ".join(f"{k} {v * 100:.2f}%" for k, v in pix.items() if v is not None) + ".",
        "",
        "## Predictions",
        "",
        "![predictions](predictions.png)",
        "",
        "First row: the input; second: the ground-truth mask; then one row per variant (first seed's model). "
        "Background black.",
        "",
    ]
    return "\n".join(lines)


COMMAND = TaskCommand(
    name="segment", defaults=DEFAULTS, models=SEGMENTERS, load_data=load_data,
    make_task=make_task, build=build, finish=finish,
)
