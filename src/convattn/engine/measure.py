"""Cost of a trained model: parameters and FLOPs per image.

- parameters: ``sum(p.numel())`` over all parameters;
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on one forward of
  one image (eval mode), with :func:`convattn.bench.measure.flop_formulas`. It
  counts matrix multiplies and convolutions, 2 FLOPs per multiply-add;
  element-wise work (activations, gates, pooling) is not counted, so cheap
  gates show little extra.

Latency is timed by :func:`convattn.engine.experiment.measure_latency` with the
benchmark machinery (:func:`convattn.bench.measure.time_interleaved`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..bench.measure import flop_formulas, standard_path


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    x = torch.zeros(input_shape)
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with standard_path(model), counter:
        model(x)
    model.train(was)
    return int(counter.get_total_flops())
