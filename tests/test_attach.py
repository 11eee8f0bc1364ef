"""attach / detach: placements on every supported family, parameter counts,
identity initialisation, errors, torch.compile and ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize
from torch import nn

import convattn
from convattn import create_attention
from convattn.models import (
    IdentityInit,
    attach,
    attached,
    create_model,
    detach,
    insertion_points,
    per_stage,
)

KEYS = ["se", "cbam", "eca", "parallel_gate", "scse"]

# (family, builder, inserted with "block", inserted with "stage"), counted from the architectures:
# ResNet-18 2+2+2+2 basic blocks, ResNet-50 3+4+6+3 bottlenecks; MobileNetV2 17 inverted residuals in
# 7 width groups (16 | 24x2 | 32x3 | 64x4 | 96x3 | 160x3 | 320); MobileNetV3-small 11 blocks in 5 groups
# (16 | 24x2 | 40x3 | 48x2 | 96x3), -large 15 in 6; EfficientNet-B0 16 MBConv in 7 stages; VGG-11 5 conv
# blocks; ConvNeXt-T 3+3+9+3 blocks; the CIFAR ResNet-20 3 stages of 3 blocks.
FAMILIES = {
    "resnet18": (lambda: create_model("resnet18"), 8, 3),
    "resnet50": (lambda: create_model("resnet50"), 16, 3),
    "resnext50_32x4d": (lambda: create_model("resnext50_32x4d"), 16, 3),
    "wide_resnet50_2": (lambda: create_model("wide_resnet50_2"), 16, 3),
    "mobilenet_v2": (lambda: create_model("mobilenet_v2"), 17, 6),
    "mobilenet_v3_small": (lambda: create_model("mobilenet_v3_small"), 11, 4),
    "mobilenet_v3_large": (lambda: create_model("mobilenet_v3_large"), 15, 5),
    "efficientnet_b0": (lambda: create_model("efficientnet_b0"), 16, 6),
    "vgg11_bn": (lambda: create_model("vgg11_bn"), 5, 4),
    "convnext_tiny": (lambda: create_model("convnext_tiny"), 18, 3),
    "timm_resnet50": (lambda: _timm("resnet50"), 16, 3),
    "timm_resnet18": (lambda: _timm("resnet18"), 8, 3),
    "user_sequential": (lambda: user_sequential(), 3, 2),
    "cifar_resnet20": (lambda: create_model("resnet20"), 9, 2),
}


def _timm(name):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False)


def user_sequential(conv=nn.Conv2d, bn=nn.BatchNorm2d, pool=nn.MaxPool2d):
    """A user's plain CNN: conv blocks separated by pooling, then a classifier."""
    return nn.Sequential(
        nn.Sequential(conv(3, 16, 3, padding=1), bn(16), nn.ReLU()),
        nn.Sequential(conv(16, 16, 3, padding=1), bn(16), nn.ReLU()),
        pool(2),
        conv(16, 32, 3, padding=1), bn(32), nn.ReLU(),
        pool(2),
        nn.Sequential(conv(32, 48, 3, padding=1), nn.ReLU(), pool(2)),
        nn.Flatten(),
    )


def need(key):
    if key not in convattn.list_attention():
        pytest.skip(f"attention {key!r} is not registered yet")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


_CACHE: dict[str, nn.Module] = {}


def model_of(family):
    # big models are built once per test module; every test detaches what it attached
    if family not in _CACHE:
        _CACHE[family] = FAMILIES[family][0]().eval()
    m = _CACHE[family]
    assert not attached(m), f"a previous test left attention in {family}"
    return m


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _CACHE.clear()


def count_calls(model, paths):
    calls = {p: 0 for p in paths}
    handles = []
    for p in paths:
        def hook(mod, args, out, p=p):
            calls[p] += 1
        handles.append(model.get_submodule(p).register_forward_hook(hook))
    return calls, handles


# --------------------------------------------------------------------------- every family x attention


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_attach_block_every_family(family, key):
    need(key)
    m = model_of(family)
    base = n_params(m)
    points = attach(m, key)
    try:
        assert len(points) == FAMILIES[family][1]
        assert attached(m) == [p.attention_path for p in points]
        # added parameters = those of the standalone modules at the inferred widths
        extra = sum(n_params(create_attention(key, p.channels, dims=2)) for p in points)
        assert n_params(m) - base == extra
        for p in points:  # channels inferred correctly
            mod = m.get_submodule(p.attention_path)
            assert mod.channels == p.channels and mod.registry_name == key
    finally:
        detach(m)
    assert n_params(m) == base


