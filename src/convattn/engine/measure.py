"""Cost of a model: parameters, FLOPs, CPU latency per image.

- parameters: ``sum(p.numel())`` over all parameters;
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on one forward of
  one image (eval mode). It counts matrix multiplies and convolutions, 2 FLOPs
  per multiply-add; element-wise work (activations, gates, pooling) is not
  counted, so cheap gates show little extra;
- latency: median wall time of ``model(x)`` for a batch of one image, no grad,
  eval mode, measured with :class:`torch.utils.benchmark.Timer`
  (``blocked_autorange``) at the current ``torch.get_num_threads()``. Timings are
  noisy on shared machines: compare variants measured in the same run.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _slow_conv_flop(x_shape, w_shape, _kernel, _bias, _stride, _padding, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._slow_conv2d_forward / slow_conv3d_forward (no groups, not transposed).

    torch's flop_counter maps ``_slow_conv2d_forward`` to its generic conv formula,
    whose argument list (dilation, transposed) this op does not have, so counting a
    model that uses it (CBAM's small-map fast path) fails; this formula replaces it.
    """
    from torch.utils.flop_counter import conv_flop_count

    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from ..bench.measure import (  # one set of formulas for bench and reports
        flop_formulas,
        standard_path,
    )

    was = model.training
    model.eval()
    x = torch.zeros(input_shape)
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with standard_path(model), counter:
        model(x)
    model.train(was)
    return int(counter.get_total_flops())


def benchmark_timer() -> type:
    """``torch.utils.benchmark.Timer``, imported without the "No CUDA runtime is found"
    warning its import (through ``torch.utils.cpp_extension``) logs on CPU-only machines."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        log.setLevel(level)
    return Timer


@torch.no_grad()
def latency_per_image(model: nn.Module, input_shape: tuple[int, ...], min_run_time: float = 0.3) -> float:
    """Median seconds of one forward of a batch of one image."""
    Timer = benchmark_timer()
    was = model.training
    model.eval()
    x = torch.randn((1,) + tuple(input_shape[1:]))
    model(x)
    t = Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
    m = t.blocked_autorange(min_run_time=min_run_time)
    model.train(was)
    return float(m.median)
