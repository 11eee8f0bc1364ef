"""Parsing and validation of benchmark options (shapes, dtypes, module lists).

Every bad value raises a one-line ``ValueError`` saying what was given and what
is valid, so that ``convattn bench`` prints it and exits with code 2.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp64": "float64", "double": "float64"}

#: the module benchmark's shapes: a ResNet stage-3 map at batch 8 and a stage-1 map at batch 32
DEFAULT_MODULE_SHAPES: tuple[tuple[int, ...], ...] = ((8, 256, 28, 28), (32, 64, 56, 56))
#: the whole-model benchmark's input: batch 8 at 224 x 224 (ImageNet size)
DEFAULT_MODEL_SHAPE: tuple[int, ...] = (8, 3, 224, 224)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float64"`` (or a torch dtype) -> torch dtype."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise ValueError(f"unsupported dtype {name}; valid: {', '.join(DTYPES)}")
    key = str(name).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    return str(dtype).replace("torch.", "")


def parse_shape(text: str | Iterable[int]) -> tuple[int, ...]:
    """``"8x256x28x28"`` (or a sequence of ints) -> ``(8, 256, 28, 28)``.

    A shape is (batch, channels, *spatial) with 1 to 3 spatial dims, every size a
    positive integer.
    """
    if isinstance(text, str):
        s = text.strip().lower().replace("*", "x").replace(",", "x")
        if not re.fullmatch(r"\d+(x\d+)+", s):
            raise ValueError(
                f"bad shape {text!r}; expected BxCxHxW such as 8x256x28x28 "
                "(batch, channels, then 1 to 3 spatial sizes)"
            )
        shape = tuple(int(p) for p in s.split("x"))
    else:
        try:
            shape = tuple(int(v) for v in text)
        except (TypeError, ValueError):
            raise ValueError(f"bad shape {text!r}; expected a sequence of positive ints") from None
    if not 3 <= len(shape) <= 5:
        raise ValueError(
            f"bad shape {text!r}: {len(shape)} sizes; expected batch, channels and 1 to 3 spatial sizes (3 to 5 sizes)"
        )
    if any(v < 1 for v in shape):
        raise ValueError(f"bad shape {text!r}: every size must be >= 1")
    return shape


def parse_shapes(text: str | Iterable) -> list[tuple[int, ...]]:
    """Several shapes separated by commas or spaces: ``"8x256x28x28,32x64x56x56"``."""
    if isinstance(text, str):
        parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
        if not parts:
            raise ValueError("no shape given; expected e.g. 8x256x28x28,32x64x56x56")
        return [parse_shape(p) for p in parts]
    return [parse_shape(s) for s in text]


def parse_names(text: str | Iterable[str] | None) -> list[str]:
    """``"se,cbam, eca"`` -> ``["se", "cbam", "eca"]`` (order kept, duplicates removed)."""
    if text is None:
        return []
    items = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text)
    out: list[str] = []
    for it in items:
        if it and it not in out:
            out.append(it)
    return out


def check_modules(names: Iterable[str]) -> list[str]:
    """Validate registry keys (ValueError naming the closest registered ones)."""
    from ..registry import get_spec

    out = []
    for n in names:
        get_spec(n)  # raises ValueError with suggestions
        out.append(n)
    return out


def check_threads(threads: int) -> int:
    from ..engine.options import MAX_THREADS

    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be a positive int (valid: 1..{MAX_THREADS}), got {threads!r}")
    return threads


#: placements of ``--where`` (see :func:`convattn.models.attach`)
WHERE = ("block", "stage")


def check_where(where: str) -> str:
    if where not in WHERE:
        raise ValueError(f"unknown --where {where!r}; valid: {', '.join(WHERE)}")
    return where


def check_shapes_fit(shapes: Iterable[tuple[int, ...]], dtype: torch.dtype) -> None:
    """Refuse a shape whose tensors (input, output, gradients and a module's intermediates) cannot fit in memory."""
    from ..engine.options import check_fits

    size = torch.empty((), dtype=dtype).element_size()
    for shape in shapes:
        n = 1
        for v in shape:
            n *= v
        check_fits(f"--shapes {'x'.join(map(str, shape))}", 16 * n * size)


def check_buildable(names: Iterable[str], shapes: Iterable[tuple[int, ...]]) -> None:
    """Every module must build at the channels of every shape whose dimensionality it takes."""
    from ..registry import create_attention, get_spec

    for shape in shapes:
        channels, dims = shape[1], len(shape) - 2
        bad = {}
        for name in names:
            spec = get_spec(name)
            if dims not in spec.dims:
                continue
            try:
                create_attention(name, channels, **({"dims": dims} if spec.dims_at_init else {}))
            except (TypeError, ValueError, RuntimeError) as e:
                bad[name] = " ".join(str(e).split())
        if bad:
            first = next(iter(bad))
            raise ValueError(f"--shapes {'x'.join(map(str, shape))}: {', '.join(bad)} cannot be built at {channels} "
                             f"channels ({first}: {bad[first]}); give other channels or leave them out with --modules")


def check_modes(modes: Iterable[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    bad = [m for m in modes if m not in ("eval", "train")]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or modes!r}; valid: eval, train")
    return modes
