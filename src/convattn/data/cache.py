"""Where generated data sets are cached, and atomic writes.

The cache folder is, in order: the ``root`` argument (``--cache-dir``), the
``CONVATTN_CACHE`` environment variable (``CONVATTN_CACHE_DIR`` is accepted as an
alias), ``$XDG_CACHE_HOME/convattn``, or the
platform's user cache folder (``~/.cache/convattn`` on Linux,
``~/Library/Caches/convattn`` on macOS, ``%LOCALAPPDATA%\\convattn`` on Windows).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def cache_dir(root: str | Path | None = None) -> Path:
    """The cache folder (created if needed)."""
    if root is None:
        root = os.environ.get("CONVATTN_CACHE") or os.environ.get("CONVATTN_CACHE_DIR") or None
    if root is None:
        if os.environ.get("XDG_CACHE_HOME"):
            root = Path(os.environ["XDG_CACHE_HOME"]) / "convattn"
        elif sys.platform == "darwin":
            root = Path.home() / "Library" / "Caches" / "convattn"
        elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
            root = Path(os.environ["LOCALAPPDATA"]) / "convattn"
        else:
            root = Path.home() / ".cache" / "convattn"
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cache folder {path} is a file; pass a folder with --cache-dir or CONVATTN_CACHE")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename.

    A reader never sees a half-written file, and a crash leaves the old file (if
    any) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    return atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
