"""Object detection: a small torchvision FCOS whose ResNet trunk carries attention (via ``attach``).

Detector (:func:`build_detector`): torchvision's ``FCOS`` (Tian et al., ICCV
2019; anchor-free, sigmoid focal loss, GIoU box loss, centre-ness), built from
parts with ``weights=None`` everywhere (nothing is downloaded):

- trunk: torchvision ``resnet18`` (stem swapped for ``in_chans``) with the
  attention inserted by :func:`convattn.models.attach` (``where="block"``: in
  every BasicBlock before the residual add); ``layer4`` is not used (its
  attention modules are inserted but never run);
- neck: ``BackboneWithFPN`` on layer2 and layer3 (strides 8 and 16) with 64
  channels, plus the max-pool level (stride 32);
- head: ``FCOSHead`` with 2 convs per tower (torchvision's default is 4);
  anchor sizes equal to the strides (8, 16, 32), the convention of
  torchvision's ``fcos_resnet50_fpn`` (size = stride); with FCOS's
  ``[4 s, 8 s]`` size ranges every digit of the small canvases is assigned to
  the stride-8 level (centre sampling radius 1.5 x 8 pixels);
- transform: ``min_size = max_size = image size`` (torchvision would otherwise
  upscale to 800 pixels), mean 0 and std 1 (the data are normalised already),
  ``size_divisible=16``; ``score_thresh=0.05`` and at most 20 detections per
  image at test time (COCO evaluations keep low-score boxes too).

Metric: torchmetrics' ``MeanAveragePrecision`` (COCO protocol, box IoU):
``map50`` = mAP at IoU 0.5 (the headline), ``map`` = mAP over IoU 0.5:0.05:0.95,
``ap_<k>`` = per-class AP over 0.5:0.95. It needs ``pycocotools`` (default
backend) or ``faster-coco-eval``; the first one installed is used. Detection
metrics do not add up over batches, so the task keeps the predictions of an
evaluation pass and computes the metric once at the end (single process).
The training-split columns of the report (``train_map50``) are NaN: only the
loss is measured while training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import TaskCommand, denormalise, embedded, fresh_epochs, per_class_table

DETECTORS = ("fcos_resnet18",)
DEFAULTS = {
    "model": "fcos_resnet18", "variants": "none,cbam", "seeds": 2, "epochs": 8, "batch_size": 16,
    "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "image_size": 72, "train_size": 2000, "test_size": 500,
    "eval_batch_size": 50, "jobs": 2,
}


def map_backend() -> str:
    """The installed backend of torchmetrics' MeanAveragePrecision, or a one-line error naming the package."""
    import importlib.util

    for module, name in (("pycocotools", "pycocotools"), ("faster_coco_eval", "faster_coco_eval")):
        if importlib.util.find_spec(module) is not None:
            return name
    raise ValueError("detection mAP needs pycocotools (pip install pycocotools) or faster-coco-eval "
                     "(pip install faster-coco-eval)")


def build_detector(attention: str | None, num_classes: int, in_chans: int = 1, image_size: int = 48,
                   fpn_channels: int = 64, head_convs: int = 2) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead

    from ..models import attach, create_model, separate_rng

    trunk = create_model("resnet18", in_chans=in_chans, num_classes=1)
    if attention not in (None, "none"):
        with separate_rng():  # FPN and head get the same weights with or without attention
            attach(trunk, attention, where="block")
    body = BackboneWithFPN(trunk, {"layer2": "0", "layer3": "1"}, [128, 256], fpn_channels)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
    head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
    return FCOS(body, num_classes, min_size=image_size, max_size=image_size, image_mean=[0.0] * in_chans,
                image_std=[1.0] * in_chans, anchor_generator=anchors, head=head, score_thresh=0.05,
                detections_per_img=20, topk_candidates=200, size_divisible=16)


