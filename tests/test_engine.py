"""The training engine: reproducibility, resume, checkpoints, localisation and statistics."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from convattn.data import ClutteredConfig, load_data
from convattn.engine import ClassificationTask, TrainConfig, fit, load_checkpoint
from convattn.engine.trainer import lr_at
from convattn.explain import box_area_fraction, energy_in_box, pointing_game, spatial_attention

TINY = ClutteredConfig(train_size=96, test_size=48, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_data("cluttered-mnist", cache=tmp_path_factory.getbasetemp() / "convattn-cache", cluttered=TINY,
                     image_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cfg(**kw):
    base = dict(model="resnet8", attention="cbam", epochs=2, batch_size=16, lr=0.05, image_size=16, in_chans=1)
    base.update(kw)
    return TrainConfig(**base)


def metrics(res):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in res.history]


def test_same_seed_same_metrics_different_seed_differs(data):
    a = fit(cfg(epochs=1), data)
    b = fit(cfg(epochs=1), data)
    c = fit(cfg(epochs=1, seed=1), data)
    assert metrics(a) == metrics(b)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert metrics(a) != metrics(c)


class Killed(Exception):
    pass


class DiesAfter(ClassificationTask):
    """Raises in the middle of training, like a killed process."""

    def __init__(self, steps):
        super().__init__()
        self.left = steps

    def step(self, model, batch):
        if model.training:
            self.left -= 1
            if self.left < 0:
                raise Killed
        return super().step(model, batch)


def test_resume_after_interruption_gives_the_same_final_metrics(data, tmp_path):
    full = fit(cfg(), data, checkpoint_dir=tmp_path / "full")
    steps = len(data.train) // 16
    with pytest.raises(Killed):  # dies in the middle of epoch 2, after epoch 1's checkpoint
        fit(cfg(), data, DiesAfter(steps + 2), checkpoint_dir=tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "latest.json").read_text())["epoch"] == 1
    resumed = fit(cfg(), data, checkpoint_dir=tmp_path / "killed", resume=True)
    assert resumed.resumed_from == 1
    assert metrics(resumed) == metrics(full)
    assert resumed.final == full.final
    for v, w in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        assert torch.equal(v, w)
    # only the latest epoch's files are kept
    names = sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert names == ["epoch-0002.optim.pt", "epoch-0002.safetensors", "latest.json"]
    # a different config cannot resume that folder
    with pytest.raises(ValueError, match="config differs in \\['lr'\\]"):
        fit(cfg(lr=0.1), data, checkpoint_dir=tmp_path / "killed", resume=True)


def test_checkpoint_contents_and_corruption(data, tmp_path):
    fit(cfg(epochs=1), data, checkpoint_dir=tmp_path)
    ck = load_checkpoint(tmp_path)
    meta = ck["meta"]
    assert meta["epoch"] == 1 and meta["config"]["attention"] == "cbam" and len(meta["history"]) == 1
    assert ck["optimizer_state"]["state"] and ck["torch_rng"].dtype == torch.uint8
    # the optimiser file loads with weights_only=True (no pickled code)
    torch.load(tmp_path / meta["optimizer"], weights_only=True)
    (tmp_path / meta["weights"]).write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="corrupt") as e:
        load_checkpoint(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")


def test_impossible_options(data):
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(cfg(epochs=0), data)
    with pytest.raises(ValueError, match="batch-size must be a positive integer"):
        fit(cfg(batch_size=0), data)
    with pytest.raises(ValueError, match="larger than the training set"):
        fit(cfg(batch_size=1000), data)


def test_lr_schedule():
    c = cfg(lr=0.2, warmup=0.1)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[9] == pytest.approx(0.2) and lrs[0] == pytest.approx(0.02)
    assert lrs[10] == pytest.approx(0.2) and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] < 0.001


def test_localisation_scores_on_known_maps():
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    maps = torch.zeros(2, 8, 8)
    maps[0, 3, 4] = 1.0  # inside box 0
    maps[1, 7, 7] = 1.0  # outside box 1
    assert pointing_game(maps, boxes) == 0.5
    assert energy_in_box(maps, boxes) == 0.5
    flat = torch.ones(2, 8, 8)
    area = box_area_fraction(boxes, 8, 8)
    assert area == pytest.approx((16 / 64 + 4 / 64) / 2)
    assert energy_in_box(flat, boxes) == pytest.approx(area)


def test_localisation_with_several_boxes_per_image():
    from convattn.explain.localisation import box_targets

    nan = float("nan")
    # image 0: two boxes (pixels 0-1 x 0-1 and 4-5 x 4-5 by centre); image 1: one box and an empty slot
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 6.0, 6.0]], [[0.0, 0.0, 4.0, 4.0], [nan] * 4]])
    maps = torch.zeros(2, 8, 8)
    maps[0, 5, 4] = 3.0  # the peak, inside image 0's second box
    maps[0, 7, 7] = 1.0  # outside both
    maps[1, 6, 6] = 1.0  # outside image 1's only box; the NaN slot contains nothing
    assert pointing_game(maps, boxes) == 0.5
    assert energy_in_box(maps, boxes) == pytest.approx((3 / 4 + 0) / 2)
    # the union of image 0's boxes is 8 pixels, image 1's box 16
    assert box_area_fraction(boxes, 8, 8) == pytest.approx((8 / 64 + 16 / 64) / 2)
    padded = {"boxes": boxes.nan_to_num(0.0), "box_labels": torch.tensor([[3, 7], [1, -1]])}
    assert torch.equal(box_targets(padded).isnan(), boxes.isnan())
    with pytest.raises(ValueError, match="shape"):
        pointing_game(maps, torch.zeros(2, 3))


def test_spatial_attention_of_models(data):
    x = data.test.tensors["image"][:5]
    res = fit(cfg(epochs=1), data)
    maps = spatial_attention(res.model, x)
    assert maps.shape == (5, 16, 16) and (maps >= 0).all()
    plain = fit(cfg(epochs=1, attention=None), data)
    assert spatial_attention(plain.model, x) is None
    channel_only = fit(cfg(epochs=1, attention="se"), data)
    assert spatial_attention(channel_only.model, x) is None


def test_flops_count_the_native_small_map_conv():
    """torch's flop_counter cannot count aten._slow_conv2d_forward; measure.count_flops can."""
    from torch import nn

    from convattn.engine.measure import count_flops

    conv = nn.Conv2d(2, 1, 7, padding=3)

    class Slow(nn.Module):
        def forward(self, x):
            return torch._C._nn.thnn_conv2d(x, conv.weight, (7, 7), conv.bias, (1, 1), (3, 3))

    assert count_flops(Slow(), (1, 2, 8, 8)) == count_flops(conv, (1, 2, 8, 8)) == 2 * 8 * 8 * 2 * 49