def mixed(keys):
    """A factory cycling through ``keys``: one forward exercises every key in a model."""
    state = {"i": 0}

    def factory(channels, **opts):
        key = keys[state["i"] % len(keys)]
        state["i"] += 1
        return create_attention(key, channels, dims=2, **opts)

    return factory


def forward_once_each(m, x):
    calls, handles = count_calls(m, attached(m))
    try:
        with torch.no_grad():
            out = m(x)
    finally:
        for h in handles:
            h.remove()
    assert set(calls.values()) == {1}, calls  # every inserted module runs exactly once
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_forward_every_family_with_every_key(family):
    keys = [k for k in KEYS if k in convattn.list_attention()]
    m = model_of(family)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    points = attach(m, mixed(keys))
    try:
        names = [m.get_submodule(p.attention_path).registry_name for p in points]
        assert set(names) == set(keys) or len(points) < len(keys)
        out = forward_once_each(m, x)
        assert out.shape == ref.shape and torch.isfinite(out).all()
    finally:
        detach(m)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attach_stage_every_family(family):
    m = model_of(family)
    points = attach(m, "se", where="stage", reduction=4)
    try:
        assert len(points) == FAMILIES[family][2]
        assert [p.stage for p in points] == list(range(len(points)))
        if family in ("resnet50", "mobilenet_v2", "efficientnet_b0", "vgg11_bn", "user_sequential", "convnext_tiny"):
            forward_once_each(m, torch.randn(1, 3, 32, 32))
    finally:
        detach(m)


def test_insertion_points_match_the_architectures():
    r50 = model_of("resnet50")
    b = insertion_points(r50)
    assert [p.path for p in b[:4]] == ["layer1.0.bn3", "layer1.1.bn3", "layer1.2.bn3", "layer2.0.bn3"]
    assert [p.stage for p in b] == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    assert [p.channels for p in b[::5]] == [256, 512, 1024, 2048]
    assert [(p.path, p.channels) for p in insertion_points(r50, "stage")] == [
        ("layer1", 256), ("layer2", 512), ("layer3", 1024),
    ]
    assert insertion_points(model_of("resnet18"))[0].path == "layer1.0.bn2"
    mb = insertion_points(model_of("mobilenet_v2"))
    assert mb[0].path == "features.1.conv.2" and mb[-1].path == "features.17.conv.3"
    assert [p.channels for p in mb] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    eff = insertion_points(model_of("efficientnet_b0"))
    assert eff[0].path == "features.1.0.block.2.1" and eff[-1].channels == 320
    # VGG: after the ReLU that ends each conv block, right before its max-pool
    vgg = model_of("vgg11_bn")
    vp = insertion_points(vgg)
    assert [p.path for p in vp] == [f"features.{i}" for i in (2, 6, 13, 20, 27)]
    assert all(isinstance(vgg.features[int(p.path.split(".")[1]) + 1], nn.MaxPool2d) for p in vp)
    assert [p.channels for p in vp] == [64, 128, 256, 512, 512]
    cx = insertion_points(model_of("convnext_tiny"))
    assert cx[0].path == "features.1.0.block" and [cx[i].channels for i in (0, 3, 6, 15)] == [96, 192, 384, 768]
    us = insertion_points(model_of("user_sequential"))
    assert [(p.path, p.channels) for p in us] == [("1", 16), ("5", 32), ("7.1", 48)]


