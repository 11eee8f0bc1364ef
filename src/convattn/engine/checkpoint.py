"""Checkpoints: safetensors weights + a weights-only ``.pt`` for the optimiser + JSON.

Layout of a checkpoint folder (one per training, written every epoch)::

    epoch-0003.safetensors   model state_dict (weights and buffers), safetensors
    epoch-0003.optim.pt      {"optimizer": state_dict, "torch_rng": ByteTensor, "epoch": 3}
                             written with torch.save; contains only tensors, numbers,
                             strings, lists and dicts, so it loads with
                             torch.load(weights_only=True) (no pickled code)
    latest.json              {"format": "convattn-checkpoint", "epoch": 3, "weights": ...,
                              "optimizer": ..., "config": {...}, "history": [...],
                              "rng": {...}}

Each file is written to a temporary name and renamed; ``latest.json`` is
renamed last and names the files of its epoch, so a run killed while saving
still has the previous complete checkpoint. Files of older epochs are removed
after ``latest.json`` moved on.

Loading anything that is not a complete checkpoint raises a ``ValueError``
with one line saying which file is wrong; ``latest.json``'s ``weights`` and
``optimizer`` must be plain file names, so nothing outside the checkpoint
folder is ever read.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ..data.cache import atomic_write_bytes

FORMAT = "convattn-checkpoint"
LATEST = "latest.json"


def _weights_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    return save(tensors, metadata=metadata)


def save_checkpoint(
    folder: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    epoch: int,
    config: dict[str, Any],
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``epoch`` into ``folder``; returns latest.json's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    weights = f"{stem}.safetensors"
    optim = f"{stem}.optim.pt"
    blob = _weights_bytes(model_state, {"format": FORMAT, "epoch": str(epoch)})
    atomic_write_bytes(folder / weights, lambda f: f.write(blob))
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer_state, "torch_rng": torch.get_rng_state(), "epoch": epoch}, buf)
    atomic_write_bytes(folder / optim, lambda f: f.write(buf.getvalue()))
    meta = {
        "format": FORMAT,
        "epoch": epoch,
        "weights": weights,
        "optimizer": optim,
        "config": config,
        "history": history,
        "rng": {"torch": "stored in the optimizer file as torch_rng", "torch_initial_seed": torch.initial_seed()},
        **(extra or {}),
    }
    text = json.dumps(meta, indent=2).encode()
    latest = atomic_write_bytes(folder / LATEST, lambda f: f.write(text))
    for old in folder.glob("epoch-*"):
        if not old.name.startswith(stem + "."):
            old.unlink(missing_ok=True)
    return latest


def find_checkpoint(path: str | Path) -> Path:
    """``latest.json`` for a checkpoint folder, a run folder, or the JSON itself."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file():
        if p.suffix == ".json":
            return p
        if p.suffix == ".safetensors" and (p.parent / LATEST).exists():
            return p.parent / LATEST
        raise ValueError(f"checkpoint {p} is not a convattn checkpoint (expected a run folder or its {LATEST})")
    for cand in (p / LATEST, p / "checkpoint" / LATEST):
        if cand.exists():
            return cand
    inside = sorted(p.glob(f"runs/*/{LATEST}"))  # a train/compare run folder
    if len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        names = ", ".join(str(c.parent) for c in inside[:6])
        raise ValueError(f"{p} holds {len(inside)} checkpoints; pass one of: {names}")
    raise FileNotFoundError(f"no checkpoint in {p} (expected a run folder or a folder with {LATEST})")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (config, epoch, history), validated."""
    latest = find_checkpoint(path)
    try:
        meta = json.loads(latest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {latest} is corrupt: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {latest} is not a convattn checkpoint (no format={FORMAT!r})")
    for key in ("epoch", "weights", "optimizer", "config", "history"):
        if key not in meta:
            raise ValueError(f"checkpoint {latest} is corrupt: missing {key!r}")
    epoch = meta["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"checkpoint {latest} is corrupt: 'epoch' must be an integer >= 0, got {epoch!r}")
    if not isinstance(meta["config"], dict):
        raise ValueError(f"checkpoint {latest} is corrupt: 'config' must be a JSON object")
    history = meta["history"]
    if not isinstance(history, list) or len(history) != epoch or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"checkpoint {latest} is corrupt: 'history' must be a list of one object per epoch "
                         f"({epoch} at epoch {epoch})")
    if "classes" in meta and not (isinstance(meta["classes"], list) and all(isinstance(c, str) for c in meta["classes"])):
        raise ValueError(f"checkpoint {latest} is corrupt: 'classes' must be a list of names")
    for key in ("weights", "optimizer"):
        name = meta[key]
        # only a file name inside the checkpoint folder: never a path that leads elsewhere
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"checkpoint {latest}: {key!r} must name a file inside {latest.parent}, got {name!r}")
    meta["_folder"] = str(latest.parent)
    return meta


def load_checkpoint(path: str | Path, *, optimizer: bool = True) -> dict[str, Any]:
    """Load a checkpoint: ``{"meta", "model_state", "optimizer_state", "torch_rng"}``."""
    meta = read_metadata(path)
    folder = Path(meta["_folder"])
    wpath = folder / meta["weights"]
    for f in (wpath, folder / meta["optimizer"]):
        if f.is_symlink() and f.resolve().parent != folder.resolve():
            raise ValueError(f"checkpoint {f} links outside its folder {folder}; refusing to read it")
    try:
        from safetensors import safe_open

        state = {}
        with safe_open(str(wpath), framework="pt") as f:
            file_meta = f.metadata() or {}
            for k in f.keys():
                state[k] = f.get_tensor(k)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {wpath} is missing (incomplete checkpoint folder)") from None
    except Exception as e:
        raise ValueError(f"checkpoint {wpath} is corrupt: {' '.join(str(e).split()) or type(e).__name__}") from None
    if file_meta.get("epoch") != str(meta["epoch"]):
        raise ValueError(f"checkpoint {wpath} is from epoch {file_meta.get('epoch')}, latest.json says {meta['epoch']}")
    out: dict[str, Any] = {"meta": meta, "model_state": state, "optimizer_state": None, "torch_rng": None}
    if optimizer:
        opath = folder / meta["optimizer"]
        try:
            blob = torch.load(opath, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"checkpoint {opath} is missing (incomplete checkpoint folder)") from None
        except Exception as e:
            raise ValueError(f"checkpoint {opath} is corrupt: {' '.join(str(e).split())[:200]}") from None
        if not isinstance(blob, dict) or blob.get("epoch") != meta["epoch"] or "optimizer" not in blob:
            raise ValueError(f"checkpoint {opath} does not match latest.json (epoch {meta['epoch']})")
        out["optimizer_state"] = blob["optimizer"]
        out["torch_rng"] = blob.get("torch_rng")
    return out
