"""Fast paths of the channel gates: SE, ECA and CBAM's channel gate.

Each is Y = X * gc with gc from the pooled vector(s) of X. With autograd the pooling
and the product are native passes and gc is the module's own gate method under
autograd (:func:`convattn.fast.gated.gated`; ECA's conv as a window sum, which
mirrors its ``gate_from_mean``); without autograd the whole module is one
``gate_eval`` kernel call (:func:`convattn.fast.plans.gate_plan`), whose MLP is
ReLU + sigmoid and whose 1-D conv is zero-padded, bias-free and sigmoid-gated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.cbam import CBAMChannel
from ..attention.eca import ECA
from ..attention.se import SE
from . import plans
from .gated import GateSpec, gated, recorded_params
from .select import register


def _se_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.gate_plan(x, m, mlp=(m.fc1, m.fc2))


@register(
    SE,
    declares="SE: X * sigmoid(fc2(relu(fc1(GAP X)))), fc1 and fc2 nn.Linear; 1-3 spatial dims",
    mirrors={"forward": "96b1b1c8728e", "gate": "a98ee8029c53", "gate_from_mean": "32be913567b5"},
)
def se(m: SE, x: torch.Tensor):
    params = recorded_params(m, x)
    if params is None:
        return plans.run_eval(m, x, _se_plan)
    return gated(x, GateSpec(channel=m.gate_from_mean), params)


def _eca_gate(m: ECA):
    """``m.gate_from_mean`` as a k-tap window sum over the zero-padded pooled vector: the
    cross-correlation of ``m.conv`` (stride 1, padding (k - 1) / 2, no bias) without
    oneDNN's per-call setup on a (B, 1, C) input, forward and backward."""
    conv = m.conv
    k = conv.kernel_size[0]
    if (m.conv2 is not None or type(conv) is not nn.Conv1d or conv.bias is not None
            or conv.stride != (1,) or conv.dilation != (1,) or conv.groups != 1
            or conv.padding_mode != "zeros" or tuple(conv.padding) != ((k - 1) // 2,)
            or tuple(conv.weight.shape) != (1, 1, k)):
        return m.gate_from_mean
    p = (k - 1) // 2

    def gate(z: torch.Tensor, _unused: torch.Tensor | None = None) -> torch.Tensor:
        windows = F.pad(z, (p, p)).unfold(-1, k, 1)  # (B, C, k)
        return torch.sigmoid((windows * conv.weight.view(k)).sum(-1))

    return gate


def _eca_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    if m.conv2 is not None:
        raise plans.Decline("ECA with mlp=True: the kernel implements the single conv")
    conv = m.conv
    plans.exact(conv, nn.Conv1d, "ECA.conv")
    k = conv.kernel_size[0]
    if conv.bias is not None:
        raise plans.Decline("ECA.conv has a bias; the kernel implements a bias-free conv")
    plans.conv_config(conv, "ECA.conv", ((k - 1) // 2,))
    return plans.gate_plan(x, m, conv1d=(conv, k))


@register(
    ECA,
    declares="ECA: X * sigmoid(conv1d_k(GAP X)) across channels, zero padding (k - 1) / 2, no bias "
             "(the eval kernel; circular padding and mlp=True are trained on the autograd path)",
    mirrors={"forward": "a5ff6470c8ca", "gate": "a98ee8029c53", "gate_from_mean": "4b5b3dcf3c1b"},
)
def eca(m: ECA, x: torch.Tensor):
    params = recorded_params(m, x)
    if params is None:
        return plans.run_eval(m, x, _eca_plan)
    return gated(x, GateSpec(channel=_eca_gate(m)), params)


def _cbam_channel_plan(x: torch.Tensor, m: nn.Module) -> plans.Plan:
    return plans.gate_plan(x, m, mlp=(m.fc1, m.fc2), mlp_max=True)


@register(
    CBAMChannel,
    declares="CBAM channel gate: X * sigmoid(MLP(GAP X) + MLP(GMP X)), MLP = fc2 relu fc1 (nn.Linear)",
    mirrors={"forward": "96b1b1c8728e", "gate": "947ed0f403a3", "gate_from_pools": "7582e6498669"},
)
def cbam_channel(m: CBAMChannel, x: torch.Tensor):
    params = recorded_params(m, x)
    if params is None:
        return plans.run_eval(m, x, _cbam_channel_plan)
    return gated(x, GateSpec(channel=m.gate_from_pools, channel_max=True), params)
