"""convattn segment: multi-digit data, the DANet head and U-Net, the mIoU task, the command, user folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convattn.cli import main
from convattn.data.cluttered import DIGIT, load_source_digits, make_canvases, split_sources
from convattn.data.multidigit import multidigit_config, multidigit_tensors
from convattn.tasks.heads import DANet, DANetHead, UNet
from convattn.tasks.segmentation import SegmentationTask


@pytest.fixture(scope="module")
def canvases():
    cfg = multidigit_config(train_size=40, test_size=10)
    digits, labels = load_source_digits()
    train_src, _ = split_sources(labels, cfg.test_fraction, cfg.seed)
    return cfg, digits, labels, make_canvases(digits, labels, train_src, 40, cfg, (cfg.seed, 2))


def test_masks_and_boxes_agree_with_the_placed_digits(canvases):
    cfg, digits, labels, a = canvases
    counts = set()
    for i in range(len(a["images"])):
        used = a["sources"][i] >= 0
        k = int(used.sum())
        counts.add(k)
        assert 1 <= k <= 3 and used[:k].all() and not used[k:].any()
        expected = np.zeros((cfg.canvas, cfg.canvas), np.int64)
        for s in range(k):
            src, (ox, oy) = a["sources"][i, s], a["offsets"][i, s]
            d = digits[src]
            assert a["box_labels"][i, s] == labels[src]
            ys, xs = np.nonzero(d)
            assert tuple(a["boxes"][i, s]) == (ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1)
            patch = expected[oy:oy + DIGIT, ox:ox + DIGIT]
            assert not patch[d > 0].any(), "two digits' ink overlap"
            patch[d > 0] = 1 + labels[src]
            # on a digit's ink the canvas shows that digit
            np.testing.assert_array_equal(a["images"][i, oy:oy + DIGIT, ox:ox + DIGIT][d > 0], d[d > 0])
        np.testing.assert_array_equal(a["masks"][i], expected)
        assert (a["box_labels"][i, k:] == -1).all() and (a["boxes"][i, k:] == -1).all()
    assert counts == {1, 2, 3}


def test_tensors_scale_boxes_and_keep_empty_slots(canvases):
    cfg, _, _, a = canvases
    t = multidigit_tensors(a, cfg.canvas, 48)
    assert t["image"].shape == (40, 1, 48, 48) and t["mask"].shape == (40, 48, 48)
    used = torch.from_numpy(a["box_labels"] >= 0)
    np.testing.assert_allclose(t["boxes"][used].numpy(), a["boxes"][used.numpy()] * (48 / 72), rtol=1e-6)
    assert (t["boxes"][~used] == -1).all() and (t["box_labels"][~used] == -1).all()
    assert t["mask"].max() <= 10 and set(t["mask"].unique().tolist()) <= set(range(11))


@pytest.mark.parametrize("cls", [DANet, UNet])
@pytest.mark.parametrize("attention", ["none", "danet", "scse"])
@pytest.mark.parametrize("size", [48, 50])
def test_segmenters_return_logits_at_the_input_size(cls, attention, size):
    if cls is UNet and attention == "danet":
        pytest.skip("danet (pam + cam) is the DANet head's variant")
    net = cls(11, in_chans=1, attention=attention).eval()
    assert net(torch.randn(2, 1, size, size)).shape == (2, 11, size, size)


def test_danet_head_shape_and_hand_counted_parameters():
    c, k = 64, 11
    head = DANetHead(c, k)
    assert head(torch.randn(2, c, 9, 9)).shape == (2, k, 9, 9)
    i = c // 4  # 16, the official 2048 -> 512
    conv_in = 9 * c * i + 2 * i  # conv3x3 C -> C/4 (no bias) + BN weight/bias
    conv_mid = 9 * i * i + 2 * i  # conv3x3 C/4 -> C/4 (no bias) + BN
    pam = (i * (i // 8) + i // 8) + i * (i // 8) + (i * i + i) + 1  # query (bias), key (no bias), value, gamma
    cam = 1  # beta
    classifier = i * k + k
    assert sum(p.numel() for p in head.parameters()) == 2 * conv_in + 2 * conv_mid + pam + cam + classifier
    plain = DANetHead(c, k, pam=None, cam=None)
    assert sum(p.numel() for p in plain.parameters()) == 2 * conv_in + 2 * conv_mid + classifier
    with pytest.raises(ValueError, match="multiple of 4"):
        DANetHead(30, k)


def test_miou_equals_torchmetrics_jaccard():
    from torchmetrics.classification import MulticlassJaccardIndex

    torch.manual_seed(0)
    task = SegmentationTask(4)
    ref = MulticlassJaccardIndex(4, average=None, ignore_index=255)
    sums = {s: 0.0 for s in task.stats}

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits

    for _ in range(2):
        mask = torch.randint(0, 4, (3, 8, 8))
        mask[0, 0] = 255
        logits = torch.randn(3, 4, 8, 8)
        _, stats = task.step(Fixed(logits), {"image": torch.zeros(3, 1, 8, 8), "mask": mask})
        for key, v in stats.items():
            sums[key] += float(v)
        ref.update(logits.argmax(1), mask)
    out = task.summarise(sums)
    per_class = ref.compute()
    for c in range(4):
        assert out[f"iou_{c}"] == pytest.approx(float(per_class[c]), abs=1e-6)
    assert out["miou"] == pytest.approx(float(per_class.mean()), abs=1e-6)
    assert 0 <= out["miou"] <= 1


@pytest.mark.parametrize("deterministic", [False, True])
def test_confusion_matrix_equals_torchmetrics(deterministic):
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    from convattn.tasks.segmentation import confusion_matrix

    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (4, 9, 7), generator=g)
    target[0, :3] = 255
    pred = torch.randint(0, 5, (4, 9, 7), generator=g)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        ours = confusion_matrix(pred, target, 5, 255)
    finally:
        torch.use_deterministic_algorithms(prev)
    ref = multiclass_confusion_matrix(pred, target, 5, ignore_index=255)
    assert ours.dtype == torch.float64 and torch.equal(ours, ref.double())
    assert ours.sum() == (target != 255).sum()


def test_segment_command_writes_report(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["segment", "--model", "danet", "--train-size", "16", "--test-size", "8", "--epochs", "1",
               "--seeds", "1", "--batch-size", "8", "--image-size", "32", "--variants", "none,danet", "--out",
               str(out), "--quiet", "--cache-dir", str(tmp_path / "cache"), "--jobs", "1"])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metric"] == "miou" and set(summary["variants"]) == {"none", "danet"}
    for v in summary["variants"].values():
        assert 0.0 <= v["miou"][0] <= 1.0
        assert len(v["per_class_iou"]) == 11
    text = (out / "report.md").read_text()
    assert "test miou %" in text and "Per-class IoU" in text and "predictions.png" in text
    assert (out / "predictions.png").stat().st_size > 0
    assert summary["converged"] is False and "not converged" in text.split("\n\n")[1].lower()
    # the trivial model's figure is the all-background prediction on these test masks
    from convattn.data.multidigit import load_multidigit
    from convattn.tasks.segmentation import trivial_scores

    test = load_multidigit("segment", image_size=32, train_size=16, test_size=8, cache=tmp_path / "cache").test
    expected = trivial_scores(test.tensors["mask"], 11)
    assert summary["trivial"]["miou"] == pytest.approx(expected["miou"])
    assert f"{expected['miou'] * 100:.2f} % mIoU" in text
    config = json.loads((out / "config.json").read_text())
    assert config["job"]["class_weights"] == "balanced" and config["job"]["canvases"] == "fresh"


def test_segment_default_is_the_unet_with_scse_and_parallel_jobs(tmp_path):
    out = tmp_path / "run"
    rc = main(["segment", "--train-size", "8", "--test-size", "4", "--epochs", "2", "--seeds", "1",
               "--batch-size", "4", "--image-size", "24", "--out", str(out), "--quiet",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["variants"]) == {"none", "scse"}
    config = json.loads((out / "config.json").read_text())
    assert config["job"]["model"] == "unet" and config["job"]["jobs"] == 2
    # two epochs of fresh canvases: the training loss of epoch 2 is measured on new images
    assert len(summary["variants"]["none"]["history"][0]) == 2
    # scSE's spatial gate is scored against the digit boxes the canvases carry
    loc = summary["variants"]["scse"]["localisation"]
    assert summary["has_boxes"] and summary["variants"]["none"]["localisation"] is None
    assert f"- scse: pointing game {loc['pointing_game']:.3f}" in (out / "report.md").read_text()


def test_bad_class_weights_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["segment", "--class-weights", "inverse", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--class-weights" in err and "balanced" in err
    assert main(["detect", "--jobs", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "jobs" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_diverging_training_in_a_worker_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["segment", "--lr", "1e12", "--train-size", "16", "--test-size", "8", "--epochs", "1",
               "--image-size", "24", "--batch-size", "8", "--seeds", "1", "--jobs", "2", "--out", str(out),
               "--quiet", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "loss is" in err[0] and "lower --lr" in err[0]


def test_trivial_scores_are_the_all_background_prediction():
    from convattn.tasks.segmentation import trivial_scores

    masks = torch.zeros(2, 4, 4, dtype=torch.int64)
    masks[0, :2, :2] = 3  # 4 pixels of class 3
    masks[1, 0, 0] = 255  # ignored
    masks[1, 3, :] = 1  # 4 pixels of class 1
    out = trivial_scores(masks, 5)
    # background: 23 true background pixels predicted right, 8 foreground pixels predicted background
    # IoU_0 = 23 / 31, classes 1 and 3 have IoU 0; classes 2 and 4 occur nowhere (no IoU)
    assert out["miou"] == pytest.approx((23 / 31) / 3)
    assert out["pixel_accuracy"] == pytest.approx(23 / 31)


def test_class_weights_give_the_weighted_cross_entropy():
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    mask = torch.randint(0, 3, (2, 5, 5), generator=g)
    mask[0, 0, 0] = 255

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    batch = {"image": torch.zeros(2, 1, 5, 5), "mask": mask}
    w = torch.tensor([1.0, 4.0, 2.5])
    loss, _ = SegmentationTask(3, class_weights=w).step(Fixed(), batch)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, mask, weight=w, ignore_index=255)), rel=1e-6)
    plain, _ = SegmentationTask(3).step(Fixed(), batch)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, mask, ignore_index=255)), rel=1e-6)
    with pytest.raises(ValueError, match="3 entries"):
        SegmentationTask(3, class_weights=torch.ones(4))


def test_balanced_weights_are_square_rooted_median_frequency():
    from convattn.tasks.segmentation import balanced_weights

    # class shares 0.7, 0.2, 0.1 (class 3 absent, 255 ignored): median 0.2
    masks = torch.tensor([0] * 70 + [1] * 20 + [2] * 10 + [255] * 5).view(1, 105)
    w = balanced_weights(masks, 4)
    raw = torch.tensor([(0.2 / 0.7) ** 0.5, 1.0, 2.0 ** 0.5])
    assert torch.allclose(w[:3], raw / raw.min()) and w[0] == 1.0 and w[3] == 1.0
    assert w[2] > w[1] > w[0]


def test_fresh_canvases_change_every_epoch_and_start_with_the_fixed_ones(tmp_path):
    from convattn.data.multidigit import load_multidigit

    fixed = load_multidigit("segment", image_size=32, train_size=8, test_size=4, cache=tmp_path)
    fresh = load_multidigit("segment", image_size=32, train_size=8, test_size=4, cache=tmp_path, fresh_epochs=3)
    assert len(fresh.train) == 8 and fresh.train.epochs == 3
    e1, e2 = fresh.train.for_epoch(1).tensors, fresh.train.for_epoch(2).tensors
    assert torch.equal(e1["image"], fixed.train.tensors["image"]) and torch.equal(e1["mask"], fixed.train.tensors["mask"])
    assert e1["mask"].dtype == torch.int64 and not torch.equal(e1["image"], e2["image"])
    assert torch.equal(fresh.test.tensors["image"], fixed.test.tensors["image"])
    assert "new training canvases every epoch" in fresh.notes
    with pytest.raises(ValueError, match="fresh_epochs"):
        load_multidigit("segment", train_size=8, test_size=4, cache=tmp_path, fresh_epochs=0)


def _write_folder(root, n=6, size=20, bad=None):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[2:8, 2:8] = 1
        mask[10:15, 10:15] = 2
        mask[0, 0] = 255
        if bad == "class" and i == 3:
            mask[5, 5] = 7
        if bad == "size" and i == 2:
            mask = mask[:-1]
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        if not (bad == "missing" and i == 4):
            Image.fromarray(mask).save(root / "masks" / f"im{i}.png")


def test_user_folder_trains_a_unet(tmp_path):
    _write_folder(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["segment", "--data", str(tmp_path / "data"), "--model", "unet", "--variants", "scse",
               "--seeds", "1", "--epochs", "1", "--batch-size", "2", "--image-size", "16", "--out", str(out),
               "--quiet"])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"]["num_classes"] == 3 and summary["data"]["test_size"] == 1
    assert 0.0 <= summary["variants"]["scse"]["miou"][0] <= 1.0


@pytest.mark.parametrize(
    ("bad", "extra", "message"),
    [
        ("class", ["--num-classes", "3"], "unknown class id 7"),
        ("size", [], "must match"),
        ("missing", [], "has no mask"),
    ],
)
def test_malformed_folders_exit_2(tmp_path, capsys, bad, extra, message):
    _write_folder(tmp_path / "data", bad=bad)
    argv = ["segment", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "run").exists()


def test_missing_folder_exits_2(tmp_path, capsys):
    assert main(["segment", "--data", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
