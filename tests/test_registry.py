"""The registry API and the module contract, checked over every registered module."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import SPATIAL, build, cases, example_input, narrow_options, randomize

import convattn
from convattn import create_attention, describe, get_spec, list_attention

ALL = list_attention()


def test_registry_lists_families():
    fams = {get_spec(n).family for n in ALL}
    assert fams <= {"channel", "spatial", "combined", "self"}
    for fam in fams:
        assert set(list_attention(fam)) <= set(ALL)
    assert sorted(sum((list_attention(f) for f in ("channel", "spatial", "combined", "self")), [])) == ALL


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown attention 'sse_'.*did you mean 'sse'"):
        create_attention("sse_", 16)
    with pytest.raises(ValueError, match="registered: "):
        create_attention("definitely-not-a-module", 16)
    with pytest.raises(ValueError, match="unknown family"):
        list_attention("nope")


@pytest.mark.parametrize("name", ALL)
def test_describe_has_paper_year_dims_equation(name):
    d = describe(name)
    assert d["name"] == name
    assert d["paper"] and d["authors"] and d["venue"]
    assert 1990 < d["year"] <= 2026
    assert set(d["dims"]) <= {1, 2, 3} and d["dims"]
    assert "Y" in d["equation"] or "out" in d["equation"] or "=" in d["equation"]
    # the module's file documents the paper and the forward equation
    doc = __import__(get_spec(name).cls.__module__, fromlist=["_"]).__doc__
    assert doc and len(doc) > 100


@pytest.mark.parametrize("name", ALL)
def test_bad_channels_raise(name):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="channels"):
            create_attention(name, bad)


@pytest.mark.parametrize("name", ALL)
def test_integral_channels_and_non_tensor_input(name):
    """Any integral channel count (a numpy integer from a shape) builds the same module;
    a numpy array as input is a TypeError that says what to pass."""
    import numpy as np

    d0 = get_spec(name).dims[0]
    m, ref = build(name, np.int64(32), d0), build(name, 32, d0)
    assert m.channels == 32 and type(m.channels) is int
    assert [p.shape for p in m.parameters()] == [p.shape for p in ref.parameters()]
    with pytest.raises(TypeError, match=r"expected a torch.Tensor of shape \(B, 32, ...\), got ndarray"):
        m(example_input(d0).numpy())


@pytest.mark.parametrize("name,dims", cases())
def test_shape_preserved(name, dims):
    m = build(name, 32, dims).eval()
    x = example_input(dims)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_unsupported_dims_and_wrong_channels_raise(name):
    spec = get_spec(name)
    d0 = spec.dims[0]
    m = build(name, 32, d0).eval()
    with pytest.raises(ValueError, match=r"expected input \(B, 32"):
        m(example_input(d0, channels=16))
    for d in (1, 2, 3):
        if d not in spec.dims or (spec.dims_at_init and d != d0):
            with pytest.raises(ValueError, match="spatial dim"):
                m(example_input(d))
    with pytest.raises(ValueError, match="spatial dim"):
        m(torch.randn(2, 32))
    for d in {1, 2, 3} - set(spec.dims):
        with pytest.raises(ValueError, match="not supported"):
            create_attention(name, 32, dims=d)


@pytest.mark.parametrize("name,dims", cases())
def test_gradients_reach_every_parameter(name, dims):
    m = randomize(build(name, 32, dims)).train()
    x = example_input(dims, batch=4).requires_grad_(True)
    y = m(x)
    # a loss that is not invariant to per-channel scaling or to the mean
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name,dims", cases())
def test_eval_deterministic_and_batch_independent(name, dims):
    m = randomize(build(name, 32, dims)).eval()
    x = example_input(dims, batch=3)
    with torch.no_grad():
        y1, y2 = m(x), m(x)
        torch.testing.assert_close(y1, y2, rtol=0, atol=0)
        singles = torch.cat([m(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(y1, singles, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,dims", cases())
def test_state_dict_round_trip(name, dims):
    torch.manual_seed(0)
    a = randomize(build(name, 32, dims), seed=1).eval()
    torch.manual_seed(1)
    b = build(name, 32, dims).eval()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = example_input(dims)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", ALL)
def test_torchscript_trace(name):
    d = 2 if 2 in get_spec(name).dims else get_spec(name).dims[0]
    m = randomize(build(name, 32, d)).eval()
    x = example_input(d)
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,), check_trace=False)
        x2 = example_input(d, seed=5)
        torch.testing.assert_close(traced(x2), m(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_torch_export(name):
    d = 2 if 2 in get_spec(name).dims else get_spec(name).dims[0]
    m = randomize(build(name, 32, d)).eval()
    x = example_input(d)
    ep = torch.export.export(m, (x,))
    x2 = example_input(d, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x2), m(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,dims", cases())
def test_gradcheck_float64(name, dims):
    m = randomize(build(name, 16, dims, **_small_options(name))).double().eval()
    x = example_input(dims, channels=16, batch=2, dtype=torch.float64)
    x = x[(slice(None), slice(None)) + tuple(slice(0, min(s, 4)) for s in x.shape[2:])].contiguous()
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def _small_options(name: str) -> dict:
    """Options that keep a module valid at 16 channels and 4-wide inputs."""
    params = get_spec(name).defaults
    opts = {}
    if "reduction" in params and params["reduction"] and params["reduction"] > 4:
        opts["reduction"] = 4
    return opts


@pytest.mark.parametrize("name", ALL)
def test_capture_maps_records_by_path_and_costs_nothing_outside(name):
    d = 2 if 2 in get_spec(name).dims else get_spec(name).dims[0]
    block = torch.nn.Sequential(torch.nn.Identity(), build(name, 32, d)).eval()
    x = example_input(d)
    with convattn.capture_maps(block) as maps:
        y = block(x)
    # every map is keyed by a path inside the model and has the batch first
    for path, kinds in maps.items():
        assert path.startswith("1")
        for kind, t in kinds.items():
            assert t.shape[0] == x.shape[0], (path, kind, t.shape)
            assert not t.requires_grad
        if "channel" in kinds:
            assert kinds["channel"].shape == (2, 32)
        if "spatial" in kinds:
            assert kinds["spatial"].shape == (2,) + SPATIAL[d]
    assert all("_map_sink" not in m.__dict__ for m in block.modules())
    with torch.no_grad():
        torch.testing.assert_close(block(x), y)


@pytest.mark.parametrize("name", ALL)
def test_timm_attn_layer_drop_in(name):
    timm = pytest.importorskip("timm")
    cls = get_spec(name).cls
    # resnet18's narrowest stage has 64 channels
    layer = functools.partial(cls, **narrow_options(name, 64)) if narrow_options(name, 64) else cls
    model = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=layer)).eval()
    assert any(isinstance(m, cls) for m in model.modules())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10) and torch.isfinite(out).all()
