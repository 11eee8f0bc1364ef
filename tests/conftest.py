"""Shared helpers for the test suite."""

from __future__ import annotations

import os

import pytest
import torch

import convattn
from convattn import create_attention, get_spec

# One intra-op thread per test process: the suite runs as 2 xdist workers on 2
# cores, and two workers each spinning 2 OpenMP threads oversubscribe the machine
# (tiny ops then wait tens of milliseconds for a busy core).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Spatial size per dimensionality used by the registry-wide tests: even (so that
# 2x pooling inside a module divides) and small (fast on 2 CPU cores).
SPATIAL = {1: (12,), 2: (8, 8), 3: (4, 4, 4)}


#: options for the keys whose defaults need more channels than the narrowest tests use
#: (EMA's 32 groups need a multiple of 32 channels, SGE's 64 groups a multiple of 64,
#: shuffle attention's 64 groups of two halves a multiple of 128)
NARROW = {"ema": {"groups": 4}, "sge": {"groups": 4}, "sa": {"groups": 4}}

#: the width below which :data:`NARROW` applies, for the keys whose defaults need more than 32
NARROW_BELOW = {"sge": 64, "sa": 128}


def narrow_options(name: str, channels: int) -> dict:
    """The options of :data:`NARROW` for ``name`` when ``channels`` is below the width its
    defaults need (:data:`NARROW_BELOW`, else 32), else none."""
    return dict(NARROW.get(name, {})) if channels < NARROW_BELOW.get(name, 32) else {}


def build(name: str, channels: int = 32, dims: int = 2, **options) -> torch.nn.Module:
    return create_attention(name, channels, dims=dims, **{**narrow_options(name, channels), **options})


#: randomize's scale for the keys whose outputs outgrow float32 at the default 0.5 (cpca's
#: output is cubic in its shared 1x1 conv and a product of depthwise-conv outputs: at 0.5 it
#: reaches ~4e3, where float32's spacing exceeds the suite's absolute tolerances; 0.2 gives O(1))
RANDOM_SCALE = {"cpca": 0.2}


def randomize(module: torch.nn.Module, seed: int = 0, scale: float | None = None) -> torch.nn.Module:
    """Give every parameter and norm statistic a random non-trivial value (normal, std
    ``scale``: 0.5, or :data:`RANDOM_SCALE` of the module's key).

    Zero-initialised scales (GCT's gamma, DANet's gamma, ...) otherwise hide whole
    branches from the tests.
    """
    if scale is None:
        scale = RANDOM_SCALE.get(getattr(module, "registry_name", ""), 0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.1)
    return module


def example_input(dims: int = 2, channels: int = 32, batch: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, channels) + SPATIAL[dims], generator=g, dtype=dtype)


def cases():
    """(name, dims) for every registered module and each dimensionality it supports."""
    return [
        pytest.param(name, d, id=f"{name}-{d}d")
        for name in convattn.list_attention()
        for d in get_spec(name).dims
    ]