class Zero(nn.Module):
    """A gate that is 0 everywhere: the branch it sits on contributes nothing."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x * 0


@pytest.mark.parametrize(
    "family,block,expect",
    [
        ("resnet50", "layer1.1", lambda x: torch.relu(x)),          # relu(0 + identity)
        ("resnet18", "layer2.1", lambda x: torch.relu(x)),
        ("mobilenet_v2", "features.3", lambda x: x),                 # inverted residual with skip
        ("mobilenet_v3_large", "features.3", lambda x: x),
        ("efficientnet_b0", "features.2.1", lambda x: x),
        ("convnext_tiny", "features.1.1", lambda x: x),              # before layer scale and the add
        ("timm_resnet50", "layer1.1", lambda x: torch.relu(x)),
        ("cifar_resnet20", "layer1.1", lambda x: torch.relu(x)),
    ],
)
def test_block_placement_is_before_the_residual_add(family, block, expect):
    # with a zero gate inside the residual branch, the block returns its shortcut
    m = model_of(family)
    c = next(p.channels for p in insertion_points(m) if p.path.startswith(block + "."))
    attach(m, Zero)
    try:
        blk = m.get_submodule(block)
        x = torch.randn(2, c, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(blk(x), expect(x), rtol=0, atol=0)
    finally:
        detach(m)


def test_stage_placement_is_after_the_stage():
    m = model_of("resnet50")
    attach(m, Zero, where="stage")
    try:
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            f = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            assert m.layer1(f).abs().max() == 0   # the stage output itself is gated
            assert m.layer4(torch.randn(1, 1024, 2, 2)).abs().max() > 0   # not after the last stage
    finally:
        detach(m)


# --------------------------------------------------------------------------- parameter counts


def test_resnet50_official_param_counts():
    m = model_of("resnet50")
    assert n_params(m) == 25_557_032
    attach(m, "se")
    try:
        assert n_params(m) == 28_088_024
    finally:
        detach(m)


def test_resnet50_eca_official_kernels_add_80_params():
    need("eca")
    m = model_of("resnet50")
    points = attach(m, "eca", kernel_size=per_stage(3, 5, 5, 7))
    try:
        assert n_params(m) - 25_557_032 == 3 * 3 + 4 * 5 + 6 * 5 + 3 * 7 == 80
        ks = [m.get_submodule(p.attention_path).conv.weight.shape[-1] for p in points]
        assert ks == [3] * 3 + [5] * 4 + [5] * 6 + [7] * 3
    finally:
        detach(m)


def test_per_stage_with_stage_placement_and_errors():
    m = model_of("resnet50")
    pts = attach(m, "se", where="stage", reduction=per_stage([4, 8, 16]))
    try:
        hidden = [m.get_submodule(p.attention_path).fc1.out_features for p in pts]
        assert hidden == [256 // 4, 512 // 8, 1024 // 16]
    finally:
        detach(m)
    with pytest.raises(ValueError, match="has 3 values but this model has 4 stages"):
        attach(m, "se", reduction=per_stage(4, 8, 16))
    with pytest.raises(ValueError, match="needs where='block' or 'stage'"):
        attach(m, "se", where=lambda p, mod: p == "layer1.0.bn3", reduction=per_stage(4, 8, 16, 16))
    with pytest.raises(ValueError, match="at least one value"):
        per_stage()
    assert not attached(m)


# --------------------------------------------------------------------------- identity init


@pytest.mark.parametrize("family", ["resnet50", "mobilenet_v2"])
def test_identity_init_leaves_outputs_unchanged(family):
    # every key at once (cycled over the blocks): one forward per family
    keys = [k for k in KEYS if k in convattn.list_attention()]
    m = model_of(family)
    randomize(m, seed=5, scale=0.1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    attach(m, mixed(keys), init="identity")
    try:
        mods = [m.get_submodule(p) for p in attached(m)]
        assert all(isinstance(w, IdentityInit) for w in mods)
        assert {w.module.registry_name for w in mods} == set(keys)
        with torch.no_grad():
            out = m(x)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
        assert ref.abs().max() > 1e-3  # a non-trivial output
    finally:
        detach(m)


@pytest.mark.parametrize("key", KEYS)
def test_identity_init_each_key(key):
    need(key)
    m = create_model("resnet8").eval()
    randomize(m, seed=6)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = m(x)
        attach(m, key, init="identity")
        wrappers = [m.get_submodule(p) for p in attached(m)]
        for w in wrappers:
            randomize(w.module, seed=8)  # whatever the module's weights
        torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-6)
        for w in wrappers:
            w.alpha.fill_(1.0)  # alpha = 1: the plain module, which does change the output
        assert not torch.allclose(m(x), ref, atol=1e-3)


def test_identity_init_learns():
    m = create_model("resnet8", attention="se", init="identity", num_classes=3)
    x = torch.randn(4, 3, 16, 16)
    plain = copy.deepcopy(m)
    detach(plain)
    m.eval(), plain.eval()
    torch.testing.assert_close(m(x), plain(x), rtol=0, atol=0)
    m.train()
    loss = m(x).logsumexp(1).sum()
    loss.backward()
    alphas = [m.get_submodule(p).alpha for p in attached(m)]
    assert all(a.grad is not None and a.grad.abs() > 0 for a in alphas)
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert all(a != 0 for a in alphas)
    m.eval()
    now_plain = copy.deepcopy(m)
    detach(now_plain)
    assert not torch.allclose(m(x), now_plain(x))  # the attention now changes the output


@pytest.mark.parametrize("key", ["gc", "gct"])
def test_identity_init_keeps_modules_that_are_identity_already(key):
    # wrapping a zero-scale residual module would be a dead saddle: y = x + alpha * gamma * f(x)
    need(key)
    m = create_model("resnet8", num_classes=3)
    randomize(m, seed=4)
    x = torch.randn(4, 3, 16, 16)
    m.eval()
    with torch.no_grad():
        ref = m(x)
    attach(m, key, init="identity")
    mods = [m.get_submodule(p) for p in attached(m)]
    assert all(mod.registry_name == key for mod in mods)  # not wrapped
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    m.train()
    m(x).logsumexp(1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for mod in mods for p in mod.parameters())


def test_identity_init_uses_module_own_identity_init():
    class Gate(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.channels = channels
            self.scale = nn.Parameter(torch.ones(channels))

        def identity_init(self):
            nn.init.zeros_(self.scale)

        def forward(self, x):
            return x * (1 + self.scale.view(1, -1, 1, 1))

    m = create_model("resnet8")
    attach(m, Gate, init="identity")
    mods = [m.get_submodule(p) for p in attached(m)]
    assert all(isinstance(g, Gate) and g.scale.abs().sum() == 0 for g in mods)


# --------------------------------------------------------------------------- detach


def test_detach_of_a_copy_or_an_unpickled_model_removes_its_own_hooks():
    """attach keeps each hook's handle with the inserted module; a deep copy or an
    unpickled model carries its own, so detach removes that model's hooks only."""
    import pickle

    m = create_model("resnet8", attention="se")
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert len(detach(other)) == 3
        assert not any(mod._forward_hooks for mod in other.modules())
    assert len(attached(m)) == 3 and sum(len(mod._forward_hooks) for mod in m.modules()) == 3


