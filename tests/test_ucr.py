"""Time series: aeon's bundled UCR/UEA sets, the 1-D FCN and ResNet, and compare/train on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convattn.cli import main
from convattn.data import load_data
from convattn.engine.jobs import Comparison
from convattn.engine.options import TS_DEFAULTS, recipe_for
from convattn.models import create_model, insertion_points

aeon = pytest.importorskip("aeon")

from convattn.data.ucr import PUBLISHED, load_ucr, ucr_names  # noqa: E402

#: (train, test, channels, classes) of the five sets with published baselines
SPLITS = {
    "GunPoint": (50, 150, 1, 2),
    "OSULeaf": (200, 242, 1, 6),
    "ArrowHead": (36, 175, 1, 3),
    "ItalyPowerDemand": (67, 1029, 1, 2),
    "JapaneseVowels": (270, 370, 12, 9),
}


def _aeon(name, split):
    from aeon.datasets import load_classification

    from convattn.data.ucr import _aeon_data_dir

    return load_classification(name, split=split, extract_path=str(_aeon_data_dir()))


def test_every_published_set_is_bundled_with_its_split_sizes():
    assert set(SPLITS) <= set(ucr_names()) and set(PUBLISHED) == set(SPLITS)
    for name, (n_train, n_test, c, k) in SPLITS.items():
        d = load_ucr(name)
        assert d["train"][0].shape[:2] == (n_train, c) and d["test"][0].shape[:2] == (n_test, c), name
        assert len(d["classes"]) == k and d["train"][1].unique().tolist() == list(range(k)), name


@pytest.mark.parametrize("name", ucr_names())
def test_every_bundled_set_loads_with_the_archive_split(name):
    d = load_ucr(name)
    X_train, y_train = _aeon(name, "train")
    X_test, _ = _aeon(name, "test")
    x, y = d["train"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(x) == len(X_train) and len(d["test"][0]) == len(X_test)
    assert x.shape[1:] == (d["channels"], d["length"]) == d["test"][0].shape[1:]
    assert torch.isfinite(x).all()
    assert [d["classes"][i] for i in y.tolist()] == [str(v) for v in y_train]


def test_univariate_series_are_z_normalised_each_on_its_own():
    x = load_ucr("GunPoint")["train"][0].double()
    torch.testing.assert_close(x.mean(-1), torch.zeros(x.shape[:2], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(-1, unbiased=False), torch.ones(x.shape[:2], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    raw = np.asarray(_aeon("GunPoint", "train")[0][3], dtype=np.float64)
    torch.testing.assert_close(x[3], torch.from_numpy((raw - raw.mean(-1, keepdims=True)) / raw.std(-1, keepdims=True)),
                               atol=1e-5, rtol=0)


def test_unequal_lengths_are_resampled_linearly_and_multivariate_values_kept():
    d = load_ucr("JapaneseVowels")
    assert not d["equal_length"] and d["length"] == 29 and d["min_length"] == 7
    raw = np.asarray(_aeon("JapaneseVowels", "train")[0][0], dtype=np.float64)  # (12, l)
    l = raw.shape[-1]
    t_new = np.linspace(0, 1, 29)
    expected = np.stack([np.interp(t_new, np.linspace(0, 1, l), row) for row in raw])
    torch.testing.assert_close(d["train"][0][0].double(), torch.from_numpy(expected), atol=1e-5, rtol=0)
    bundle = load_data("ucr:JapaneseVowels")
    assert "resampled to 29 by linear interpolation" in bundle.notes and bundle.input_shape == (1, 12, 29)
    assert bundle.dims == 1


def test_bad_ucr_specs_say_what_is_valid():
    with pytest.raises(ValueError, match=r"unknown ucr data set 'GunPiont'; did you mean GunPoint\?.*valid"):
        load_data("ucr:GunPiont")
    with pytest.raises(ValueError, match="--image-size does not apply"):
        load_data("ucr:GunPoint", image_size=32)


def test_same_padding_conv_matches_keras_same_padding():
    from convattn.models.tsc import SameConv1d

    for k in (8, 5, 3):
        conv = SameConv1d(3, 4, k).double()
        x = torch.randn(2, 3, 11, dtype=torch.float64)
        ref = F.conv1d(F.pad(x, ((k - 1) // 2, k // 2)), conv.weight, conv.bias)  # Keras pads the extra zero right
        torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)
        assert conv(x).shape == x.shape[:1] + (4, 11)


def test_fcn_and_resnet_have_wang_et_al_widths_and_attach_points():
    fcn = create_model("fcn1d", in_chans=1, num_classes=2)
    # three Conv1d + BN: (1*8+1)*128 + 2*128, (128*5+1)*256 + 2*256, (256*3+1)*128 + 2*128, fc 128*2+2
    assert sum(p.numel() for p in fcn.parameters()) == 1152 + 256 + 164096 + 512 + 98432 + 256 + 258
    assert [(p.path, p.channels) for p in insertion_points(fcn)] == [("block1", 128), ("block2", 256), ("block3", 128)]
    assert [p.path for p in insertion_points(fcn, "stage")] == ["block1", "block2"]  # MLSTM-FCN's placement
    res = create_model("resnet1d", in_chans=3, num_classes=4)
    assert [(p.path, p.channels) for p in insertion_points(res)] == [
        ("layers.0.bn3", 64), ("layers.1.bn3", 128), ("layers.2.bn3", 128)]
    assert isinstance(res.layers[2].downsample, torch.nn.BatchNorm1d)  # equal widths: a BN-only shortcut
    for name in ("fcn1d", "resnet1d"):
        for key in ("se", "eca", "cbam"):
            m = create_model(name, attention=key, in_chans=3, num_classes=4)
            assert m(torch.randn(2, 3, 40)).shape == (2, 4)


def test_se_after_each_fcn_block_changes_the_output_and_identity_init_does_not():
    x = torch.randn(2, 1, 30, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    base = create_model("fcn1d", num_classes=3, in_chans=1).eval()
    torch.manual_seed(0)
    ident = create_model("fcn1d", attention="se", init="identity", num_classes=3, in_chans=1).eval()
    torch.manual_seed(0)
    se = create_model("fcn1d", attention="se", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(ident(x), base(x))
        assert not torch.allclose(se(x), base(x))


def test_time_series_recipe_fills_what_the_user_left_out():
    assert recipe_for("ucr:GunPoint") == TS_DEFAULTS and recipe_for("cluttered-mnist")["optimizer"] == "sgd"
    job = Comparison(variants=["none"], seeds=[0], data="ucr:GunPoint", epochs=7).validate()
    assert (job.model, job.optimizer, job.epochs, job.lr) == ("fcn1d", "adamw", 7, TS_DEFAULTS["lr"])
    img = Comparison(variants=["none"], seeds=[0]).validate()
    assert (img.model, img.optimizer) == ("resnet8", "sgd")


def test_compare_on_a_ucr_set_reports_against_the_published_baseline(tmp_path, capsys):
    out = tmp_path / "ts"
    argv = ["compare", "--data", "ucr:ItalyPowerDemand", "--variants", "none,se", "--seeds", "2", "--epochs", "2",
            "--test-size", "200", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["config"]["model"] == "fcn1d" and summary["config"]["optimizer"] == "adamw"
    assert summary["data"]["dims"] == 1 and summary["data"]["image_size"] == 24
    assert summary["published"]["accuracy_mean"] == PUBLISHED["ItalyPowerDemand"]["fcn1d"][0]
    report = (out / "report.md").read_text()
    assert "## Against the published baseline" in report and "1 channel(s) x 24 steps" in report
    assert "Fawaz" in report and len(summary["variants"]["se"]["history"][0]) == 2


def test_train_on_a_ucr_set_with_resnet1d(tmp_path):
    out = tmp_path / "tr"
    assert main(["train", "--data", "ucr:GunPoint", "--model", "resnet1d", "--epochs", "1", "--quiet",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["config"]["model"] == "resnet1d" and 0 <= summary["variants"]["none"]["accuracy_mean"] <= 1
    assert summary["published"]["accuracy_mean"] == PUBLISHED["GunPoint"]["resnet1d"][0]