def targets_of(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Padded ``boxes`` (B, K, 4) / ``box_labels`` (B, K) (-1 = empty) -> torchvision target dicts."""
    out = []
    for b, lab in zip(batch["boxes"], batch["box_labels"], strict=True):
        keep = lab >= 0
        out.append({"boxes": b[keep].float(), "labels": lab[keep].long()})
    return out


class DetectionTask:
    """FCOS losses while training; COCO mAP (torchmetrics) over a whole evaluation pass."""

    metric = "map50"
    stats = ("loss_sum", "count", "eval_images")

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.backend = map_backend()
        self._map = None

    def step(self, model, batch):
        images = list(batch["image"])
        targets = targets_of(batch)
        n = torch.tensor(float(len(images)), dtype=torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
        if model.training:
            losses = model(images, targets)
            loss = sum(losses.values())
            return loss, {"loss_sum": loss.detach().double() * n, "count": n, "eval_images": zero}
        if self._map is None:
            from torchmetrics.detection import MeanAveragePrecision

            self._map = MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend=self.backend)
        dets = model(images)
        self._map.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in dets], targets)
        return zero, {"loss_sum": zero, "count": zero, "eval_images": n}

    def summarise(self, sums):
        loss = sums["loss_sum"] / sums["count"] if sums["count"] else float("nan")
        out = {"loss": loss, "map50": float("nan"), "map": float("nan")}
        if sums.get("eval_images", 0) > 0 and self._map is not None:
            r = self._map.compute()
            self._map = None
            out["map50"] = float(r["map_50"])
            out["map"] = float(r["map"])
            out["map75"] = float(r["map_75"])
            per = {int(c): float(v) for c, v in zip(r["classes"].flatten(), r["map_per_class"].flatten(), strict=True)}
            for k in range(self.num_classes):
                v = per.get(k, float("nan"))
                out[f"ap_{k}"] = v if v >= 0 else float("nan")  # -1 = class absent from the ground truth
        return out


def trivial_scores(tensors: dict[str, torch.Tensor], num_classes: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """COCO mAP of two detectors that do not look at the images' content, on the split ``tensors``.

    ``"nothing"``: no detection at all. ``"boxes, random labels"``: every
    ground-truth box, exactly, with score 1 and a label drawn uniformly from the
    ``num_classes`` classes (``torch.Generator`` seeded with ``seed``): perfect
    localisation, chance-level recognition.
    """
    from torchmetrics.detection import MeanAveragePrecision

    targets = targets_of(tensors)
    g = torch.Generator().manual_seed(seed)
    detectors = {
        "nothing": [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in targets],
        "boxes, random labels": [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])),
                                  "labels": torch.randint(num_classes, (len(t["boxes"]),), generator=g)}
                                 for t in targets],
    }
    out = {}
    for name, preds in detectors.items():
        metric = MeanAveragePrecision(iou_type="bbox", backend=map_backend())
        metric.update(preds, targets)
        r = metric.compute()
        out[name] = {"map50": max(float(r["map_50"]), 0.0), "map": max(float(r["map"]), 0.0)}
    return out


def build(cfg) -> nn.Module:
    if cfg.model not in DETECTORS:
        raise ValueError(f"unknown detection --model {cfg.model!r}; valid: {', '.join(DETECTORS)}")
    return build_detector(cfg.attention, cfg.num_classes, cfg.in_chans, cfg.image_size)


def load_data(args):  # a TaskJob: data, image_size, train_size, test_size, num_classes, cache_dir
    map_backend()  # fail before any work when mAP cannot be computed
    if embedded(args):
        from ..data.multidigit import load_multidigit

        if args.num_classes is not None:
            raise ValueError("--num-classes is only for user data (the embedded set has 10 digit classes)")
        return load_multidigit("detect", image_size=args.image_size, train_size=args.train_size,
                               test_size=args.test_size, cache=args.cache_dir, fresh_epochs=fresh_epochs(args))
    from .datasets import load_coco_detection

    return load_coco_detection(args.data, image_size=args.image_size or 64, num_classes=args.num_classes,
                               train_size=args.train_size, test_size=args.test_size)


def save_detections(path: Path, images: torch.Tensor, targets: list[dict], preds: dict[str, list[dict]],
                    classes: list[str], data: Any, min_score: float = 0.3) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    rows = 1 + len(preds)
    fig, axes = plt.subplots(rows, n, figsize=(1.7 * n + 1.0, 1.7 * rows + 0.5), squeeze=False)
    shown = denormalise(images, data)
    shown = shown.mean(1) if shown.shape[1] != 3 else shown.permute(0, 2, 3, 1)
    panels = [("ground truth", [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets], "lime")]
    panels += [(name, p, "red") for name, p in preds.items()]
    for r, (label, dets, colour) in enumerate(panels):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(shown[c].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            d = dets[c]
            for box, lab, s in zip(d["boxes"], d["labels"], d["scores"], strict=True):
                if s < min_score:
                    continue
                x0, y0, x1, y1 = (float(v) for v in box)
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, lw=1))
                text = classes[int(lab)] if r == 0 else f"{classes[int(lab)]} {float(s):.2f}"
                ax.text(x0, y0 - 1, text, color=colour, fontsize=6, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"test images: ground-truth boxes, then each variant's detections with score >= {min_score} "
                 "(first seed)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def finish(run_dir: Path, summary: dict[str, Any], data: Any, models: dict[str, nn.Module]) -> str:
    from ..runs.stats import mean_std

    classes = list(data.classes)
    table, _ = per_class_table(summary, "ap_", classes, "Per-class AP@[.5:.95] (%)")
    rows = []
    for name, v in summary["variants"].items():
        for key in ("map", "map75"):
            vals = [h[-1].get(f"test_{key}") for h in v["history"] if h]
            vals = [x for x in vals if x is not None and not math.isnan(x)]
            v[key], (v[f"{key}_mean"], v[f"{key}_std"]) = vals, mean_std(vals)
        rows.append(f"| {name} | {v['map50_mean'] * 100:.2f} ± {v['map50_std'] * 100:.2f} | "
                    f"{v['map_mean'] * 100:.2f} ± {v['map_std'] * 100:.2f} | "
                    f"{v['map75_mean'] * 100:.2f} ± {v['map75_std'] * 100:.2f} |")
    n = 6
    test = data.test.batch(torch.arange(min(n, len(data.test))))
    with torch.no_grad():
        preds = {name: m(list(test["image"])) for name, m in models.items()}
    save_detections(run_dir / "detections.png", test["image"], targets_of(test), preds, classes, data)
    summary["predictions"] = "detections.png"
    trivial = trivial_scores(data.test.tensors, len(classes))
    summary["trivial"] = trivial
    lines = [
        "## Against trivial detectors",
        "",
        f"On this test split a detector that outputs nothing scores {trivial['nothing']['map50'] * 100:.2f} % "
        f"mAP@0.5; one that outputs every ground-truth box exactly, with a random label, scores "
        f"{trivial['boxes, random labels']['map50'] * 100:.2f} % mAP@0.5 "
        f"({trivial['boxes, random labels']['map'] * 100:.2f} % mAP@[.5:.95]): a box counts only with its right "
        "label.",
        "",
        "## mAP at several IoU thresholds (%)",
        "",
        "| variant | mAP@0.5 | mAP@[.5:.95] | mAP@0.75 |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "COCO-style mAP (torchmetrics MeanAveragePrecision, backend "
        f"{map_backend()}) on the whole test split after the last epoch; mean ± std over seeds. The results table "
        "above reports mAP@0.5 (`map50`); its train column is NaN because only the loss is measured while training.",
        "",
        table,
        "## Detections",
        "",
        "![detections](detections.png)",
        "",
        "Top row: ground-truth boxes (green); then one row per variant, first seed's model (red, with scores).",
        "",
    ]
    return "\n".join(lines)


COMMAND = TaskCommand(
    name="detect", defaults=DEFAULTS, models=DETECTORS, load_data=load_data,
    make_task=lambda data, job: DetectionTask(data.num_classes), build=build, finish=finish,
)
