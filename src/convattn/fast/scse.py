"""Fast paths of sSE and scSE.

sSE: Y = X * q, q = sigmoid(w . X + b); scSE: Y = max(X s, X q) or X (s + q). With
autograd the sSE logits, the merged product and the input gradient are native
passes and the gate networks are the module's own methods under autograd; without
autograd one ``gate_eval`` kernel call. At a tie of the max merge (X = 0 or s = q)
the gradient takes the cSE branch, as in the plain forward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import scse as _scse
from ..attention.scse import SCSE, SSE
from . import plans
from .gated import MAX, SUM, GateSpec, gated, recorded_params
from .select import register


def _linear_index(m: nn.Module, x: torch.Tensor, params: tuple) -> int | None:
    """Where ``m.proj.weight`` is in ``params``, None unless proj is an nn.Linear(C, 1)."""
    proj = m.proj
    if type(proj) is not nn.Linear or tuple(proj.weight.shape) != (1, x.shape[1]):
        return None
    return next((i for i, p in enumerate(params) if p is proj.weight), None)


def _merge_mode(m: SCSE) -> int:
    return SUM if m.merge == "sum" else MAX


def _sse_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.gate_plan(x, m, linear=m.proj)


@register(
    SSE,
    declares="sSE: X * sigmoid(proj(X)) over channels, proj nn.Linear(C, 1); 1-3 spatial dims",
    mirrors={
        "forward": "d924cdffb819",
        "gate": "4b61601e77b0",
        "gate_from_logits": "d563f730861b",
        (_scse, "sse_gate"): "36b95d7e8161",
    },
)
def sse(m: SSE, x: torch.Tensor):
    params = recorded_params(m, x)
    if params is None:
        return plans.run_eval(m, x, _sse_plan)
    index = _linear_index(m, x, params)
    if index is None:
        return "proj is not an nn.Linear(C, 1)"
    return gated(x, GateSpec(spatial=m.gate_from_logits, spatial_kind="linear", linear_index=index), params)


def _scse_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.gate_plan(x, m, mlp=(m.fc1, m.fc2), linear=m.proj, mode=_merge_mode(m))


@register(
    SCSE,
    declares="scSE: max(X s, X q) or X (s + q), s = sigmoid(fc2 relu fc1 GAP X), q = sigmoid(proj X)",
    mirrors={
        "forward": "822eb6d1cc86",
        "gates": "886c8c71d720",
        "channel_gate_from_mean": "32be913567b5",
        "spatial_gate_from_logits": "d563f730861b",
        (_scse, "sse_gate"): "36b95d7e8161",
    },
)
def scse(m: SCSE, x: torch.Tensor):
    params = recorded_params(m, x)
    if params is None:
        return plans.run_eval(m, x, _scse_plan, m.merge)
    index = _linear_index(m, x, params)
    if index is None:
        return "proj is not an nn.Linear(C, 1)"
    spec = GateSpec(channel=m.channel_gate_from_mean, spatial=m.spatial_gate_from_logits, spatial_kind="linear",
                    linear_index=index, mode=_merge_mode(m))
    return gated(x, spec, params)