def test_detach_restores_the_original_model():
    m = model_of("resnet50")
    names = [n for n, _ in m.named_parameters()]
    buffers = [n for n, _ in m.named_buffers()]
    tree = repr(m)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    for key, where in (("se", "block"), ("se", "stage")):
        attach(m, key, where=where)
        with torch.no_grad():
            assert not torch.allclose(m(x), ref)
        removed = detach(m)
        assert removed and not attached(m)
        assert [n for n, _ in m.named_parameters()] == names
        assert [n for n, _ in m.named_buffers()] == buffers
        assert repr(m) == tree
        assert not any(mod._forward_hooks for mod in m.modules())
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref, rtol=0, atol=0)


def test_attached_model_deepcopies_and_round_trips_state_dict(tmp_path):
    m = create_model("resnet8", attention="se", num_classes=4)
    randomize(m, seed=7)
    m.eval()
    x = torch.randn(2, 3, 16, 16)
    c = copy.deepcopy(m)
    torch.testing.assert_close(c(x), m(x))
    with torch.no_grad():
        c.layer1[0].bn2.attention.fc2.bias.add_(1.0)  # the copy's hook uses the copy's module
    assert not torch.allclose(c(x), m(x))
    torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(loaded(x), m(x))
    other = create_model("resnet8", attention="se", num_classes=4).eval()
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x), m(x))
    assert detach(c) and not attached(c) and attached(m)


