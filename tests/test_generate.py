"""convattn generate: models, spectral norm, Frechet distance, tiny runs, resume, CLI errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from convattn.cli import main
from convattn.gen.metrics import (
    ClassifierConfig,
    DigitClassifier,
    QualityMeter,
    frechet_distance,
    frechet_distance_features,
    load_or_train_classifier,
    train_classifier,
)
from convattn.gen.models import EMA, Discriminator, Generator, spectral_norm_layers
from convattn.gen.train import GenConfig, build_models, load_digits, train_gan
from convattn.registry import get_spec

ATTENTIONS = ["none", "sagan", "se"]
TINY = ["--train-size", "64", "--batch-size", "32", "--epochs", "2", "--eval-samples", "20", "--width", "16",
        "--classifier-epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def classifier(digits):
    torch.manual_seed(0)
    return train_classifier(ClassifierConfig(epochs=1), digits.train_x[::2], digits.train_y[::2])


# ----------------------------------------------------------------- models


@pytest.mark.parametrize("attention, res", [("none", 14), ("sagan", 14), ("se", 14), ("sagan", 7), ("sagan", 28),
                                             ("se", 7)])
def test_shapes(attention, res):
    torch.manual_seed(0)
    G = Generator(z_dim=8, width=16, attention=attention, attn_res=res)
    D = Discriminator(width=16, attention=attention, attn_res=res)
    z, y = torch.randn(3, 8), torch.tensor([0, 4, 9])
    x = G(z, y)
    assert x.shape == (3, 1, 28, 28)
    assert x.abs().max() <= 1.0
    assert D(x, y).shape == (3,)
    if attention == "none":
        assert isinstance(G.attn, nn.Identity) and isinstance(D.attn, nn.Identity)
    else:
        assert isinstance(G.attn, get_spec(attention).cls) and isinstance(D.attn, get_spec(attention).cls)
        # the attention layer really runs at that resolution: record its input size
        seen = []
        h = D.attn.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
        D(x, y)
        h.remove()
        assert seen == [(res, res)]


def test_conditioning_changes_output():
    torch.manual_seed(0)
    for cond in ("cbn", "concat"):
        G = Generator(z_dim=8, width=16, attention=None, conditioning=cond).eval()
        if cond == "cbn":  # gains/biases start at 1/0: perturb so classes differ
            nn.init.normal_(G.norm1.bias.weight)
        z = torch.randn(1, 8).repeat(2, 1)
        x = G(z, torch.tensor([1, 2]))
        assert not torch.allclose(x[0], x[1])
    D = Discriminator(width=16, attention=None).eval()
    x = torch.randn(1, 1, 28, 28).repeat(2, 1, 1, 1)
    out = D(x, torch.tensor([1, 2]))
    h = D.features(x[:1])
    # projection discriminator: D(x, y) = linear(h) + <embed(y), h>
    expect = D.linear(h).squeeze(1) + (D.embed(torch.tensor([1, 2])) * h).sum(1)
    torch.testing.assert_close(out, expect)


def _layers(module, types):
    return {n for n, m in module.named_modules() if isinstance(m, types) and n}


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("where", ["both", "d", "none"])
def test_spectral_norm_where_requested(attention, where):
    G, D = build_models(GenConfig(attention=attention, width=16, spectral_norm=where))
    d_layers = _layers(D, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding))
    g_layers = _layers(G, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    if attention != "none":
        assert any(n.startswith("attn.") for n in d_layers)  # the attention's own convs/linears are covered
    assert set(spectral_norm_layers(D)) == (d_layers if where != "none" else set())
    assert set(spectral_norm_layers(G)) == (g_layers if where == "both" else set())
    # conditional-BN embeddings are never normalised (gains start at 1)
    assert not any("norm" in n for n in spectral_norm_layers(G))


def test_spectral_norm_bounds_the_weight():
    torch.manual_seed(0)
    D = Discriminator(width=16, attention=None).train()
    with torch.no_grad():
        for _ in range(30):  # one power iteration per training forward
            D(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    for layer in (D.linear, D.conv3):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(1.0, abs=0.02)
        raw = layer.parametrizations.weight.original.reshape(w.shape[0], -1)
        assert abs(torch.linalg.matrix_norm(raw, 2).item() - 1.0) > 0.1


def test_ema_update_maths():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    ema = EMA(a, decay=0.9)
    before = ema.model.weight.clone()
    d = ema.decay_at(100)
    assert d == 0.9 and ema.decay_at(0) == pytest.approx(0.1)
    ema.update(b, 100)
    torch.testing.assert_close(ema.model.weight, d * before + (1 - d) * b.weight)


# ---------------------------------------------------------------- metrics


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expect = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-10)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_matches_sqrtm_formula():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    for _ in range(3):
        m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
        s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
        mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
        ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_gaussian_samples():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3))
    assert frechet_distance_features(a, b) < 0.01
    shifted = rng.normal(size=(20000, 3)) * 2.0 + np.array([3.0, 0.0, 0.0])
    # N(0, I) vs N((3,0,0), 4I): 9 + 3 * (1 - 2)^2 = 12
    assert frechet_distance_features(a, shifted) == pytest.approx(12.0, rel=0.03)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_frechet_real_halves_near_zero_noise_large(digits, classifier):
    meter = QualityMeter(classifier, digits.test_x[0::2])
    same = meter.score(digits.test_x[1::2], digits.test_y[1::2])
    noise = meter.score(torch.rand(500, 1, 28, 28) * 2 - 1, digits.test_y[1::2])
    assert same["frechet_distance"] < 0.05 * noise["frechet_distance"]
    assert same["class_accuracy"] > 0.6 and noise["class_accuracy"] < 0.3
    exact = frechet_distance_features(meter.real_features, meter.real_features)
    assert exact == pytest.approx(0.0, abs=1e-6)


def test_classifier_cached_on_disk(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVATTN_CACHE", str(tmp_path))
    cfg = ClassifierConfig(epochs=1, train_size=300)
    args = (digits.train_x, digits.train_y, digits.test_x[:200], digits.test_y[:200])
    m1, info1 = load_or_train_classifier(cfg, *args)
    assert not info1["cached"] and info1["path"].startswith(str(tmp_path))
    m2, info2 = load_or_train_classifier(cfg, *args)
    assert info2["cached"] and info2["test_accuracy"] == info1["test_accuracy"]
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert ClassifierConfig(epochs=2, train_size=300).key() != cfg.key()
    assert not list(tmp_path.rglob("*.tmp"))
    (tmp_path / "gen-classifier" / f"{cfg.key()}.safetensors").write_bytes(b"garbage")  # corrupt: retrained
    _, info3 = load_or_train_classifier(cfg, *args)
    assert not info3["cached"] and info3["test_accuracy"] == info1["test_accuracy"]
    assert isinstance(m1, DigitClassifier)


# ------------------------------------------------------------ runs, resume


def _run(argv, capsys):
    rc = main(["generate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tiny_run_writes_report(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setenv("CONVATTN_CACHE", str(cache))
    out = tmp_path / "run"
    rc, stdout, _ = _run([*TINY, "--variants", "none,sagan", "--seeds", "2", "--out", str(out)], capsys)
    assert rc == 0
    assert stdout.strip().splitlines()[-1] == str(out)
    for f in ("report.md", "metrics.json", "metrics.csv", "curves.png", "samples_none.png", "samples_sagan.png",
              "samples_real.png", "config.json"):
        assert (out / f).stat().st_size > 0, f
    for v in ("none", "sagan"):
        for s in (0, 1):
            ck = json.loads((out / "runs" / f"{v}-seed{s}" / "latest.json").read_text())
            assert ck["epoch"] == 2 and ck["step"] == 4 and ck["models"] == ["G", "D", "G_ema"]
    m = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    assert "not FID" in report
    # two epochs are too few for the plateau rule: the first paragraph and metrics.json say so
    assert m["converged"] is False and m["not_converged"] == ["none", "sagan"]
    assert "not converged" in report.split("\n\n")[1].lower()
    assert "needs at least 4" in m["variants"]["none"]["plateau"]["reason"]
    sag = m["variants"]["sagan"]
    assert len(sag["class_accuracy"]) == 2 and len(sag["history"][0]) == 2
    assert f"{sag['frechet_distance_mean']:.2f} ± {sag['frechet_distance_std']:.2f}" in report
    assert sag["vs_baseline"]["frechet_distance"]["statement"] in report
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("variant,seed,class_accuracy,frechet_distance")
    assert m["classifier"]["key"] == ClassifierConfig(epochs=1).key()

    # resume: a finished folder plus one training removed -> only that one is retrained, same numbers
    shutil.rmtree(out / "runs" / "sagan-seed1")
    rc, _, _ = _run(["--resume", str(out), "--quiet"], capsys)
    assert rc == 0
    m2 = json.loads((out / "metrics.json").read_text())
    for v in ("none", "sagan"):
        assert m2["variants"][v]["class_accuracy"] == m["variants"][v]["class_accuracy"]
        assert m2["variants"][v]["frechet_distance"] == m["variants"][v]["frechet_distance"]
    assert m2["variants"]["sagan"]["resumed_from_epoch"] == [2, 0]

    # a finished run -> refused, nothing rewritten
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc, _, err = _run(["--resume", str(out), "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nothing to do" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # a corrupt checkpoint of an unfinished run -> one line, exit 2
    (out / "metrics.json").unlink()
    (out / "runs" / "none-seed0" / "epoch-0002.safetensors").write_bytes(b"not a safetensors file")
    rc, _, err = _run(["--resume", str(out), "--quiet"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "corrupt" in err


class _KillAfter:
    """A quality meter that interrupts training at its n-th call (after epoch n - 1 was checkpointed)."""

    def __init__(self, meter, n):
        self.meter, self.n, self.calls = meter, n, 0

    def score(self, images, labels):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.meter.score(images, labels)


def test_resume_equals_uninterrupted(tmp_path, digits, classifier):
    sub = load_digits(train_size=64)
    meter = QualityMeter(classifier, digits.test_x[:200])
    cfg = GenConfig(attention="sagan", width=16, batch_size=16, epochs=3, train_size=64, eval_samples=20)
    full = train_gan(cfg, sub, meter, checkpoint_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_gan(cfg, sub, _KillAfter(meter, 2), checkpoint_dir=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["epoch"] == 1
    resumed = train_gan(cfg, sub, meter, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.resumed_from == 1
    assert resumed.final == full.final
    assert [r["d_loss"] for r in resumed.history] == [r["d_loss"] for r in full.history]
    for a, b in ((full.G_ema, resumed.G_ema), (full.D, resumed.D)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ValueError, match="config differs"):
        train_gan(GenConfig(**{**cfg.as_dict(), "lr_g": cfg.lr_g / 2}), sub, meter, checkpoint_dir=tmp_path / "b",
                  resume=True)


def test_short_training_moves_samples_towards_real_digits(digits, classifier):
    """With the default recipe, 120 G steps take G-EMA much closer to the real digits than the untrained G."""
    from convattn.gen.train import eval_noise, generate

    sub = load_digits(train_size=960)
    meter = QualityMeter(classifier, digits.test_x[:500])
    cfg = GenConfig(attention=None, width=16, epochs=4, train_size=960, eval_samples=200)  # 4 x 30 steps of 32
    z, y = eval_noise(cfg)
    torch.manual_seed(cfg.seed)
    untrained = meter.score(generate(build_models(cfg)[0], z, y), y)
    res = train_gan(cfg, sub, meter)
    fd = [r["frechet_distance"] for r in res.history]
    assert len(fd) == 4
    assert fd[-1] < 0.7 * untrained["frechet_distance"], (untrained, fd)  # measured 0.35-0.5 over seeds 0-2


# ------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--variants", "none,nosuch"], "valid: none"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--batch-size", "65"], "larger than the training set"),
        (["--attn-res", "9"], "resolution must be one of 7, 14, 28"),
        (["--seeds", "0"], "--seeds must be"),
        (["--eval-samples", "15"], "multiple of 10"),
        (["--variants", "none,se", "--attn-res", "28"], "'se' does not fit the GAN at resolution 28"),
    ],
)
def test_cli_errors(argv, needle, tmp_path, capsys):
    out = tmp_path / "never"
    rc, _, err = _run([*TINY, "--out", str(out), *argv], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not out.exists()


def test_cli_missing_resume_and_existing_out(tmp_path, capsys):
    rc, _, err = _run(["--resume", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "no such run folder" in err
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")
    rc, _, err = _run([*TINY, "--out", str(tmp_path / "exists")], capsys)
    assert rc == 2 and "already exists" in err
    assert [p.name for p in (tmp_path / "exists").iterdir()] == ["keep.txt"]
