"""Run folders and the files every job writes into them.

- :func:`new_run_dir`: one folder per run, never reusing an existing one;
- :func:`check_out_free`: fail before any work when ``--out`` exists or it or
  the cache folder cannot be written;
- :func:`discard_new_runs`: after an error, remove the run folders made since
  that hold no checkpoint;
- :func:`write_json`: atomic JSON (NaN kept, tensors and paths converted);
- :func:`save_run_config` / :func:`load_run_config`: ``config.json``, what
  ``--resume`` reads back, checked for the right command and shape;
- :func:`load_job`: the typed job of a run to resume, refusing a finished run
  and removing the temporary files an interrupted write left.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..data.cache import atomic_write_bytes

#: (run folder, outermost folder created with it) of each :func:`new_run_dir` since the command started
NEW_RUNS: list[tuple[Path, Path]] = []


def _mkdir_tracked(path: Path) -> None:
    top = path
    while not top.parent.exists():
        top = top.parent
    path.mkdir(parents=True, exist_ok=False)
    NEW_RUNS.append((path, top))


def new_run_dir(out: str | Path | None, command: str, root: str | Path = "runs") -> Path:
    """Create the run folder: ``out`` (must not exist) or ``root/<command>-<timestamp>[-k]``."""
    if out is not None:
        path = Path(out).expanduser()
        if path.exists():
            raise FileExistsError(f"output folder {path} already exists; choose a new --out (nothing was overwritten)")
        _mkdir_tracked(path)
        return path
    base = Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            _mkdir_tracked(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free run folder name under {root}")


def discard_new_runs(error: str = "") -> str:
    """After an error: remove each run folder in :data:`NEW_RUNS` that holds no checkpoint (and the
    parents made for it, if empty), keep the others; a kept folder without a ``report.md`` gets
    one that says why the run stopped (``error``) and how to continue it.

    Returns what was done as a note to append to the one-line error ("" when no folder was made).
    """
    notes = []
    while NEW_RUNS:
        path, top = NEW_RUNS.pop()
        if not path.is_dir():
            continue
        if next(path.rglob("latest.json"), None) is not None:
            if error and not (path / "report.md").exists():
                text = (f"# Run stopped\n\n{error}\n\nThe checkpoints written before the error are kept: "
                        f"`--resume {path}` continues from the last one (change what the error names first).\n")
                data = text.encode()
                atomic_write_bytes(path / "report.md", lambda f, data=data: f.write(data))
            notes.append(f"; the run folder {path} is kept with its checkpoints (--resume {path} continues it)")
            continue
        shutil.rmtree(path, ignore_errors=True)
        made = path
        while made != top:  # the parents created with it, innermost first, while empty
            made = made.parent
            try:
                made.rmdir()
            except OSError:
                break
        notes.append(f"; removed the new run folder {path} (nothing useful was written)")
    return "".join(notes)


def check_writable(path: str | Path, option: str) -> None:
    """Fail early when the folder ``path`` (existing or to be created) cannot be written; one line naming ``option``."""
    p = Path(path).expanduser()
    base = p
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(f"{option} {p}: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".convattn-write-check-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{option} {p} is not writable ({e.strerror} in {base}); "
                              "choose a folder you can write to") from None


def check_out_free(out: str | Path | None, cache_dir: str | Path | None = None, root: str | Path = "runs") -> None:
    """Fail early (before any work) when ``--out`` already exists, or it (default: ``root``) or
    ``--cache-dir`` cannot be written."""
    if out is not None and Path(out).expanduser().exists():
        raise FileExistsError(
            f"output folder {Path(out).expanduser()} already exists; choose a new --out or pass --resume to continue it"
        )
    check_writable(root if out is None else out, "--out" if out is not None else "run folder")
    if cache_dir is not None:
        check_writable(cache_dir, "--cache-dir")


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
    """The typed job (``cls.from_dict``) saved as ``config.json``'s ``job`` table, for ``--resume``.

    Refuses a finished run (:func:`is_finished`) without touching it; otherwise
    removes the temporary files (``.*.tmp``) that an interrupted write left.
    """
    payload = load_run_config(run_dir, command)
    job = payload.get("job")
    if not isinstance(job, dict):
        raise ValueError(f"--resume {run_dir}: config.json has no 'job' table (made by an older convattn?)")
    try:
        job = cls.from_dict(job)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--resume {run_dir}: config.json's job is malformed ({str(e).splitlines()[0]})") from None
    path = Path(run_dir).expanduser()
    if is_finished(path, job):
        raise ValueError(f"--resume {path}: that run is finished (every training reached its last epoch and "
                         "metrics.json is written); nothing to do, nothing was changed")
    for tmp in path.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return job


def is_finished(run_dir: Path, job: Any) -> bool:
    """Whether ``run_dir`` holds ``metrics.json`` and each of ``job``'s variant x seed trainings
    (or, with ``train_sizes``, each size's comparison) is complete."""
    if not (run_dir / "metrics.json").is_file():
        return False
    sizes = getattr(job, "train_sizes", None)
    if sizes:
        return all((run_dir / f"size-{n}" / "metrics.json").is_file() for n in sizes)
    for v in job.variants:
        for seed in job.seeds:
            try:
                epoch = json.loads((run_dir / "runs" / f"{v or 'none'}-seed{seed}" / "latest.json").read_text())["epoch"]
            except (OSError, ValueError, TypeError, KeyError):
                return False
            if epoch != job.epochs:
                return False
    return True
