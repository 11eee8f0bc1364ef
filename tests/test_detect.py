"""convattn detect: FCOS with attached backbone attention, the mAP task, the command, COCO user data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convattn.cli import main
from convattn.models import attached
from convattn.tasks.detection import DetectionTask, build_detector, targets_of

pytest.importorskip("pycocotools", reason="torchmetrics' MeanAveragePrecision needs pycocotools")


def test_targets_drop_empty_slots():
    batch = {"boxes": torch.tensor([[[1.0, 2, 5, 6], [-1, -1, -1, -1]], [[0, 0, 3, 3], [4, 4, 9, 9]]]),
             "box_labels": torch.tensor([[3, -1], [0, 9]])}
    t = targets_of(batch)
    assert t[0]["boxes"].tolist() == [[1.0, 2, 5, 6]] and t[0]["labels"].tolist() == [3]
    assert t[1]["labels"].tolist() == [0, 9] and t[1]["boxes"].shape == (2, 4)


def test_detector_has_attention_in_its_backbone_and_the_right_outputs():
    torch.manual_seed(0)
    plain, se = build_detector("none", 10, 1, 32), build_detector("se", 10, 1, 32)
    assert attached(plain) == []
    paths = attached(se)
    # resnet18 has 8 BasicBlocks; the FPN body keeps layer1-layer3 (6 blocks; layer4 is dropped)
    assert len(paths) == 6 and all(p.startswith("backbone.body.layer") for p in paths)
    images = [torch.randn(1, 32, 32) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[2.0, 3, 14, 20]]), "labels": torch.tensor([4])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    se.train()
    losses = se(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    se.eval()
    with torch.no_grad():
        dets = se(images)
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= 20
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 32).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 10)).all()


class Oracle(torch.nn.Module):
    """Returns the ground truth (score 1) plus one wrong box per image, in eval mode."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets
        self.calls = 0

    def forward(self, images):
        out = []
        for t in self.targets[self.calls:self.calls + len(images)]:
            boxes = torch.cat([t["boxes"], torch.tensor([[0.0, 0, 2, 2]])])
            labels = torch.cat([t["labels"], torch.tensor([1])])
            out.append({"boxes": boxes, "scores": torch.cat([torch.ones(len(t["labels"])), torch.tensor([0.1])]),
                        "labels": labels})
        self.calls += len(images)
        return out


def test_task_map_is_one_for_the_ground_truth_and_drops_for_shifted_boxes():
    batch = {"image": torch.zeros(2, 1, 32, 32),
             "boxes": torch.tensor([[[2.0, 2, 12, 14], [-1, -1, -1, -1]], [[10, 10, 30, 30], [1, 15, 9, 31]]]),
             "box_labels": torch.tensor([[0, -1], [5, 2]])}
    targets = targets_of(batch)
    task = DetectionTask(10)
    model = Oracle(targets).eval()
    _, stats = task.step(model, batch)
    out = task.summarise({k: float(v) for k, v in stats.items()})
    assert out["map50"] == pytest.approx(1.0) and out["map"] == pytest.approx(1.0)
    assert out["ap_0"] == pytest.approx(1.0) and np.isnan(out["ap_3"])  # class 3 never occurs
    # the same boxes shifted by half their width: IoU 1/3, below 0.5
    shifted = [{"boxes": t["boxes"] + torch.stack([(t["boxes"][:, 2] - t["boxes"][:, 0]) / 2,
                                                     torch.zeros(len(t["boxes"])),
                                                     (t["boxes"][:, 2] - t["boxes"][:, 0]) / 2,
                                                     torch.zeros(len(t["boxes"]))], 1),
                "labels": t["labels"]} for t in targets]
    _, stats = task.step(Oracle(shifted).eval(), batch)
    out = task.summarise({k: float(v) for k, v in stats.items()})
    assert out["map50"] == pytest.approx(0.0)
    # training-mode sums carry no mAP
    assert np.isnan(task.summarise({"loss_sum": 2.0, "count": 2.0, "eval_images": 0.0})["map50"])


