"""Load a torchvision or timm state dict from a local file into an attention model.

:func:`convattn.models.attach` never renames an original layer, so the base
layers of an attention model have exactly the names of the plain model: a
torchvision or timm checkpoint of the same architecture loads into them, and
the attention layers keep their initialisation. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .attach import attached

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "state_dict_ema", "model_ema")


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did.

    ``loaded``: keys copied into the model; ``missing``: base-model keys the file
    lacks; ``unexpected``: file keys the model lacks; ``mismatched``: keys present
    in both with different shapes (skipped: ``(key, file shape, model shape)``);
    ``attention``: keys of the inserted attention layers (kept at their init).
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    attention: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every base-model tensor was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors from {self.path}; "
            f"{len(self.attention)} attention tensors kept at init",
        ]
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                more = f", ... (+{len(keys) - 5})" if len(keys) > 5 else ""
                lines.append(f"{what} ({len(keys)}): {', '.join(keys[:5])}{more}")
        for k, a, b in self.mismatched:
            lines.append(f"shape mismatch (skipped): {k}: file {list(a)} vs model {list(b)}")
        return "\n".join(lines)


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"load_backbone_weights: no such file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, not a checkpoint, pickled code
        raise ValueError(f"load_backbone_weights: could not read {path} as a state dict: {type(e).__name__}: {e}") from e
    for _ in range(3):  # unwrap {"state_dict": {...}} and similar training checkpoints
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"load_backbone_weights: {path} does not contain a state dict (a dict of tensors)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_backbone_weights(model: nn.Module, path: str | Path, strict: bool = False) -> WeightsReport:
    """Copy the tensors of a local ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file into ``model``.

    Keys are matched by name; tensors whose shape differs (a new classifier,
    another ``in_chans``) are skipped and reported. Attention layers inserted by
    :func:`convattn.models.attach` are never expected in the file and keep their
    initialisation. ``strict=True`` raises ValueError unless the report is ok.
    Files are read with ``torch.load(weights_only=True)`` (no code is executed).
    """
    path = Path(path)
    src = _read(path)
    own = model.state_dict()
    prefixes = tuple(p + "." for p in attached(model))
    report = WeightsReport(str(path))
    report.attention = [k for k in own if k.startswith(prefixes)]
    to_load = {}
    for k, v in own.items():
        if k.startswith(prefixes):
            continue
        if k not in src:
            report.missing.append(k)
        elif tuple(src[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(src[k].shape), tuple(v.shape)))
        else:
            to_load[k] = src[k]
    report.unexpected = [k for k in src if k not in own]
    if strict and not report.ok:
        raise ValueError(f"load_backbone_weights(strict=True): {report}")
    result = model.load_state_dict(to_load, strict=False)
    report.loaded = [k for k in to_load if k not in result.unexpected_keys]
    return report
