"""Fast CPU implementations of the gating modules, behind one boundary.

Every module in :mod:`convattn.attention` has one plain forward in standard
PyTorch ops. This package registers faster implementations of some of them (se,
eca, cbam and its halves, sse, scse, coord, triplet, simam) on native CPU kernels
(:mod:`convattn.fast.native`), each for exactly one module class and the
configuration it implements; :mod:`convattn.fast.select` decides, by one set of
rules, whether a call takes it. Importing :mod:`convattn` installs the selector.

- :func:`use` / :func:`disabled`: the one switch (a context variable; the
  environment variable ``CONVATTN_FAST=0`` turns the fast paths off by default);
- :func:`status`: which path each attention module of a model takes for an input;
- :func:`fuse_for_inference`: an explicit inference step that lets each gate write
  over its norm's output (:mod:`convattn.fast.fusion`).
"""

from __future__ import annotations

from ..layers.base import install_accelerator
from . import cbam, channel, coord, scse, simam, triplet  # noqa: F401  (register the fast paths)
from .fusion import NormGate, fuse_for_inference, unfuse
from .native import status as kernel_status
from .select import accelerate as _accelerate
from .select import decline, disabled, enabled, fingerprints, path_of, registered, status, use

install_accelerator(_accelerate)

__all__ = [
    "NormGate",
    "decline",
    "disabled",
    "enabled",
    "fingerprints",
    "fuse_for_inference",
    "kernel_status",
    "path_of",
    "registered",
    "status",
    "unfuse",
    "use",
]
