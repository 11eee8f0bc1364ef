"""Inference fusion: a norm (or conv) and the gate attached after it as one module.

``fuse_for_inference(model)`` is an explicit step, in the spirit of conv-BN
fusion: each layer that :func:`convattn.attach` put a gating module after, when the
layer is a torch norm or conv (an exact type: its forward returns a new tensor of
its own), becomes a :class:`NormGate` that runs both. In eval without autograd
the gate's fast path then writes Y over the layer's fresh output instead of a new
tensor: one full-size tensor less allocated and written per block. Results are
unchanged; :func:`unfuse` (and :func:`convattn.detach`) restore the attached
model.

The state-dict keys of a fused layer gain ``.norm`` (``layer1.0.bn3.weight``
becomes ``layer1.0.bn3.norm.weight``); the attention's keys are unchanged. Fuse
after loading weights. Hooks registered on a fused layer's ``norm`` see its output
before the gate overwrites it and must not keep it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.attach import _HOOK, _MARK, ATTR, _apply_attention
from . import plans
from .select import registered

#: layers whose forward returns a new tensor of its own (exact types: a subclass may keep it)
FRESH_OUTPUT = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Conv1d, nn.Conv2d, nn.Conv3d,
)


class NormGate(nn.Module):
    """``attention(norm(x))``, the attention writing its result over the norm's output
    when its fast path can (eval, no autograd)."""

    def __init__(self, norm: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if torch.is_grad_enabled() or type(y) is not torch.Tensor:
            return self.attention(y)
        with plans.overwriting(self.attention, y):
            return self.attention(y)


def _sites(model: nn.Module):
    """(parent, name, layer) for every attached layer that can be fused."""
    fast = registered()
    for path, layer in list(model.named_modules()):
        gate = layer._modules.get(ATTR)
        if not path or not getattr(gate, _MARK, False):
            continue
        if type(layer) not in FRESH_OUTPUT or type(gate) not in fast or _HOOK not in gate.__dict__:
            continue
        parent_path, _, name = path.rpartition(".")
        yield model.get_submodule(parent_path), name, layer


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fuse every attached (norm or conv, gate) pair of ``model`` in place; returns ``model``."""
    for parent, name, layer in list(_sites(model)):
        gate = layer._modules.pop(ATTR)
        gate.__dict__.pop(_HOOK).remove()
        setattr(parent, name, NormGate(layer, gate))
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Undo :func:`fuse_for_inference`: the layers with their attached gates again."""
    for path, fused in list(model.named_modules()):
        if type(fused) is not NormGate or not path:
            continue
        parent_path, _, name = path.rpartition(".")
        layer, gate = fused.norm, fused.attention
        layer.add_module(ATTR, gate)
        setattr(gate, _HOOK, layer.register_forward_hook(_apply_attention))
        setattr(model.get_submodule(parent_path), name, layer)
    return model
