"""Paired seeds: the same data, order and shared initial weights for every variant under one seed."""

from __future__ import annotations

import pytest
import torch

import convattn
from convattn.data import EpochPool, TensorSet, load_data
from convattn.engine import TrainConfig, fit
from convattn.engine.options import parse_attention_options
from convattn.models import separate_rng


def test_backbone_weights_do_not_depend_on_the_attention():
    torch.manual_seed(3)
    plain = convattn.create_model("resnet8", in_chans=1)
    for key in ("se", "cbam", "eca"):
        torch.manual_seed(3)
        m = convattn.create_model("resnet8", attention=key, in_chans=1)
        theirs = m.state_dict()
        for name, t in plain.state_dict().items():
            assert torch.equal(theirs[name], t), (key, name)
        assert len(theirs) > len(plain.state_dict())


def test_attention_weights_are_reproducible_and_differ_between_seeds():
    def se_weights(seed):
        torch.manual_seed(seed)
        m = convattn.create_model("resnet8", attention="se", in_chans=1)
        return {k: v for k, v in m.state_dict().items() if "attention" in k}

    a, b, c = se_weights(0), se_weights(0), se_weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point)


def test_separate_rng_leaves_the_global_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with separate_rng():
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    assert not torch.equal(inside, expected)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "pairing-cache")


@pytest.fixture(scope="module")
def tiny_data(cache):
    return load_data("cluttered-mnist", image_size=16, train_size=48, test_size=32, cache=cache, fresh_epochs=3)


def test_fresh_canvases_every_epoch(tiny_data, cache):
    pool = tiny_data.train
    assert isinstance(pool, EpochPool) and len(pool) == 48 and pool.epochs == 3
    e1, e2 = pool.for_epoch(1), pool.for_epoch(2)
    assert isinstance(e1, TensorSet) and len(e1) == 48
    assert not torch.equal(e1.tensors["image"], e2.tensors["image"])
    assert torch.equal(pool.for_epoch(4).tensors["image"], e1.tensors["image"])  # cycles past the pool
    assert e1.tensors["mask"].dtype == torch.int64
    # a fixed set of the same size is the first epoch of the pool (canvases are prefix-consistent)
    fixed = load_data("cluttered-mnist", image_size=16, train_size=48, test_size=32, cache=cache)
    assert torch.equal(fixed.train.tensors["image"], e1.tensors["image"])


def test_fresh_canvases_only_for_the_embedded_set(tmp_path):
    with pytest.raises(ValueError, match="need the embedded data set"):
        load_data(str(tmp_path), fresh_epochs=2)


def test_none_against_a_second_none_is_identical(tiny_data):
    cfg = TrainConfig(model="resnet8", epochs=2, batch_size=16, lr=0.05, image_size=16, seed=1,
                      in_chans=1, num_classes=10, eval_batch_size=32)
    a = fit(cfg, tiny_data)
    b = fit(cfg, tiny_data)
    assert a.history[-1]["test_accuracy"] == b.history[-1]["test_accuracy"]
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_variants_under_one_seed_share_order_and_initial_weights(tiny_data):
    """The first step's batch and the backbone's starting weights are the same for none and se."""
    seen = {}

    class Spy:
        metric = "accuracy"
        stats = ("loss_sum", "correct", "count")

        def __init__(self, key):
            from convattn.engine import ClassificationTask

            self.inner, self.key = ClassificationTask(), key

        def step(self, model, batch):
            if model.training and self.key not in seen:
                seen[self.key] = (batch["image"].clone(),
                                  {k: v.clone() for k, v in model.state_dict().items() if "attention" not in k})
            return self.inner.step(model, batch)

        def summarise(self, sums):
            return self.inner.summarise(sums)

    for key in (None, "se"):
        cfg = TrainConfig(model="resnet8", attention=key, epochs=1, batch_size=16, lr=0.05, image_size=16, seed=2,
                          in_chans=1, num_classes=10, eval_batch_size=32)
        fit(cfg, tiny_data, Spy(key))
    (x0, w0), (x1, w1) = seen[None], seen["se"]
    assert torch.equal(x0, x1)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


# ------------------------------------------------------------ attention options

def test_attention_options_from_the_command_line():
    out = parse_attention_options("se:reduction=4;cbam:kernel_size=3,reduction=8", ["none", "se", "cbam"])
    assert out == {"se": {"reduction": 4}, "cbam": {"kernel_size": 3, "reduction": 8}}
    assert parse_attention_options(None, ["none", "se"]) == {}


def test_attention_options_from_json_and_toml(tmp_path):
    (tmp_path / "o.json").write_text('{"se": {"reduction": 2}}')
    (tmp_path / "o.toml").write_text("[eca]\nkernel_size = 5\n")
    assert parse_attention_options(str(tmp_path / "o.json"), ["se"]) == {"se": {"reduction": 2}}
    assert parse_attention_options(str(tmp_path / "o.toml"), ["eca"]) == {"eca": {"kernel_size": 5}}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_attention_options(str(tmp_path / "missing.json"), ["se"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid json"):
        parse_attention_options(str(tmp_path / "bad.json"), ["se"])


@pytest.mark.parametrize("text, match", [
    ("se:reductoin=4", r"se has no option 'reductoin'; did you mean reduction\? valid: .*reduction"),
    ("cbam:kernel_size=3", r"names 'cbam', which is not among the variants; valid: se"),
    ("se", r"is not KEY:OPTION=VALUE"),
    ("se:reduction", r"'reduction' in 'se:reduction' is not OPTION=VALUE"),
    ("se:reduction=0", r"--attention-options for se: "),
])
def test_attention_option_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_attention_options(text, ["none", "se"])


def test_attention_options_reach_the_model_and_the_report(tmp_path):
    from convattn.cli import main

    cache = str(tmp_path / "cache")
    code = main(["compare", "--variants", "none,se", "--seeds", "1", "--epochs", "1", "--train-size", "32",
                 "--test-size", "16", "--image-size", "16", "--batch-size", "16", "--threads", "1",
                 "--attention-options", "se:reduction=2", "--cache-dir", cache, "--out", str(tmp_path / "r"),
                 "--quiet", "--localisation-images", "16"])
    assert code == 0
    import json

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["job"]["attention_options"] == {"se": {"reduction": 2}}
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["variants"]["se"]["attention_options"] == {"reduction": 2}
    # reduction 2 instead of the default 16 (hidden width max(1, 16 // 16) = 1 in the 16-channel block)
    torch.manual_seed(0)
    default = convattn.create_model("resnet8", attention="se", in_chans=1)
    assert m["variants"]["se"]["params"] > sum(p.numel() for p in default.parameters())
    assert "reduction=2" in (tmp_path / "r" / "report.md").read_text()