def test_detect_command_writes_report(tmp_path):
    out = tmp_path / "run"
    rc = main(["detect", "--train-size", "16", "--test-size", "8", "--epochs", "1", "--seeds", "1",
               "--batch-size", "8", "--image-size", "32", "--variants", "none,se,cbam", "--out", str(out),
               "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metric"] == "map50" and set(summary["variants"]) == {"none", "se", "cbam"}
    for v in summary["variants"].values():
        assert 0.0 <= v["map50"][0] <= 1.0 and 0.0 <= v["map"][0] <= 1.0
    assert summary["variants"]["se"]["params"] > summary["variants"]["none"]["params"]
    text = (out / "report.md").read_text()
    assert "test map50 %" in text and "mAP@[.5:.95]" in text and "detections.png" in text
    assert "AdamW (weight decay 0.0001)" in text and "SGD" not in text
    assert (out / "detections.png").stat().st_size > 0

    # localisation: CBAM's spatial maps are scored against every digit's box; SE has none and says so
    from convattn.data.multidigit import load_multidigit
    from convattn.explain.localisation import box_area_fraction, box_targets

    test = load_multidigit("detect", image_size=32, train_size=16, test_size=8,
                           cache=str(tmp_path / "cache")).test.tensors
    chance = box_area_fraction(box_targets(test), 32, 32)
    assert summary["has_boxes"] and summary["chance_localisation"] == pytest.approx(chance)
    loc = summary["variants"]["cbam"]["localisation"]
    assert 0.0 <= loc["pointing_game"] <= 1.0 and 0.0 < loc["energy_in_box"] < 1.0
    assert summary["variants"]["se"]["localisation"] is None
    assert (f"- cbam: pointing game {loc['pointing_game']:.3f}, energy in box {loc['energy_in_box']:.3f}."
            in text)
    assert "- se: no spatial attention map" in text and f"on average: {chance:.3f}" in text
    assert (out / "attention_gallery.png").stat().st_size > 0

    # the trivial detectors' figures are those of the test split
    from convattn.tasks.detection import trivial_scores

    trivial = trivial_scores(test, 10)
    for name, scores in trivial.items():
        assert summary["trivial"][name] == pytest.approx(scores)
    assert trivial["nothing"]["map50"] == 0.0 and 0.0 < trivial["boxes, random labels"]["map50"] < 0.5
    assert f"outputs nothing scores {trivial['nothing']['map50'] * 100:.2f} %" in text
    assert f"with a random label, scores {trivial['boxes, random labels']['map50'] * 100:.2f} %" in text


def _write_coco(root, bad=None, n=5, w=40, h=30):
    from PIL import Image

    root.mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": w, "height": h})
        anns.append({"image_id": i + 1, "bbox": [4.0, 5.0, 10.0, 8.0], "category_id": 7 if i % 2 else 3})
    if bad == "outside":
        anns[2]["bbox"] = [35.0, 5.0, 10.0, 8.0]
    if bad == "class":
        anns[1]["category_id"] = 99
    if bad == "missing":
        (root / "im3.png").unlink()
    coco = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root / "ann.json"


def test_coco_user_data_loads_and_scales_boxes(tmp_path):
    from convattn.tasks.datasets import load_coco_detection

    path = _write_coco(tmp_path / "coco")
    data = load_coco_detection(f"coco:{path}", image_size=20)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    assert len(data.train) == 4 and len(data.test) == 1
    t = data.train.tensors
    assert t["image"].shape == (4, 3, 20, 20)
    np.testing.assert_allclose(t["boxes"][0, 0].numpy(), [4 * 0.5, 5 * 20 / 30, 14 * 0.5, 13 * 20 / 30], rtol=1e-6)
    assert set(t["box_labels"][:, 0].tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("bad", "message"),
    [("outside", "outside the image"), ("class", "unknown class id 99"), ("missing", "does not exist")],
)
def test_malformed_coco_exits_2(tmp_path, capsys, bad, message):
    path = _write_coco(tmp_path / "coco", bad=bad)
    assert main(["detect", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_or_broken_json_exits_2(tmp_path, capsys):
    assert main(["detect", "--data", str(tmp_path / "none.json"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["detect", "--data", f"coco:{tmp_path / 'broken.json'}", "--quiet"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
