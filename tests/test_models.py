"""create_model (CIFAR ResNets, torchvision families), list_models, load_backbone_weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import randomize
from torch import nn

import convattn
from convattn.models import (
    CifarResNet,
    attached,
    create_model,
    detach,
    list_models,
    load_backbone_weights,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _need(*keys):
    missing = [k for k in keys if k not in convattn.list_attention()]
    if missing:
        pytest.skip(f"attention {missing} not registered yet")


# --------------------------------------------------------------------------- CIFAR ResNets


@pytest.mark.parametrize("name,depth", [("resnet8", 8), ("resnet20", 20), ("resnet32", 32), ("resnet56", 56)])
def test_cifar_resnet_depth_counts_weighted_layers(name, depth):
    m = create_model(name)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    fcs = [x for x in m.modules() if isinstance(x, nn.Linear)]
    # 6n + 2 weighted layers: the stem conv, 2 convs per block, the classifier (option-A shortcuts have none)
    assert len(convs) + len(fcs) == depth
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels] == [
        16, 32, 64,
    ]


def test_cifar_resnet20_param_count_is_the_papers():
    # He et al. 2016, Table 6: ResNet-20 has 0.27 M parameters (option A shortcuts).
    # stem 3*16*9 + bn 32; stage widths 16/32/64, 3 blocks each; fc 64*10 + 10
    def block(cin, c):
        return cin * c * 9 + c * c * 9 + 4 * c

    expected = 3 * 16 * 9 + 32 + 3 * block(16, 16) + block(16, 32) + 2 * block(32, 32)
    expected += block(32, 64) + 2 * block(64, 64) + 64 * 10 + 10
    assert n_params(create_model("resnet20")) == expected == 269_722


@pytest.mark.parametrize("in_chans,size", [(1, 28), (3, 32), (3, 17)])
def test_cifar_resnet_forward_shapes(in_chans, size):
    m = create_model("resnet20", num_classes=7, in_chans=in_chans).eval()
    assert m(torch.randn(2, in_chans, size, size)).shape == (2, 7)


def test_cifar_resnet_stage_resolution_halves():
    m = create_model("resnet8").eval()
    x = torch.randn(1, 3, 32, 32)
    f = torch.relu(m.bn1(m.conv1(x)))
    shapes = []
    for layer in (m.layer1, m.layer2, m.layer3):
        f = layer(f)
        shapes.append(tuple(f.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_option_a_shortcut_is_subsample_and_zero_pad():
    m = CifarResNet(8).eval()
    sc = m.layer2[0].downsample
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2], rtol=0, atol=0)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    assert n_params(sc) == 0
    b = CifarResNet(8, shortcut="B")
    assert isinstance(b.layer2[0].downsample, nn.Sequential)


def test_cifar_resnet_with_se_engine_call():
    # the call the training engine makes
    m = create_model("resnet20", attention="se", num_classes=10, in_chans=1)
    assert len(attached(m)) == 9
    paths = attached(m)
    assert paths[0] == "layer1.0.bn2.attention"
    # SE on 16/32/64 channels with r=16: hidden widths 1/2/4, biases on both layers
    extra = sum(3 * (c * h + h + h * c + c) for c, h in ((16, 1), (32, 2), (64, 4)))
    assert n_params(m) - n_params(create_model("resnet20", num_classes=10, in_chans=1)) == extra
    x = torch.randn(4, 1, 28, 28)
    out = m(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with convattn.capture_maps(m) as maps:
        m.eval()(x)
    assert set(maps) == set(paths)
    assert maps["layer3.2.bn2.attention"]["channel"].shape == (4, 64)


def test_cifar_resnet_attention_is_applied_before_the_add():
    # a zero gate before the add leaves only the shortcut: block(x) = relu(identity)
    m = create_model("resnet8", attention="se").eval()
    blk = m.layer1[0]
    with torch.no_grad():
        blk.bn2.attention.fc2.bias.fill_(-1e4)
        blk.bn2.attention.fc2.weight.zero_()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(blk(x), torch.relu(x))


@pytest.mark.parametrize("depth", [7, 9, 0, True])
def test_cifar_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        CifarResNet(depth)


def test_cifar_resnet_bad_options():
    with pytest.raises(ValueError, match="shortcut must be 'A' or 'B'"):
        CifarResNet(20, shortcut="C")
    with pytest.raises(ValueError, match="in_chans must be a positive int"):
        create_model("resnet20", in_chans=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_model("resnet20", num_classes=-1)
    with pytest.raises(ValueError, match="without attention"):
        create_model("resnet20", reduction=4)


# --------------------------------------------------------------------------- names


def test_list_models():
    names = list_models()
    for n in ("resnet8", "resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "resnext50_32x4d",
              "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
              "efficientnet_b0", "vgg11_bn", "vgg16_bn", "convnext_tiny"):
        assert n in names
    assert len(names) == len(set(names))


def test_unknown_model_lists_valid_names_and_closest():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*did you mean.*'resnet56'.*valid: resnet8"):
        create_model("resnet5")
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        create_model("alexnet")


def test_unknown_attention_in_create_model():
    with pytest.raises(ValueError, match="unknown attention 'cbamm'; did you mean 'cbam'"):
        create_model("resnet8", attention="cbamm")


def test_import_convattn_models_is_light():
    code = "import sys, convattn, convattn.models; print('torchvision' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- torchvision families


@pytest.mark.parametrize(
    "name,params",
    [("resnet18", 11_689_512), ("resnet50", 25_557_032), ("mobilenet_v2", 3_504_872), ("vgg11_bn", 132_868_840)],
)
def test_torchvision_models_match_official_param_counts(name, params):
    assert n_params(create_model(name)) == params


def test_torchvision_in_chans_replaces_stem_and_num_classes():
    m = create_model("resnet18", in_chans=1, num_classes=5).eval()
    assert m.conv1.in_channels == 1 and m.conv1.out_channels == 64 and m.conv1.stride == (2, 2)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    e = create_model("efficientnet_b0", in_chans=4, num_classes=3).eval()
    assert e.features[0][0].in_channels == 4
    assert e(torch.randn(1, 4, 64, 64)).shape == (1, 3)


def test_create_model_resnet50_with_se_param_count():
    m = create_model("resnet50", attention="se")
    assert n_params(m) == 28_088_024
    assert len(attached(m)) == 16


def test_create_model_with_cbam_stage():
    _need("cbam")
    m = create_model("resnet18", attention="cbam", where="stage", num_classes=4).eval()
    assert attached(m) == ["layer1.attention", "layer2.attention", "layer3.attention"]
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 4)


# --------------------------------------------------------------------------- load_backbone_weights


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    import torchvision

    m = randomize(torchvision.models.resnet18(weights=None), seed=1).eval()
    return m


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_load_torchvision_weights_into_attention_model(tmp_path, resnet18_state, fmt):
    path = tmp_path / f"r18.{fmt}"
    sd = resnet18_state.state_dict()
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    m = create_model("resnet18", attention="se", init="identity").eval()
    before = {k: v.clone() for k, v in m.state_dict().items() if ".attention." in k}
    report = load_backbone_weights(m, path)
    assert report.ok, str(report)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert len(report.loaded) == len(sd)
    assert sorted(report.attention) == sorted(before)
    for k, v in m.state_dict().items():
        if k in before:
            assert torch.equal(v, before[k])  # attention layers keep their init
        else:
            assert torch.equal(v, sd[k])
    # identity-initialised attention: the loaded model computes the original network
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), resnet18_state(x), rtol=0, atol=0)


def test_load_timm_weights_and_report_mismatch(tmp_path):
    timm = pytest.importorskip("timm")
    src = randomize(timm.create_model("resnet18", pretrained=False), seed=2).eval()
    path = tmp_path / "timm_r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    m = create_model("resnet18", attention="se", num_classes=10, init="identity").eval()
    report = load_backbone_weights(m, path)
    assert [k for k, _, _ in report.mismatched] == ["fc.weight", "fc.bias"]
    assert report.mismatched[0][1:] == ((1000, 512), (10, 512))
    assert report.missing == [] and report.unexpected == [] and not report.ok
    assert "shape mismatch (skipped): fc.weight" in str(report)
    with pytest.raises(ValueError, match="strict=True"):
        load_backbone_weights(m, path, strict=True)
    # features (everything before the classifier) equal timm's
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        m.fc = nn.Identity()
        torch.testing.assert_close(m(x), src.forward_head(src.forward_features(x), pre_logits=True))


def test_load_weights_errors(tmp_path):
    m = create_model("resnet8")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_backbone_weights(m, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not read .*bad.pth"):
        load_backbone_weights(m, bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="could not read"):
        load_backbone_weights(m, bad_st)
    notsd = tmp_path / "list.pth"
    torch.save([1, 2, 3], notsd)
    with pytest.raises(ValueError, match="does not contain a state dict"):
        load_backbone_weights(m, notsd)


def test_load_weights_round_trip_after_detach(tmp_path):
    m = create_model("resnet8", attention="se")
    randomize(m, seed=3)
    path = tmp_path / "m.pth"
    torch.save(m.state_dict(), path)
    report = load_backbone_weights(create_model("resnet8"), path)
    assert report.missing == [] and len(report.unexpected) == 3 * 4 and report.attention == []
    detach(m)
    plain = create_model("resnet8")
    rep2 = load_backbone_weights(plain, path)
    assert rep2.unexpected and all(".attention." in k for k in rep2.unexpected)
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), plain.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize(
    "name,blocks",
    # blocks per architecture: ResNet-34 3+4+6+3, ResNet-101 3+4+23+3, VGG-16 5 conv blocks,
    # CIFAR ResNet-(6n+2) 3n
    [("resnet34", 16), ("resnet101", 33), ("vgg16_bn", 5), ("resnet8", 3), ("resnet32", 15), ("resnet56", 27)],
)
def test_create_model_every_remaining_name_with_attention(name, blocks):
    m = create_model(name, attention="se", init="identity")
    paths = attached(m)
    assert len(paths) == blocks
    widths = [m.get_submodule(p).module.channels for p in paths]
    with_attention = n_params(m)
    detach(m)
    # identity wrappers: the SE parameters plus one alpha per block
    se = sum(n_params(convattn.create_attention("se", c)) for c in widths)
    assert with_attention - n_params(m) == se + blocks
