"""Fast paths of CBAM's spatial gate and of CBAM.

With autograd: the channel and spatial poolings, the product and the input
gradient are native passes; the channel MLP is the module's own method under
autograd, and the spatial gate's 2 -> 1 k x k conv runs on the native conv kernel
(:func:`convattn.fast.gated.conv_1out`) inside :func:`spatial_gate`, which mirrors
``CBAMSpatial.gate_from_pools``. Without autograd and with the BatchNorm in eval,
the whole module is one ``gate_eval`` kernel call (2-D inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..attention.cbam import CBAM, CBAMChannel, CBAMSpatial
from . import plans
from .gated import GateSpec, conv_1out, gated, wants_grad
from .select import register


def spatial_gate(m: CBAMSpatial) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``m.gate_from_pools`` with its conv on the native kernel where that applies."""
    conv = m.conv
    k = conv.kernel_size[-1]
    native_conv = (type(conv) is nn.Conv2d and conv.bias is None and conv.stride == (1, 1)
                   and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
                   and tuple(conv.padding) == (k // 2, k // 2))

    def gate(mx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        pair = (mx, mean) if m.pool_order == "max_mean" else (mean, mx)
        p = torch.stack(pair, 1)
        v = conv_1out(p, conv.weight) if native_conv else None
        return torch.sigmoid(m.bn(conv(p) if v is None else v)).squeeze(1)

    return gate


_SPATIAL = {(CBAMSpatial, "gate_from_pools"): "fb733d92c1cd", (CBAMSpatial, "gate"): "68a434c7b449"}


def _spatial_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.gate_plan(x, m, spatial_conv=(m.conv, m.bn, m.pool_order == "max_mean"))


@register(
    CBAMSpatial,
    declares="CBAM spatial gate: X * sigmoid(bn(conv2d([max_c X; mean_c X]))), conv 2 -> 1 k x k, "
             "padding k / 2; one kernel call in eval for 2-D inputs",
    mirrors={"forward": "57f52ed1b7a9", **_SPATIAL},
)
def cbam_spatial(m: CBAMSpatial, x: torch.Tensor):
    if x.dim() == 4 and not torch.is_grad_enabled():  # the plan declines a BN in training
        return plans.run_eval(m, x, _spatial_plan, m.pool_order)
    params = tuple(m.parameters())
    if x.dim() == 4 and not m.bn.training and not wants_grad(x, params):
        return plans.run_eval(m, x, _spatial_plan, m.pool_order)
    return gated(x, GateSpec(spatial=spatial_gate(m)), params)


def _cbam_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    ch, sp = m.channel, m.spatial
    plans.exact(ch, CBAMChannel, "CBAM.channel")
    plans.exact(sp, CBAMSpatial, "CBAM.spatial")
    return plans.gate_plan(x, m, mlp=(ch.fc1, ch.fc2), mlp_max=True,
                           spatial_conv=(sp.conv, sp.bn, sp.pool_order == "max_mean"), sequential=True)


@register(
    CBAM,
    declares="CBAM: X1 = X * M_c (CBAM channel gate), Y = X1 * M_s(X1) (CBAM spatial gate); "
             "one kernel call in eval for 2-D inputs",
    mirrors={
        "forward": "1314707d47a0",
        (CBAMChannel, "gate"): "947ed0f403a3",
        (CBAMChannel, "gate_from_pools"): "7582e6498669",
        **_SPATIAL,
    },
)
def cbam(m: CBAM, x: torch.Tensor):
    if x.dim() == 4 and not torch.is_grad_enabled():  # the plan checks the gates, declines a BN in training
        return plans.run_eval(m, x, _cbam_plan, m.spatial.pool_order)
    ch, sp = m.channel, m.spatial
    if type(ch) is not CBAMChannel or type(sp) is not CBAMSpatial:
        return "its channel or spatial gate was replaced"
    params = tuple(m.parameters())
    if x.dim() == 4 and not sp.bn.training and not wants_grad(x, params):
        return plans.run_eval(m, x, _cbam_plan, sp.pool_order)
    spec = GateSpec(channel=ch.gate_from_pools, channel_max=True, spatial=spatial_gate(sp), sequential=True)
    return gated(x, spec, params)