def test_frozen_batchnorm_backbone():
    # detection backbones use FrozenBatchNorm2d (buffers only, no num_features)
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    m = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    pts = attach(m, "se")
    assert [p.channels for p in pts] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_attach_follows_dtype_and_training_mode():
    m = create_model("resnet8").double().eval()
    attach(m, "se")
    mod = m.get_submodule(attached(m)[0])
    assert mod.fc1.weight.dtype == torch.float64 and not mod.training
    assert m(torch.randn(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


# --------------------------------------------------------------------------- factories, predicates, 1D


def test_factory_and_class_and_predicate():
    m = create_model("resnet18").eval()
    widths = []

    def factory(channels, **opts):
        widths.append(channels)
        return create_attention("se", channels, **opts)

    pts = attach(m, factory, reduction=8)
    assert widths == [p.channels for p in pts] and len(pts) == 8
    assert m.get_submodule(pts[0].attention_path).fc1.out_features == 64 // 8
    detach(m)
    pts = attach(m, convattn.get_spec("se").cls, where=lambda p, mod: isinstance(mod, nn.Conv2d) and p.endswith("conv1"))
    assert [p.path for p in pts][:2] == ["conv1", "layer1.0.conv1"] and pts[0].channels == 64
    assert pts[0].stage is None
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    detach(m)


def test_predicate_infers_channels_from_preceding_layer_in_sequential():
    vgg = model_of("vgg11_bn")
    pts = attach(vgg, "se", where=lambda p, mod: p in ("features.3", "features.21"))  # the max-pools
    try:
        assert [p.channels for p in pts] == [64, 512]
    finally:
        detach(vgg)


def test_user_sequential_1d_gets_1d_modules():
    need("cbam")
    m = user_sequential(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d).eval()
    pts = attach(m, "cbam")
    assert len(pts) == 3
    assert all(m.get_submodule(p.attention_path).dims == 1 for p in pts)
    assert m(torch.randn(2, 3, 32)).shape == (2, 48 * 4)


# --------------------------------------------------------------------------- errors


def test_error_unknown_attention():
    m = create_model("resnet8")
    with pytest.raises(ValueError, match="unknown attention 'sqeeze'"):
        attach(m, "sqeeze")
    with pytest.raises(ValueError, match="attention must be a registry name"):
        attach(m, 3)
    assert not attached(m)


def test_error_unsupported_model_and_placement():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="found no supported blocks in Sequential"):
        attach(mlp, "se")
    m = create_model("resnet8")
    with pytest.raises(ValueError, match="where must be 'block', 'stage' or a predicate.*'everywhere'"):
        attach(m, "se", where="everywhere")
    with pytest.raises(ValueError, match="predicate selected no module"):
        attach(m, "se", where=lambda p, mod: False)
    with pytest.raises(ValueError, match="init must be 'default' or 'identity'"):
        attach(m, "se", init="zeros")
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        attach("resnet8", "se")
    single = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="single stage"):
        attach(single, "se", where="stage")
    assert not attached(m)


def test_error_uninferable_channels_names_the_path():
    m = create_model("resnet18")
    with pytest.raises(ValueError, match="cannot infer the channels at 'maxpool' \\(MaxPool2d\\)"):
        attach(m, "se", where=lambda p, mod: p in ("layer1.0.bn1", "maxpool"))
    assert not attached(m)  # nothing was inserted


def test_error_attach_twice_and_detach_nothing():
    m = create_model("resnet8")
    attach(m, "se")
    with pytest.raises(ValueError, match="already has 3 attention module\\(s\\) attached.*detach"):
        attach(m, "se", where="stage")
    detach(m)
    with pytest.raises(ValueError, match="has no attention attached"):
        detach(m)


def test_error_bad_options_leave_model_untouched():
    m = create_model("resnet8")
    with pytest.raises(ValueError, match="reduction=32 leaves 0 hidden channels"):
        attach(m, "se", reduction=32)   # fine for 64 channels, not for 16
    assert not attached(m)
    with pytest.raises(ValueError, match="returned the same module twice"):
        shared = create_attention("se", 16)
        attach(m, lambda c: shared)
    assert not attached(m)


# --------------------------------------------------------------------------- compile and ONNX


@pytest.fixture(scope="module")
def resnet18_cbam():
    need("cbam")
    torch.manual_seed(0)
    m = create_model("resnet18", attention="cbam", num_classes=10)
    randomize(m, seed=11, scale=0.1)
    return m.eval()


