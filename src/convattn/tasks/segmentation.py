"""Semantic segmentation: the task object for the engine, data loading, the predictions PNG.

Loss: per-pixel cross-entropy, pixels labelled 255 ignored. Metric: the
confusion matrix of the argmax prediction (torchmetrics'
``multiclass_confusion_matrix``, ignore_index=255) is summed over batches (so
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
from .common import TaskCommand, denormalise, embedded, per_class_table
from .heads import SEGMENTERS, build_segmenter

DEFAULTS = {
    "model": "danet", "variants": "none,danet", "seeds": 2, "epochs": 6, "batch_size": 16, "lr": 0.1,
    "weight_decay": 1e-4, "image_size": 48, "train_size": 2000, "test_size": 500, "eval_batch_size": 100,
}


class SegmentationTask:
    """Cross-entropy on ``batch["image"]`` -> ``batch["mask"]`` (255 ignored); mIoU from a summed confusion matrix."""

    metric = "miou"

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        k = num_classes
        self.stats = ("loss_sum", "pixels", "count") + tuple(f"cm_{i}_{j}" for i in range(k) for j in range(k))

    def step(self, model, batch):
        from torchmetrics.functional.classification import multiclass_confusion_matrix

        x, y = batch["image"], batch["mask"]
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=self.ignore_index)
        with torch.no_grad():
            cm = multiclass_confusion_matrix(logits.argmax(1), y, self.num_classes, ignore_index=self.ignore_index,
                                             validate_args=False).double()
            pixels = (y != self.ignore_index).sum().double()
        stats = {"loss_sum": loss.detach().double() * pixels, "pixels": pixels,
                 "count": torch.tensor(float(len(x)), dtype=torch.float64)}
        k = self.num_classes
        flat = cm.flatten()
        for n, name in enumerate(self.stats[3:]):
            stats[name] = flat[n]
        assert len(self.stats) == 3 + k * k
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


def iou_from_confusion(cm: torch.Tensor) -> list[float]:
    """Per-class IoU from a (K, K) confusion matrix (rows: truth, columns: prediction); NaN for an absent class."""
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(t / u) if u > 0 else float("nan") for t, u in zip(tp, union, strict=True)]


def build(cfg) -> nn.Module:
    return build_segmenter(cfg.model, cfg.attention, cfg.num_classes, cfg.in_chans)


def load_data(args):  # a TaskJob: data, image_size, train_size, test_size, num_classes, cache_dir
    if embedded(args):
        from ..data.multidigit import load_multidigit

        if args.num_classes is not None:
            raise ValueError("--num-classes is only for user data (the embedded set has 11: background + 10 digits)")
        return load_multidigit("segment", image_size=args.image_size, train_size=args.train_size,
                               test_size=args.test_size, cache=args.cache_dir)
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
    lines = [
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
    make_task=lambda data: SegmentationTask(data.num_classes), build=build, finish=finish,
)
