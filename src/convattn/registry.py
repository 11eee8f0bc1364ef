"""The attention registry: one name per verified mechanism.

``register`` records a class with its paper, family, supported spatial dims and
forward equation; ``create_attention`` builds one by name; ``list_attention`` and
``describe`` answer what is there. Every registered class takes
``Cls(channels, **options)`` so that it drops into ``create_attention`` and into
timm models as ``attn_layer``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

FAMILIES = ("channel", "spatial", "combined", "self")


@dataclass(frozen=True)
class AttentionSpec:
    """What the registry knows about one mechanism."""

    name: str
    cls: type
    family: str
    paper: str
    authors: str
    venue: str
    year: int
    dims: tuple[int, ...]
    equation: str
    # True when the parameters depend on the number of spatial dims (a k x k conv),
    # so the module is built for one dimensionality with ``dims=...``.
    dims_at_init: bool = False
    url: str = ""
    notes: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "family": self.family,
            "paper": self.paper,
            "authors": self.authors,
            "venue": self.venue,
            "year": self.year,
            "dims": list(self.dims),
            "dims_at_init": self.dims_at_init,
            "equation": self.equation,
            "defaults": dict(self.defaults),
            "notes": self.notes,
            "url": self.url,
        }


_REGISTRY: dict[str, AttentionSpec] = {}


def _constructor_defaults(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    out = {}
    for name, p in sig.parameters.items():
        if name in ("self", "channels") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is not inspect.Parameter.empty:
            out[name] = p.default
    return out


def register(
    name: str,
    *,
    family: str,
    paper: str,
    authors: str,
    venue: str,
    year: int,
    equation: str,
    dims: tuple[int, ...] = (1, 2, 3),
    url: str = "",
    notes: str = "",
) -> Callable[[type], type]:
    """Class decorator that adds an attention module to the registry.

    The class must accept ``channels`` as its first argument. If its constructor
    has a ``dims`` parameter, the module is built for one spatial dimensionality;
    otherwise it accepts any of ``dims`` at run time.
    """
    if family not in FAMILIES:
        raise ValueError(f"register({name!r}): family must be one of {FAMILIES}, got {family!r}")
    if not dims or any(d not in (1, 2, 3) for d in dims):
        raise ValueError(f"register({name!r}): dims must be a subset of (1, 2, 3), got {dims!r}")

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"attention {name!r} is already registered to {_REGISTRY[name].cls}")
        params = inspect.signature(cls.__init__).parameters
        if "channels" not in params:
            raise TypeError(f"register({name!r}): {cls.__name__} must take `channels` as first argument")
        spec = AttentionSpec(
            name=name,
            cls=cls,
            family=family,
            paper=paper,
            authors=authors,
            venue=venue,
            year=year,
            dims=tuple(dims),
            equation=inspect.cleandoc(equation),
            dims_at_init="dims" in params,
            url=url,
            notes=inspect.cleandoc(notes) if notes else "",
            defaults=_constructor_defaults(cls),
        )
        _REGISTRY[name] = spec
        cls.registry_name = name
        cls.supported_dims = tuple(dims)
        return cls

    return deco


def _ensure_loaded() -> None:
    # Importing the zoo registers every module; done lazily so that registry.py has
    # no import cycle with the modules that use its decorator.
    from . import attention  # noqa: F401


def _unknown(name: str) -> ValueError:
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return ValueError(
        f"unknown attention {name!r}; {hint}registered: {', '.join(names)}"
    )


def get_spec(name: str) -> AttentionSpec:
    """The registry entry for ``name`` (ValueError with suggestions if unknown)."""
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def create_attention(name: str, channels: int, **options: Any) -> nn.Module:
    """Build the registered attention ``name`` for ``channels`` input channels.

    ``dims`` may always be given: it is passed to modules built for one
    dimensionality and checked against the supported dims of the others.
    """
    spec = get_spec(name)
    if "dims" in options:
        d = options["dims"]
        if d not in spec.dims:
            raise ValueError(
                f"{name}: dims={d!r} is not supported; valid: {', '.join(map(str, spec.dims))}"
            )
        if not spec.dims_at_init:
            options.pop("dims")
    return spec.cls(channels, **options)


def list_attention(family: str | None = None) -> list[str]:
    """Registered names, sorted, optionally of one family."""
    _ensure_loaded()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def describe(name: str) -> dict[str, Any]:
    """Paper, year, family, supported spatial dims, equation and defaults of ``name``."""
    return get_spec(name).as_dict()
