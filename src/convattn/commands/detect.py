"""``convattn detect``: object detection with and without attention in the backbone.

A small torchvision FCOS (resnet18 trunk, FPN, no pretrained weights) whose
trunk gets each attention variant through :func:`convattn.models.attach`;
every variant x seed is trained with the engine's loop on the multi-digit
cluttered-MNIST boxes (or a COCO-format JSON with images), then the compare
report (mAP@0.5 mean ± std, the paired difference from ``none`` with its interval, whether each variant plateaued, params, FLOPs,
latency) plus mAP@[.5:.95], per-class AP and a PNG of predicted boxes.
"""

from __future__ import annotations

import argparse

HELP = ("train a small FCOS detector whose ResNet backbone has attention attached, with and without attention "
        "over seeds; report mAP@0.5, mAP@[.5:.95], per-class AP and predicted boxes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tasks.common import add_task_arguments
    from ..tasks.detection import DEFAULTS, DETECTORS

    add_task_arguments(
        p, DEFAULTS, DETECTORS,
        "cluttered-mnist (default: 72x72 canvases with 1-3 digits, 10 classes) or a COCO-format JSON "
        "(coco:PATH.json or PATH.json; images relative to the JSON's folder; a 'split' field of train/test per "
        "image, else a fixed 80/20 split)",
    )


def run(args: argparse.Namespace) -> int:
    from ..tasks.common import run_task_job
    from ..tasks.detection import COMMAND

    return run_task_job(COMMAND, args)
