"""Cached eval plans (convattn.fast.plans): a module's kernel operands are resolved
once and reused, and every way of changing a module afterwards is still seen.

Each case changes a module after its first eval call, then compares the kernel
path with the plain PyTorch path of the same module (``fast.disabled()``).
"""

from __future__ import annotations

import copy
import gc
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import convattn
from convattn import fast
from convattn.fast import native, plans

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

KEYS = ["se", "eca", "cbam_channel", "cbam_spatial", "cbam", "sse", "scse", "coord", "triplet"]


def _module(key: str, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    m = convattn.create_attention(key, 16).to(dtype).eval()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def _check(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's output (kernel path) equals its plain path."""
    with torch.no_grad():
        y = m(x)
        with fast.disabled():
            ref = m(x)
    tol = 1e-12 if x.dtype is torch.float64 else 1e-5
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    return y


class _Builds:
    """Counts plan builds."""

    def __init__(self, monkeypatch):
        self.n = 0
        for name in ("gate_plan", "coord_plan", "triplet_plan"):
            real = getattr(plans, name)

            def counted(*a, _real=real, **k):
                self.n += 1
                return _real(*a, **k)

            monkeypatch.setattr(plans, name, counted)


@pytest.mark.parametrize("key", KEYS)
def test_plan_is_built_once_and_follows_in_place_updates(key, monkeypatch):
    builds = _Builds(monkeypatch)
    m = _module(key)
    x = torch.randn(3, 16, 6, 7)
    y0 = _check(m, x)
    n = builds.n
    assert n >= 1
    with torch.no_grad():
        for p in m.parameters():  # an optimizer step: in place, same storage
            p.mul_(1.5).add_(0.01)
        for b in m.buffers():
            if b.is_floating_point():
                b.mul_(1.25)
    y1 = _check(m, x)
    assert builds.n == n, "in-place updates must not rebuild the plan"
    assert not torch.allclose(y0, y1)


@pytest.mark.parametrize("key", KEYS)
def test_replaced_storage_dtype_and_submodules_rebuild(key):
    m = _module(key)
    x = torch.randn(2, 16, 5, 6)
    _check(m, x)
    p = next(m.parameters())
    p.data = torch.randn_like(p)  # new storage behind the same Parameter object
    _check(m, x)
    m.double()
    _check(m, x.double())
    m.float()
    _check(m, x)
    name, child = next(iter(m.named_children()))
    setattr(m, name, copy.deepcopy(child))  # a submodule reassigned
    with torch.no_grad():
        for q in getattr(m, name).parameters():
            q.add_(0.3)
    _check(m, x)


@pytest.mark.parametrize("key", ["se", "cbam", "scse", "coord", "triplet"])
def test_load_state_dict_copy_and_assign(key):
    m, other = _module(key), _module(key)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    x = torch.randn(2, 16, 5, 6)
    y0 = _check(m, x)
    m.load_state_dict(other.state_dict())
    y1 = _check(m, x)
    assert not torch.allclose(y0, y1)
    fresh = _module(key)
    m.load_state_dict({k: v.clone() for k, v in fresh.state_dict().items()}, assign=True)
    torch.testing.assert_close(_check(m, x), y0)


@pytest.mark.parametrize("key", ["cbam_spatial", "cbam", "coord", "triplet"])
def test_batchnorm_mode_eps_and_statistics(key):
    m = _module(key)
    x = torch.randn(4, 16, 5, 6)
    _check(m, x)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    bns[0].eps = 0.25
    _check(m, x)
    bns[0].train()  # only the BN: batch statistics, no kernel plan
    with torch.no_grad():
        y = m(x)
    with fast.disabled(), torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    bns[0].eval()
    bns[0].running_var = torch.full_like(bns[0].running_var, 3.0)  # a buffer reassigned
    _check(m, x)


def test_parametrized_weight_is_not_cached():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = 2.0

        def forward(self, w):
            return w * self.k

    m = _module("se")
    x = torch.randn(2, 16, 4, 4)
    _check(m, x)
    parametrize.register_parametrization(m.fc1, "weight", Scaled())
    _check(m, x)
    m.fc1.parametrizations.weight[0].k = 3.0  # a computed weight: read at every call
    _check(m, x)
    assert plans._plans.get(m) is None


def test_non_contiguous_parameter_is_declined_not_cached():
    m = _module("coord")
    x = torch.randn(2, 16, 5, 6)
    _check(m, x)
    w = m.conv_h.weight
    w.data = w.data.squeeze().t().contiguous().t().view_as(w)  # same values, transposed strides
    assert not w.is_contiguous()
    _check(m, x)
    assert plans._plans.get(m) is None


@pytest.mark.parametrize("merge", ["sum", "max"])
def test_configuration_key(merge):
    m = _module("scse")
    x = torch.randn(2, 16, 5, 6)
    _check(m, x)
    m.merge = merge
    _check(m, x)
    c = _module("cbam_spatial")
    _check(c, x)
    c.pool_order = "mean_max" if c.pool_order == "max_mean" else "max_mean"
    _check(c, x)


def test_plans_do_not_keep_modules_alive_nor_travel_with_them():
    m = _module("triplet")
    x = torch.randn(2, 16, 5, 6)
    _check(m, x)
    assert plans._plans.get(m) is not None
    m2 = copy.deepcopy(m)
    _check(m2, x)
    buf = io.BytesIO()
    torch.save(m, buf)
    pickle.loads(pickle.dumps(m2))
    n = len(plans._plans)
    del m, m2
    gc.collect()
    assert len(plans._plans) <= n - 2


def test_operand_on_another_device_is_declined_not_dereferenced():
    m = _module("se")
    x = torch.randn(2, 16, 4, 4)
    _check(m, x)
    m.fc2.weight = nn.Parameter(m.fc2.weight.detach().to("meta"))
    with torch.no_grad():
        assert fast.path_of(m, x) == "plain: SE.fc2.weight is not a plain CPU tensor"
    assert fast.path_of(m, x) == "plain: a parameter is torch.float32 on meta, the input torch.float32 on cpu"
    calls = []
    real = plans.run
    plans.run = lambda *a: calls.append(a) or real(*a)
    try:
        with torch.no_grad():
            assert m(x).shape == x.shape  # the plain forward's result (torch reads a meta weight as it likes)
    finally:
        plans.run = real
    assert calls == []
