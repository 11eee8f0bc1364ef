"""Time-series classification sets that aeon ships with its package (UCR/UEA archive files).

``ucr:NAME`` in :func:`convattn.data.load_data` loads one of them from aeon's own
``.ts`` files (nothing is downloaded), with the archive's published train/test split.

Preprocessing, as in Fawaz et al. 2019 ("Deep learning for time series
classification: a review") and Wang et al. 2017:

- every univariate series is z-normalised on its own: ``(x - mean_t x) / std_t x``
  (a constant series becomes zeros), as the UCR archive's series are; multivariate
  series keep the archive's values (Fawaz et al. do not normalise the UEA sets, and
  per-series z-normalisation of JapaneseVowels' cepstrum coefficients costs about
  20 points: 79.7 % against 99.7 % for one FCN seed);
- series of unequal length (JapaneseVowels, PickupGestureWiimoteZ) are resampled
  by linear interpolation to the longest length of the data set, as Fawaz et al.
  did for the multivariate archive; the bundle's notes say so;
- labels are the archive's class values in the order of its header, numbered
  0..K-1.

Samples are ``{"image": (C, L) float32, "label": int64}``: the engine treats a
series as a one-dimensional image with C channels.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch


def _aeon_data_dir() -> Path:
    try:
        import aeon.datasets
    except ImportError:
        raise ImportError("ucr data sets need aeon: pip install 'convattn[timeseries]'") from None
    return Path(aeon.datasets.__file__).parent / "data"


def _header(path: Path) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.lower().startswith("@data"):
                break
            if line.startswith("@"):
                key, _, value = line[1:].partition(" ")
                out[key.lower()] = value.strip()
    return out


@lru_cache(maxsize=1)
def ucr_names() -> tuple[str, ...]:
    """The classification sets aeon bundles: a ``NAME_TRAIN.ts`` and ``NAME_TEST.ts`` with class labels."""
    base = _aeon_data_dir()
    names = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        train, test = folder / f"{folder.name}_TRAIN.ts", folder / f"{folder.name}_TEST.ts"
        if train.is_file() and test.is_file() and _header(train).get("classlabel", "").lower().startswith("true"):
            names.append(folder.name)
    return tuple(names)


def resolve_name(name: str) -> str:
    """``name`` as aeon spells it (case-insensitive); ValueError listing the valid names otherwise."""
    names = ucr_names()
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown ucr data set {name!r}; {hint}valid (bundled with aeon, nothing is downloaded): "
                     f"{', '.join(names)}")


def znormalise(x: np.ndarray) -> np.ndarray:
    """Each series and channel of ``x`` (C, L) to mean 0 and standard deviation 1 over time."""
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.where(std > 1e-8, (x - mean) / np.where(std > 1e-8, std, 1.0), 0.0)


def _resample(x: np.ndarray, length: int) -> np.ndarray:
    """(C, l) -> (C, length) by linear interpolation over the same time span."""
    if x.shape[-1] == length:
        return x
    if x.shape[-1] == 1:
        return np.repeat(x, length, axis=-1)
    old = np.linspace(0.0, 1.0, x.shape[-1])
    new = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(new, old, row) for row in x])


def load_ucr(name: str) -> dict:
    """The train and test splits of ``name``: float32 (N, C, L) series, int64 labels, and facts."""
    from aeon.datasets import load_classification

    name = resolve_name(name)
    base = _aeon_data_dir()
    splits = {}
    classes = None
    for split in ("train", "test"):
        X, y, meta = load_classification(name, split=split, extract_path=str(base), return_metadata=True)
        classes = classes or [str(c) for c in meta["class_values"]]
        series = [np.asarray(s, dtype=np.float64) for s in X]
        splits[split] = (series, np.asarray([str(v) for v in y]))
    lengths = [s.shape[-1] for split in splits.values() for s in split[0]]
    length = max(lengths)
    equal = min(lengths) == length
    out: dict = {"name": name, "classes": classes, "length": length, "equal_length": equal,
                 "min_length": min(lengths), "channels": splits["train"][0][0].shape[0]}
    index = {c: i for i, c in enumerate(classes)}
    for split, (series, labels) in splits.items():
        x = np.stack([_resample(s, length) for s in series])
        x = (np.stack([znormalise(s) for s in x]) if out["channels"] == 1 else x).astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"ucr:{name} has missing values in its {split} split; they are not supported")
        out[split] = (torch.from_numpy(x), torch.tensor([index[v] for v in labels], dtype=torch.int64))
    return out


#: where :data:`PUBLISHED` comes from
PUBLISHED_SOURCE = ("Fawaz, Forestier, Weber, Idoumghar, Muller, \"Deep learning for time series classification: "
                    "a review\", Data Mining and Knowledge Discovery 2019: test accuracy %, mean (std) over 10 runs, "
                    "from the result files of hfawaz/dl-4-tsc (UCR 2015 archive; JapaneseVowels from the "
                    "multivariate archive)")

#: data set -> model -> (mean, std) test accuracy in %, from :data:`PUBLISHED_SOURCE`
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "GunPoint": {"fcn1d": (100.0, 0.0), "resnet1d": (99.1, 0.7)},
    "OSULeaf": {"fcn1d": (97.7, 0.9), "resnet1d": (97.9, 0.8)},
    "ArrowHead": {"fcn1d": (84.3, 1.5), "resnet1d": (84.5, 1.2)},
    "ItalyPowerDemand": {"fcn1d": (96.1, 0.3), "resnet1d": (96.3, 0.4)},
    "JapaneseVowels": {"fcn1d": (99.3, 0.2), "resnet1d": (99.2, 0.3)},
}


def published(data: str, model: str) -> dict | None:
    """The published baseline for spec ``data`` (``ucr:NAME``) and ``model``, or None."""
    if not isinstance(data, str) or not data.lower().startswith("ucr:"):
        return None
    name = data[4:]
    key = next((k for k in PUBLISHED if k.lower() == name.lower()), None)
    if key is None or model not in PUBLISHED[key]:
        return None
    mean, std = PUBLISHED[key][model]
    return {"data": key, "model": model, "accuracy_mean": mean, "accuracy_std": std, "runs": 10,
            "source": PUBLISHED_SOURCE}
