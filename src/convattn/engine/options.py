"""Command-line options shared by ``convattn train`` and ``convattn compare``.

Kept here (not in cli.py) so that later task commands (segment, detect) reuse
the same flags, validation and run-folder conventions.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

from .trainer import TrainConfig

#: the budget of ``convattn compare`` with no options (5 variants x 3 seeds
#: within 5 minutes on 2 CPU cores; see the README)
DEFAULTS = {
    "model": "resnet8",
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.2,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "warmup": 0.1,
    "image_size": 32,
    "train_size": 2500,
    "test_size": 800,
}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--data", default="cluttered-mnist",
                   help="cluttered-mnist (default, embedded), cifar10:PATH, cifar100:PATH, or an image folder PATH")
    g.add_argument("--image-size", type=int, default=None,
                   help=f"input size in pixels (default {d['image_size']} for cluttered-mnist: its 64x64 canvases "
                        "are area-downsampled; 32 for CIFAR; 64 for folders)")
    g.add_argument("--train-size", type=int, default=None,
                   help=f"use the first N training images (default {d['train_size']} for cluttered-mnist, all otherwise)")
    g.add_argument("--test-size", type=int, default=None,
                   help=f"use the first N test images (default {d['test_size']} for cluttered-mnist, all otherwise)")
    g.add_argument("--cache-dir", default=None,
                   help="where the embedded data set is cached (default $CONVATTN_CACHE or the user cache folder)")
    g = p.add_argument_group("training (the same for every variant and seed)")
    g.add_argument("--model", default=d["model"], help=f"backbone from convattn.models (default {d['model']})")
    g.add_argument("--epochs", type=int, default=d["epochs"], help=f"epochs (default {d['epochs']})")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"global batch size (default {d['batch_size']})")
    g.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate of SGD (default {d['lr']})")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help=f"default {d['weight_decay']}")
    g.add_argument("--momentum", type=float, default=d["momentum"], help=f"Nesterov momentum (default {d['momentum']})")
    g.add_argument("--warmup", type=float, default=d["warmup"],
                   help=f"fraction of steps of linear warm-up before the cosine decay (default {d['warmup']})")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
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


def validate_training_args(args: argparse.Namespace) -> None:
    """Impossible options -> ValueError before anything is loaded or written."""
    for name in ("epochs", "batch_size"):
        check_positive(name.replace("_", "-"), getattr(args, name), allow_none=False)
    for name in ("image_size", "train_size", "test_size", "threads"):
        check_positive(name.replace("_", "-"), getattr(args, name))
    from ..models import list_models

    if args.model not in list_models():
        close = difflib.get_close_matches(args.model, list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown --model {args.model!r}; {hint}valid: {', '.join(list_models())}")
    TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, warmup=args.warmup,
    ).validate()


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
    """``3`` -> [0, 1, 2]; ``0,5,7`` -> those seeds."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            n = int(text)
            if n < 1:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise ValueError(f"--seeds must be a count >= 1 (3 means 0,1,2) or a comma-separated list, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def data_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Budget defaults apply to the embedded set; user data uses all of it unless asked."""
    from ..data import parse_spec

    kind, _ = parse_spec(args.data)
    embedded = kind == "embedded"
    return {
        "image_size": args.image_size if args.image_size is not None else (DEFAULTS["image_size"] if embedded else None),
        "train_size": args.train_size if args.train_size is not None else (DEFAULTS["train_size"] if embedded else None),
        "test_size": args.test_size if args.test_size is not None else (DEFAULTS["test_size"] if embedded else None),
        "cache": args.cache_dir,
    }


def train_config(args: argparse.Namespace, data: Any) -> TrainConfig:
    kw = data_kwargs(args)
    return TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, momentum=args.momentum, warmup=args.warmup,
        data=args.data, image_size=data.image_size, train_size=kw["train_size"], test_size=kw["test_size"],
        num_classes=data.num_classes, in_chans=data.in_chans,
    ).validate()


def save_run_config(run_dir: Path, payload: dict[str, Any]) -> None:
    from .report import write_json

    write_json(run_dir / "config.json", payload)


def load_run_config(run_dir: str | Path, command: str) -> dict[str, Any]:
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such run folder")
    cfg = path / "config.json"
    try:
        payload = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--resume {path}: no config.json (not a convattn run folder)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume {path}: config.json is corrupt ({e})") from None
    if payload.get("command") != command:
        raise ValueError(f"--resume {path}: that folder is a '{payload.get('command')}' run, not '{command}'")
    return payload
