"""Command-line options shared by ``convattn train`` and ``convattn compare``.

Kept here (not in cli.py) so that later task commands (segment, detect) reuse
the same flags, validation and run-folder conventions.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import Any

#: the default experiment of ``convattn compare`` (5 variants x 3 seeds on 2 CPU
#: cores, trained until the plateau rule holds; its measured numbers are in the README)
DEFAULTS = {
    "model": "resnet8",
    "epochs": 20,
    "batch_size": 16,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "warmup": 0.1,
    "image_size": 32,
    "train_size": 2500,
    "test_size": 2000,
}


#: the recipe for time-series data (``ucr:NAME``): the 1-D FCN of Wang et al. 2017 trained with
#: Adam as Fawaz et al. 2019 do (batch 16, lr 1e-3, no weight decay), on a cosine schedule
TS_DEFAULTS = {
    "model": "fcn1d",
    "epochs": 100,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "warmup": 0.05,
    "optimizer": "adamw",
}
#: the fields of a recipe
RECIPE_FIELDS = tuple(TS_DEFAULTS)


def recipe_for(data: str) -> dict[str, Any]:
    """The default training recipe for the data spec ``data``: :data:`TS_DEFAULTS` for ``ucr:NAME``,
    else :data:`DEFAULTS` with SGD."""
    if isinstance(data, str) and data.strip().lower().startswith("ucr:"):
        return dict(TS_DEFAULTS)
    return {**{k: DEFAULTS[k] for k in RECIPE_FIELDS if k in DEFAULTS}, "optimizer": "sgd"}


#: largest input size in pixels any command accepts (a 4096 x 4096 RGB float image is 200 MB)
MAX_IMAGE_SIZE = 4096
#: most torch threads any command accepts
MAX_THREADS = 1024
#: most seeds a comparison accepts
MAX_SEEDS = 1000


def machine_memory() -> int:
    """Physical memory in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not on every platform
        return 0


def check_fits(what: str, nbytes: float) -> None:
    """A one-line ValueError when ``what`` needs more memory (``nbytes``, an estimate) than the machine has."""
    total = machine_memory()
    if total and nbytes > total:
        raise ValueError(f"{what} needs about {nbytes / 1e9:,.0f} GB of memory but this machine has "
                         f"{total / 1e9:,.0f} GB; give smaller sizes")


