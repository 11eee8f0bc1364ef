"""What a benchmark measures, described by a JSON-serialisable dict.

A *target* is a small dict that :func:`build` turns into an ``nn.Module``. Being
plain data, it can be sent to the fresh subprocess that measures peak memory and
rebuilt there. Kinds:

- ``{"kind": "module", "name": "se", "channels": 256, "dims": 2, "options": {}}``:
  a registered attention module;
- ``{"kind": "floor"}``: the memory-traffic floor of a channel gate,
  ``x * x.mean(spatial)``: one read to pool, one read and one write to scale;
- ``{"kind": "timm_module", ...}`` (same fields as ``module``): timm's
  implementation of the same mechanism, configured to the widths of ours;
- ``{"kind": "model", "model": "resnet50", "attention": "cbam", "where": "block", "fuse": True}``:
  :func:`convattn.models.create_model` (``attention`` None for the plain model), with
  ``fuse`` then :func:`convattn.fast.fuse_for_inference`;
- ``{"kind": "timm_model", "model": "resnet50", "attention": "cbam"}``: timm's
  model with timm's own attention layer (None for timm's plain model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: registry key -> the timm class with the same maths (a peer to compare against)
TIMM_PEERS: dict[str, str] = {
    "se": "timm.layers.squeeze_excite.SEModule",
    "eca": "timm.layers.eca.EcaModule",
    "cbam": "timm.layers.cbam.CbamModule",
    "ge": "timm.layers.gather_excite.GatherExcite",
    "coord": "timm.layers.coord_attn.CoordAttn",
    "ela": "timm.layers.coord_attn.EfficientLocalAttn",
    "strip": "timm.layers.coord_attn.StripAttn",
    "scoord": "timm.layers.coord_attn.SimpleCoordAttn",
    "lcbam": "timm.layers.cbam.LightCbamModule",
    "gc": "timm.layers.global_context.GlobalContext",
    "nonlocal": "timm.layers.non_local_attn.NonLocalAttn",
}
#: registry key -> timm's ``attn_layer`` string for whole models
TIMM_MODEL_ATTN: dict[str, str] = {"se": "se", "eca": "eca", "cbam": "cbam", "ge": "ge", "gc": "gc", "nonlocal": "nl"}


class Floor(nn.Module):
    """The memory-traffic floor of a gate: ``x * mean_spatial(x)``.

    Reads x twice and writes it once, which every gating module must do at
    least; a module's latency divided by this one's says how far it is from the
    bandwidth limit.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        return x * s


def module_target(name: str, channels: int, dims: int, options: dict | None = None) -> dict[str, Any]:
    return {"kind": "module", "name": name, "channels": int(channels), "dims": int(dims), "options": dict(options or {})}


def floor_target() -> dict[str, Any]:
    return {"kind": "floor"}


def timm_target(name: str, channels: int, dims: int, options: dict | None = None) -> dict[str, Any]:
    return {"kind": "timm_module", "name": name, "channels": int(channels), "dims": int(dims), "options": dict(options or {})}


def model_target(model: str, attention: str | None, where: str = "block", options: dict | None = None,
                 fuse: bool = True) -> dict[str, Any]:
    """Our model with ``attention``; ``fuse``: after :func:`convattn.fast.fuse_for_inference`
    (the inference step a deployment takes; it changes no output)."""
    return {"kind": "model", "model": model, "attention": attention, "where": where, "options": dict(options or {}),
            "fuse": fuse}


def timm_model_target(model: str, attention: str | None) -> dict[str, Any]:
    return {"kind": "timm_model", "model": model, "attention": attention}


def has_timm() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def timm_peer_available(name: str, dims: int) -> bool:
    """timm has ``name`` (2D only) and timm is installed."""
    return name in TIMM_PEERS and dims == 2 and has_timm()


def timm_model_available(model: str, attention: str | None) -> bool:
    if not has_timm() or not model.startswith("resnet") or model in ("resnet8", "resnet20", "resnet32", "resnet56"):
        return False
    import timm

    return timm.is_model(model) and (attention is None or attention in TIMM_MODEL_ATTN)


# --- reading widths off our modules, to configure timm's the same way ---------

def _convs_and_linears(m: nn.Module):
    for sub in m.modules():
        if isinstance(sub, nn.Linear):
            yield sub, sub.in_features, sub.out_features, (1,), sub.bias is not None
        elif isinstance(sub, nn.modules.conv._ConvNd):
            yield sub, sub.in_channels, sub.out_channels, tuple(sub.kernel_size), sub.bias is not None