def test_optimizer_choice(data):
    from convattn.engine.trainer import TrainConfig, fit

    base = TrainConfig(epochs=1, batch_size=32, lr=0.01, train_size=64, test_size=32, image_size=16)
    sgd = fit(base, data)
    adam = fit(dataclasses.replace(base, optimizer="adamw"), data)
    assert sgd.final["loss"] != adam.final["loss"]
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid: sgd, adamw"):
        dataclasses.replace(base, optimizer="adam").validate()


def _square_or_die(item, say):
    import os
    import signal

    if item == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    say(f"item {item}")
    return item * item


@pytest.mark.skipif(not __import__("convattn.engine.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="needs fork")
def test_map_forked_returns_in_order_and_fails_when_a_worker_dies():
    from convattn.engine.parallel import map_forked
    from convattn.engine.progress import Progress

    seen, said = [], []

    class Capture(Progress):
        def print(self, text):
            said.append(text)

    out = map_forked(_square_or_die, [0, 1, 2, 4], workers=2, progress=Capture(quiet=True),
                     on_done=lambda i, r: seen.append((i, r)))
    assert out == [0, 1, 4, 16] and sorted(seen) == [(0, 0), (1, 1), (2, 4), (3, 16)]
    assert sorted(said) == ["item 0", "item 1", "item 2", "item 4"]
    with pytest.raises(RuntimeError, match="worker process died"):
        map_forked(_square_or_die, [0, 3, 1], workers=2)