def check_threads(threads: int | None, name: str = "threads") -> None:
    if threads is not None and threads > MAX_THREADS:
        raise ValueError(f"--{name} {threads} is more than any machine has; valid: 1..{MAX_THREADS}")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cluttered-mnist",
                   help="cluttered-mnist (default, embedded), cifar10:PATH, cifar100:PATH, ucr:NAME (a time-series "
                        "set bundled with aeon, e.g. ucr:GunPoint), or an image folder PATH")
    g.add_argument("--image-size", type=int, default=None,
                   help=f"input size in pixels (default {d['image_size']} for cluttered-mnist: its 48x48 canvases "
                        "are area-downsampled; 32 for CIFAR; 64 for folders)")
    g.add_argument("--train-size", type=int, default=None,
                   help=f"training images per epoch (default {d['train_size']} for cluttered-mnist, all otherwise)")
    g.add_argument("--canvases", choices=("fresh", "fixed"), default="fresh",
                   help="cluttered-mnist only: 'fresh' (default) draws new canvases from the training digits every "
                        "epoch; 'fixed' reuses the same --train-size canvases")
    g.add_argument("--test-size", type=int, default=None,
                   help=f"use the first N test images (default {d['test_size']} for cluttered-mnist, all otherwise)")
    g.add_argument("--cache-dir", default=None,
                   help="where the embedded data set is cached (default $CONVATTN_CACHE or the user cache folder)")
    g = p.add_argument_group("training (the same for every variant and seed)")
    t = TS_DEFAULTS

    def both(name: str) -> str:
        return f"default {d[name]}; {t[name]} for ucr:NAME"

    g.add_argument("--model", default=None, help=f"backbone from convattn.models ({both('model')})")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs ({both('epochs')})")
    g.add_argument("--batch-size", type=int, default=None, help=f"global batch size ({both('batch_size')})")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="sgd (Nesterov momentum) or adamw (default sgd; adamw for ucr:NAME)")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate ({both('lr')})")
    g.add_argument("--weight-decay", type=float, default=None, help=both("weight_decay"))
    g.add_argument("--momentum", type=float, default=None, help=f"SGD's Nesterov momentum (default {d['momentum']})")
    g.add_argument("--warmup", type=float, default=None,
                   help=f"fraction of steps of linear warm-up before the cosine decay ({both('warmup')})")
    g.add_argument("--attention-options", default=None, metavar="SPEC",
                   help="constructor options per variant: 'se:reduction=4;cbam:kernel_size=3,reduction=8', "
                        "or a .json/.toml file mapping each variant to its options")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--jobs", type=int, default=None,
                   help="trainings run at once, each in its own process on threads/jobs threads (default: one per "
                        "thread, up to 4, for the small CIFAR ResNets, whose steps use two cores poorly; else 1)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="run folder to create (must not exist; default runs/<command>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR with its saved options (other options are ignored)")
    g.add_argument("--quiet", action="store_true", help="no progress output (the report path is still printed)")


def check_positive(name: str, v: Any, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"--{name} must be a positive integer (>= 1), got {v!r}")


def unknown_model(name: str) -> ValueError:
    """The error for a ``--model`` that :func:`convattn.models.list_models` does not know."""
    from ..models import list_models

    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ValueError(f"unknown --model {name!r}; {hint}valid: {', '.join(list_models())}")


def check_variant(v: str) -> str:
    """A registry key or ``none``; unknown names suggest the closest."""
    from .. import list_attention

    valid = ["none", *list_attention()]
    if v in valid:
        return v
    close = difflib.get_close_matches(v, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown attention variant {v!r}; {hint}valid: {', '.join(valid)}")


def parse_variants(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("--variants is empty; give a comma-separated list such as none,se,cbam")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--variants lists {dup} more than once")
    return [check_variant(n) for n in names]


def parse_seeds(text: str) -> list[int]:
    """``3`` -> [0, 1, 2]; ``0,5,7`` -> those seeds (at most :data:`MAX_SEEDS`)."""
    text = str(text).strip()
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        raise ValueError(f"--seeds must be a count >= 1 (3 means 0,1,2) or a comma-separated list, got {text!r}") from None
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds must be a count >= 1 (3 means 0,1,2) or a comma-separated list, got {text!r}")
        if seeds > MAX_SEEDS:
            raise ValueError(f"--seeds {seeds} is more than the limit of {MAX_SEEDS} seeds; valid: 1..{MAX_SEEDS}")
        seeds = list(range(seeds))
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"--seeds lists {len(seeds)} seeds, more than the limit of {MAX_SEEDS}")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def _literal(text: str) -> Any:
    """``4`` -> 4, ``0.5`` -> 0.5, ``true`` -> True, ``'avg,max'`` -> a string."""
    import ast

    low = text.strip()
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    if low.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(low)
    except (ValueError, SyntaxError):
        return low


def parse_attention_options(text: str | dict | None, variants: list[str]) -> dict[str, dict[str, Any]]:
    """Per-variant constructor options, checked against each module's constructor.

    ``text``: ``'se:reduction=4;cbam:kernel_size=3,reduction=8'``, a path to a
    ``.json`` or ``.toml`` file holding ``{"se": {"reduction": 4}, ...}``, or that
    mapping itself. Every key must be one of ``variants`` (not ``none``); every
    option a constructor argument of that module (the error lists the valid ones);
    values that the module refuses fail here, before any work.
    """
    if text is None or text == "" or text == {}:
        return {}
    if isinstance(text, dict):
        raw = text
    else:
        path = Path(str(text)).expanduser()
        if str(text).endswith((".json", ".toml")):
            if not path.is_file():
                raise FileNotFoundError(f"--attention-options file {path} does not exist")
            try:
                if path.suffix == ".json":
                    raw = json.loads(path.read_text())
                else:
                    import tomllib

                    raw = tomllib.loads(path.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise ValueError(f"--attention-options file {path} is not valid {path.suffix[1:]}: "
                                 f"{str(e).splitlines()[0]}") from None
        else:
            raw = {}
            for part in (p.strip() for p in str(text).split(";")):
                if not part:
                    continue
                key, sep, rest = part.partition(":")
                if not sep or not rest.strip():
                    raise ValueError(f"--attention-options: {part!r} is not KEY:OPTION=VALUE[,OPTION=VALUE] "
                                     "(e.g. 'se:reduction=4;cbam:kernel_size=3')")
                opts = raw.setdefault(key.strip(), {})
                for item in rest.split(","):
                    name, eq, value = item.partition("=")
                    if not eq or not name.strip():
                        raise ValueError(f"--attention-options: {item.strip()!r} in {part!r} is not OPTION=VALUE")
                    opts[name.strip()] = _literal(value)
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError("--attention-options must map each variant to a table of options, "
                         "e.g. {\"se\": {\"reduction\": 4}}")
    from ..registry import create_attention, get_spec

    out: dict[str, dict[str, Any]] = {}
    usable = [v for v in variants if v != "none"]
    for key, opts in raw.items():
        if key not in usable:
            raise ValueError(f"--attention-options names {key!r}, which is not among the variants; "
                             f"valid: {', '.join(usable) or '(no attention variant)'}")
        spec = get_spec(key)
        valid = sorted(spec.defaults)
        for name in opts:
            if name not in spec.defaults:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ValueError(f"--attention-options: {key} has no option {name!r}; {hint}valid: {', '.join(valid)}")
        try:
            create_attention(key, 64, **opts)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--attention-options for {key}: {str(e).splitlines()[0]}") from None
        out[key] = dict(opts)
    return out