@pytest.mark.slow
def test_torch_compile(resnet18_cbam):
    # fullgraph=True: the forward hooks are traced into one graph (no graph break). The
    # aot_eager backend runs dynamo + AOTAutograd without inductor's C++ codegen, which
    # takes minutes on 2 busy cores and is not what attach() could break.
    torch._dynamo.reset()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = resnet18_cbam(x)
        out = torch.compile(resnet18_cbam, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_onnx_export(resnet18_cbam, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "r18_cbam.onnx"
    torch.onnx.export(resnet18_cbam, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = resnet18_cbam(x)
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-4, atol=1e-4)


def test_capture_maps_on_attached_model():
    need("cbam")
    m = create_model("resnet18", attention="cbam", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with convattn.capture_maps(m) as maps:
        m(x)
    spatial = maps.of_kind("spatial")
    # one spatial map per block, at the block's resolution (64 / 4 = 16, then 8, 4, 2)
    assert len(spatial) == 8
    assert all(p.startswith(tuple(attached(m))) for p in spatial)
    assert [tuple(t.shape) for t in spatial.values()][::2] == [(2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert all(((t >= 0) & (t <= 1)).all() for t in spatial.values())


def test_torch_export_of_attached_model():
    m = create_model("resnet8", attention="se", num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    randomize(m, seed=9)
    out = torch.export.export(m, (x,)).module()(x)
    # the exported graph runs the plain ops, eager the native kernels: float32 rounding
    # in a different order, grown over 8 layers of random weights (outputs up to ~400)
    torch.testing.assert_close(out, m(x), rtol=1e-4, atol=1e-4)
    plain = copy.deepcopy(m)
    detach(plain)
    assert not torch.allclose(out, plain(x))  # the hooked modules are in the exported graph


# ------------------------------------------------ inference fusion: Y written over the norm's output


def _spy_runs(monkeypatch) -> list[bool]:
    """Records, for each whole-module kernel call, whether Y was written into X."""
    from convattn.fast import native, plans

    seen: list[bool] = []
    real_run, real_simam = plans.run, native.simam_forward

    def run(plan, x, owner=None):
        y = real_run(plan, x, owner)
        seen.append(y is x)
        return y

    def simam(x, *args, **kwargs):
        y, a = real_simam(x, *args, **kwargs)
        seen.append(y is x)
        return y, a

    monkeypatch.setattr(plans, "run", run)
    monkeypatch.setattr(native, "simam_forward", simam)
    return seen


@pytest.mark.parametrize("key", ["se", "eca", "cbam", "scse", "sse", "cbam_spatial", "coord", "triplet", "simam"])
def test_fuse_for_inference_writes_over_the_norm_output_with_the_same_result(key, monkeypatch):
    """An attached model computes every gate into a new tensor; after fuse_for_inference
    each gate writes Y over its norm's fresh output, with exactly the same result, and
    detach restores the original model."""
    from convattn.fast import NormGate, fuse_for_inference

    plain = randomize(create_model("resnet18")).eval()
    m = copy.deepcopy(plain)
    attach(m, key)
    for path in attached(m):
        randomize(m.get_submodule(path))
    x = torch.randn(2, 3, 48, 48)
    seen = _spy_runs(monkeypatch)
    with torch.no_grad():
        y = m(x)
    assert len(seen) == 8 and not any(seen)  # attach alone never writes over a norm's output

    paths = attached(m)
    assert fuse_for_inference(m) is m
    assert sum(isinstance(mod, NormGate) for mod in m.modules()) == 8 and attached(m) == paths
    seen.clear()
    with torch.no_grad():
        torch.testing.assert_close(m(x), y, rtol=0, atol=0)
    assert len(seen) == 8 and all(seen)

    detach(m)
    assert repr(m) == repr(plain)
    assert list(m.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), rtol=0, atol=0)


def test_fused_model_trains_and_unfuses(monkeypatch):
    """With autograd a fused pair takes the gate's autograd path (no overwrite) and every
    parameter gets a gradient; unfuse gives back the attached model, hooks included."""
    from convattn.fast import fuse_for_inference, unfuse

    m = randomize(create_model("resnet18", attention="se")).eval()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 3, 32, 32)
    fuse_for_inference(m)
    seen = _spy_runs(monkeypatch)
    y = m(x)
    y.sum().backward()
    assert seen == [] and all(p.grad is not None for p in m.parameters())
    unfuse(m)
    assert repr(m) == repr(ref) and list(m.state_dict()) == list(ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)


def test_fuse_leaves_wrapped_gates_alone(monkeypatch):
    """A gate wrapped in IdentityInit (or any module without a fast path) is not fused:
    the wrapper may read its input again after the gate."""
    from convattn.fast import NormGate, fuse_for_inference

    plain = randomize(create_model("resnet18")).eval()
    wrapped = copy.deepcopy(plain)
    attach(wrapped, lambda c: IdentityInit(create_attention("se", c)))
    fuse_for_inference(wrapped)
    assert not any(isinstance(mod, NormGate) for mod in wrapped.modules())
    seen = _spy_runs(monkeypatch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), plain(x), rtol=0, atol=0)  # IdentityInit: y = x at alpha 0
    assert seen and not any(seen)
