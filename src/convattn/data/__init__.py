"""Data: the embedded cluttered-MNIST set, image folders and local CIFAR copies.

See :func:`load_data` for the spec strings and :mod:`convattn.data.cluttered`
for the generator.
"""

from .cache import cache_dir
from .cluttered import ClutteredConfig, generate, load_cluttered, load_source_digits, split_sources
from .datasets import DataBundle, EpochPool, FolderSet, TensorSet, load_data, parse_spec

__all__ = [
    "ClutteredConfig",
    "DataBundle",
    "EpochPool",
    "FolderSet",
    "TensorSet",
    "cache_dir",
    "generate",
    "load_cluttered",
    "load_data",
    "load_source_digits",
    "parse_spec",
    "split_sources",
]