def reduced_width(m: nn.Module, channels: int) -> int | None:
    """Width of the first C -> w (w < C) 1x1 conv or linear layer, if any."""
    for _, cin, cout, k, _ in _convs_and_linears(m):
        if cin == channels and cout < channels and all(v == 1 for v in k):
            return cout
    return None


def _first_bias(m: nn.Module, channels: int) -> bool:
    for _, cin, cout, _k, bias in _convs_and_linears(m):
        if cin == channels and cout < channels:
            return bias
    return True


def _kernel(m: nn.Module, cin: int, cout: int) -> int | None:
    for _, i, o, k, _ in _convs_and_linears(m):
        if i == cin and o == cout and k[0] > 1:
            return int(k[0])
    return None


def build_timm_peer(name: str, ours: nn.Module, channels: int) -> nn.Module:
    """timm's module for ``name`` with the same widths as ``ours``."""
    import importlib

    if name not in TIMM_PEERS:
        raise ValueError(f"timm has no peer for {name!r}; peers: {', '.join(TIMM_PEERS)}")
    mod_name, _, cls_name = TIMM_PEERS[name].rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)

    w = reduced_width(ours, channels)
    if name == "se":
        return cls(channels, rd_channels=w or channels // 16, bias=_first_bias(ours, channels))
    if name == "eca":
        k = _kernel(ours, 1, 1)
        return cls(channels=None, kernel_size=k) if k else cls(channels)
    if name == "cbam":
        return cls(
            channels, rd_channels=w or channels // 16, spatial_kernel_size=_kernel(ours, 2, 1) or 7,
            mlp_bias=_first_bias(ours, channels),
        )
    if name == "ge":
        has_params = any(True for _ in ours.parameters())
        if has_params and w is not None:
            return cls(channels, use_mlp=True, rd_channels=w)
        return cls(channels, use_mlp=False)
    if name == "coord":
        return cls(channels, rd_channels=w or max(8, channels // 32), bias=_first_bias(ours, channels))
    if name == "gc":
        return cls(channels, fuse_add=True, fuse_scale=False, rd_channels=w or channels // 16)
    if name == "nonlocal":
        return cls(channels, rd_channels=w or channels // 2)
    if name == "ela":  # timm's configuration (separate convs and norms); ours may share them
        return cls(channels, kernel_size=ours.kernel_size)
    if name == "strip":
        return cls(channels, use_conv=ours.conv_h is not None, kernel_size=ours.kernel_size)
    if name == "scoord":
        return cls(channels, rd_channels=ours.fc1.out_features)
    if name == "lcbam":
        return cls(channels, rd_channels=ours.fc1.out_features, spatial_kernel_size=ours.kernel_size)
    raise ValueError(f"timm has no peer for {name!r}; peers: {', '.join(TIMM_PEERS)}")


def build(target: dict[str, Any]) -> nn.Module:
    """The module described by ``target`` (see the module docstring)."""
    kind = target.get("kind")
    if kind == "floor":
        return Floor()
    if kind in ("module", "timm_module"):
        from ..registry import create_attention

        ours = create_attention(target["name"], target["channels"], dims=target["dims"], **target.get("options", {}))
        if kind == "module":
            return ours
        return build_timm_peer(target["name"], ours, target["channels"])
    if kind == "model":
        from ..models import create_model

        net = create_model(target["model"], attention=target["attention"], where=target.get("where", "block"),
                           **target.get("options", {}))
        if target.get("fuse"):
            from ..fast import fuse_for_inference

            fuse_for_inference(net)
        return net
    if kind == "timm_model":
        import timm

        att = target["attention"]
        block_args = {"attn_layer": TIMM_MODEL_ATTN[att]} if att else None
        kw = {"block_args": block_args} if block_args else {}
        return timm.create_model(target["model"], pretrained=False, **kw)
    raise ValueError(f"unknown benchmark target kind {kind!r}")


def label(target: dict[str, Any]) -> str:
    """Short human name of a target."""
    kind = target["kind"]
    if kind == "floor":
        return "FLOOR"
    if kind == "module":
        return target["name"]
    if kind == "timm_module":
        return f"timm:{target['name']}"
    if kind == "model":
        att = target["attention"]
        return f"{target['model']}" + (f"+{att}@{target.get('where', 'block')}" if att else " (plain)")
    if kind == "timm_model":
        att = target["attention"]
        return f"timm {target['model']}" + (f"+{att}" if att else " (plain)")
    return str(target)
