"""Quality of generated digits, measured by the project's own digit classifier.

Two numbers, both computed with a small CNN trained once on the *real*
training digits (the same split the GAN trains on) and cached on disk:

- **class accuracy**: the fraction of generated samples that the classifier
  assigns to the class they were conditioned on (a real test digit scores the
  classifier's own test accuracy, reported beside it as the ceiling);
- **Frechet distance** between real test digits and generated samples in the
  classifier's penultimate feature space (128 ReLU features):
  ``FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})``, the formula of
  FID (Heusel et al., NeurIPS 2017). The trace of the matrix square root is
  computed from eigenvalues, ``Tr (S_r S_g)^{1/2} = sum_i sqrt(lambda_i)`` with
  ``lambda_i`` the eigenvalues of the symmetric PSD matrix
  ``S_r^{1/2} S_g S_r^{1/2}`` (same spectrum as ``S_r S_g``), which needs no
  complex arithmetic and no ``scipy.linalg.sqrtm``; tiny negative eigenvalues
  from rounding are clipped to 0.

This is **not** FID: FID uses ImageNet-trained Inception-v3 pool features of
299 x 299 RGB images, so its values are not comparable with these, nor with
published FIDs. Here the feature extractor is a digit classifier of a few
hundred thousand parameters; the number is only meaningful between runs that
use the same classifier (the same cache key, stored in metrics.json).

Classifier cache: ``<cache>/gen-classifier/<key>.safetensors`` where the cache
folder is ``$CONVATTN_CACHE`` or the user cache folder (see
:func:`convattn.data.cache.cache_dir`) and ``key`` is a hash of
:class:`ClassifierConfig`; written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_VERSION = 1


# ------------------------------------------------------------------ distance


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (squared, as FID)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu {mu1.shape}/{mu2.shape}, cov {cov1.shape}/{cov2.shape}"
        )
    s1 = _sqrt_psd(cov1)
    lam = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_sqrt = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt, 0.0))


def frechet_distance_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b))


# ---------------------------------------------------------------- classifier


class DigitClassifier(nn.Module):
    """conv3x3 1->16, pool, conv3x3 16->32, pool, linear 1568->128 (features), linear 128->10."""

    def __init__(self, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines the cached classifier (and its cache key)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    split_seed: int = 0
    test_fraction: float = 0.2
    train_size: int | None = None

    def key(self) -> str:
        blob = json.dumps({"v": CLASSIFIER_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def train_classifier(cfg: ClassifierConfig, train_x: torch.Tensor, train_y: torch.Tensor) -> DigitClassifier:
    """Adam, ``cfg.epochs`` epochs on ``train_x`` in [-1, 1]; deterministic for a seed."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = len(train_x)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def load_or_train_classifier(
    cfg: ClassifierConfig,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cache: str | Path | None = None,
    log=None,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """The cached classifier for ``cfg`` (trained and saved on first use) and its info.

    Info: ``key``, ``path``, ``config``, ``test_accuracy`` (on the real test
    digits), ``cached`` (whether it was loaded). A corrupt cache file is
    retrained and replaced (it is a cache, not a result).
    """
    from safetensors import safe_open
    from safetensors.torch import save

    from ..data.cache import atomic_write_bytes, cache_dir

    path = cache_dir(cache) / "gen-classifier" / f"{cfg.key()}.safetensors"
    model = DigitClassifier()
    cached = False
    if path.exists():
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
            model.load_state_dict(state, strict=True)
            model.eval()
            cached = True
        except Exception as e:  # corrupt or stale cache entry: rebuild it
            if log:
                log(f"digit classifier cache {path} unreadable ({' '.join(str(e).split())[:80]}); retraining")
    if not cached:
        if log:
            log(f"training the digit classifier for the quality metrics (once; cached in {path})")
        if cfg.train_size is not None and cfg.train_size < len(train_x):
            sub = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_size]
            train_x, train_y = train_x[sub], train_y[sub]
        model = train_classifier(cfg, train_x, train_y)
        blob = save({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                    metadata={"format": "convattn-digit-classifier", "config": json.dumps(dataclasses.asdict(cfg))})
        atomic_write_bytes(path, lambda f: f.write(blob))
    for p in model.parameters():
        p.requires_grad_(False)
    acc = float((_batched(model, test_x).argmax(1) == test_y).float().mean())
    info = {"key": cfg.key(), "path": str(path), "config": dataclasses.asdict(cfg), "test_accuracy": acc,
            "cached": cached, "feature_dim": model.fc.out_features}
    return model, info


class QualityMeter:
    """Scores generated digits against the real test set with a fixed classifier."""

    def __init__(self, classifier: DigitClassifier, real_test_x: torch.Tensor):
        self.classifier = classifier.eval()
        self.real_features = _batched(self.classifier.features, real_test_x).double().numpy()
        self.real_stats = feature_stats(self.real_features)

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """``class_accuracy`` and ``frechet_distance`` of ``images`` (N, 1, 28, 28) in [-1, 1]."""
        feats = _batched(self.classifier.features, images)
        logits = _batched(self.classifier.head, feats)
        acc = float((logits.argmax(1) == labels).float().mean())
        fd = frechet_distance(*self.real_stats, *feature_stats(feats.double().numpy()))
        return {"class_accuracy": acc, "frechet_distance": fd}
