"""Run folders and the files every job writes into them.

- :func:`new_run_dir`: one folder per run, never reusing an existing one;
- :func:`check_out_free`: fail before any work when ``--out`` exists;
- :func:`write_json`: atomic JSON (NaN kept, tensors and paths converted);
- :func:`save_run_config` / :func:`load_run_config`: ``config.json``, what
  ``--resume`` reads back, checked for the right command and shape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write_bytes


def new_run_dir(out: str | Path | None, command: str, root: str | Path = "runs") -> Path:
    """Create the run folder: ``out`` (must not exist) or ``root/<command>-<timestamp>[-k]``."""
    if out is not None:
        path = Path(out).expanduser()
        if path.exists():
            raise FileExistsError(f"output folder {path} already exists; choose a new --out (nothing was overwritten)")
        path.mkdir(parents=True)
        return path
    base = Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free run folder name under {root}")


def check_out_free(out: str | Path | None) -> None:
    """Fail early (before any work) when ``--out`` already exists."""
    if out is not None and Path(out).expanduser().exists():
        raise FileExistsError(
            f"output folder {Path(out).expanduser()} already exists; choose a new --out or pass --resume to continue it"
        )


def _json_default(o: Any) -> Any:
    if hasattr(o, "as_dict"):
        return o.as_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (what :func:`write_json` writes and ``json.load`` returns)."""
    return json.loads(json.dumps(obj, default=_json_default, allow_nan=True))


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True).encode()
    return atomic_write_bytes(path, lambda f: f.write(text))


def save_run_config(run_dir: Path, payload: dict[str, Any]) -> None:
    write_json(Path(run_dir) / "config.json", payload)


def load_run_config(run_dir: str | Path, command: str) -> dict[str, Any]:
    """``config.json`` of a run folder, for ``--resume``; clear errors for anything else."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {path}: no such run folder")
    cfg = path / "config.json"
    try:
        payload = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--resume {path}: no config.json (not a convattn run folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--resume {path}: config.json is corrupt ({e})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"--resume {path}: config.json is not a JSON object")
    if payload.get("command") != command:
        raise ValueError(f"--resume {path}: that folder is a '{payload.get('command')}' run, not '{command}'")
    for key, kind in (("args", dict), ("variants", list), ("seeds", list)):
        if key in payload and not isinstance(payload[key], kind):
            raise ValueError(f"--resume {path}: config.json's {key!r} must be a JSON {kind.__name__}")
    return payload


def load_job(run_dir: str | Path, command: str, cls: type) -> Any:
    """The typed job (``cls.from_dict``) saved as ``config.json``'s ``job`` table, for ``--resume``."""
    payload = load_run_config(run_dir, command)
    job = payload.get("job")
    if not isinstance(job, dict):
        raise ValueError(f"--resume {run_dir}: config.json has no 'job' table (made by an older convattn?)")
    try:
        return cls.from_dict(job)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--resume {run_dir}: config.json's job is malformed ({str(e).splitlines()[0]})") from None
