"""``convattn segment``: semantic segmentation with and without attention (DANet head, U-Net with attention decoders).

Trains every variant x seed with the engine's loop on the multi-digit
cluttered-MNIST masks (or an image + mask folder), then writes the compare
report (mIoU mean ± std, the paired difference from ``none`` with its interval, whether each variant plateaued, params, FLOPs,
latency) plus per-class IoU and a PNG of predictions beside the ground truth.
See :mod:`convattn.tasks.heads` for the networks and the meaning of the variants.
"""

from __future__ import annotations

import argparse

HELP = ("train a segmentation network (DANet head on a dilated ResNet, or a U-Net with attention decoders) "
        "with and without attention over seeds; report mIoU, per-class IoU and predictions")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..tasks.common import add_task_arguments
    from ..tasks.heads import SEGMENTERS
    from ..tasks.segmentation import DEFAULTS

    add_task_arguments(
        p, DEFAULTS, SEGMENTERS,
        "cluttered-mnist (default: 72x72 canvases with 1-3 digits, 11 classes = background + 10 digits) or a "
        "folder PATH with images/ and masks/ (or train/ and test/ each holding both); a mask is a PNG of class "
        "ids with the image's file stem, 0 = background, 255 = ignore",
    )


def run(args: argparse.Namespace) -> int:
    from ..tasks.common import run_task_job
    from ..tasks.segmentation import COMMAND

    return run_task_job(COMMAND, args)
