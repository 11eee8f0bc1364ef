"""Measure what attention costs: params, FLOPs, latency, peak memory, peer ratios.

Light to import (torch only); timm, matplotlib and rich are imported where used.

- :func:`run_modules` / :func:`run_models`: the two benchmark jobs (dict results).
- :func:`write_outputs`, :func:`print_table`: JSON + markdown + PNG, and a rich table.
- :mod:`.measure`: the building blocks (``count_params``, ``count_flops``,
  ``time_interleaved``, ``peak_memory``, :class:`MemoryProbe`).
- :mod:`.targets`: JSON descriptions of what is measured, the FLOOR module, timm peers.
"""

from .measure import (
    MemoryProbe,
    count_flops,
    count_params,
    make_input,
    peak_memory,
    step_fn,
    summarize,
    time_interleaved,
)
from .options import DTYPES, parse_dtype, parse_names, parse_shape, parse_shapes
from .report import markdown, plot, print_table, write_outputs
from .runner import run_models, run_modules
from .targets import TIMM_PEERS, Floor, build

__all__ = [
    "DTYPES",
    "Floor",
    "MemoryProbe",
    "TIMM_PEERS",
    "build",
    "count_flops",
    "count_params",
    "make_input",
    "markdown",
    "parse_dtype",
    "parse_names",
    "parse_shape",
    "parse_shapes",
    "peak_memory",
    "plot",
    "print_table",
    "run_models",
    "run_modules",
    "step_fn",
    "summarize",
    "time_interleaved",
    "write_outputs",
]
