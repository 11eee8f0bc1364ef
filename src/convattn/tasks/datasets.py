"""User data for ``convattn segment`` (image + mask folders) and ``convattn detect`` (COCO JSON).

Both load everything into memory once (resized to ``image_size`` x
``image_size``, RGB, normalised with mean = std = 0.5) as
:class:`convattn.data.TensorSet` with the same fields as the embedded
multi-digit set (:mod:`convattn.data.multidigit`), so the tasks and the
engine see one format. Malformed input fails before any training with a
one-line ``ValueError`` / ``FileNotFoundError`` naming the file and the problem.

Segmentation layout (``PATH``)::

    PATH/images/<stem>.<png|jpg|...>    PATH/masks/<stem>.png
    or PATH/train/{images,masks}/ and PATH/test/{images,masks}/ (or val/)

A mask is a one-channel image (mode L or P) of the image's size holding class
ids: 0 = background, 1..K-1 = classes, 255 = ignore (not scored, no loss);
every mask needs at least one pixel that is not ignored.
Without train/test folders a fixed 80/20 split is made. ``num_classes``
defaults to the largest id found + 1; an id >= num_classes (other than 255)
is an error.

Detection (``coco:PATH.json`` or ``PATH.json``): COCO "instances" format,
``images`` [{id, file_name, width, height, split?}], ``annotations``
[{image_id, bbox: [x, y, w, h], category_id}], ``categories`` [{id, name}].
``file_name`` is relative to the JSON's folder; ids are integers, boxes four
finite numbers, and there is at least one annotation. Category ids are mapped to
0..K-1 in increasing id order. A box must lie inside its image (0.5 pixel
tolerance) and have w, h > 0. Images with ``"split": "test"`` (or "val") form
the test set, ``"train"`` the training set; without split fields a fixed
80/20 split is made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import IMAGE_EXTENSIONS, DataBundle, TensorSet
from ..data.multidigit import IGNORE_INDEX

MEAN = STD = 0.5


def _read_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    return torch.from_numpy(a).permute(2, 0, 1)


def _resize_image(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def _split(n: int) -> tuple[list[int], list[int]]:
    perm = np.random.default_rng(0).permutation(n)
    n_test = max(1, n // 5)
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


# ----------------------------------------------------------------- segmentation


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"mask {path} has mode {im.mode}; a mask must be one channel of class ids (mode L or P)")
            return np.asarray(im).astype(np.int64)
    except OSError as e:
        raise ValueError(f"cannot read mask {path}: {' '.join(str(e).split())}") from None


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    images, masks = folder / "images", folder / "masks"
    for d in (images, masks):
        if not d.is_dir():
            raise FileNotFoundError(f"segmentation data: no folder {d} (expected images/ and masks/ in {folder})")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"segmentation data: no images in {images}")
    out = []
    for p in files:
        m = masks / f"{p.stem}.png"
        if not m.exists():
            raise FileNotFoundError(f"segmentation data: image {p} has no mask {m}")
        out.append((p, m))
    return out


def load_segmentation_folder(path: str, *, image_size: int = 64, num_classes: int | None = None,
                             train_size: int | None = None, test_size: int | None = None) -> DataBundle:
    root = Path(path[len("folder:"):] if path.startswith("folder:") else path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"segmentation data: {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"segmentation data: {root} is not a folder (expected images/ and masks/)")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        splits = {"train": _pairs(root / "train"), "test": _pairs(test_dir)}
    else:
        pairs = _pairs(root)
        if len(pairs) < 2:
            raise ValueError(f"segmentation data: {root} has {len(pairs)} image; need at least 2 to split train/test")
        tr, te = _split(len(pairs))
        splits = {"train": [pairs[i] for i in tr], "test": [pairs[i] for i in te]}
    loaded: dict[str, list[tuple[torch.Tensor, np.ndarray]]] = {}
    top = 0
    for split, pairs in splits.items():
        limit = train_size if split == "train" else test_size
        items = []
        for img_path, mask_path in pairs[:limit]:
            x = _read_rgb(img_path)
            m = _read_mask(mask_path)
            if m.shape != tuple(x.shape[-2:]):
                raise ValueError(f"mask {mask_path} is {m.shape[1]}x{m.shape[0]} but image {img_path} is "
                                 f"{x.shape[2]}x{x.shape[1]}; they must match")
            ids = np.unique(m)
            bad = ids[(ids < 0) | ((ids > 254) & (ids != IGNORE_INDEX))]
            if bad.size:
                raise ValueError(f"mask {mask_path} has class id {int(bad[0])}; valid: 0..254, 255 = ignore")
            known = ids[ids != IGNORE_INDEX]
            if not known.size:
                raise ValueError(f"mask {mask_path} has no pixel other than {IGNORE_INDEX} (ignore); every mask needs "
                                 "at least one labelled pixel")
            if num_classes is not None and known.size and known.max() >= num_classes:
                raise ValueError(f"mask {mask_path} has unknown class id {int(known.max())}; with --num-classes "
                                 f"{num_classes} valid ids are 0..{num_classes - 1} (255 = ignore)")
            top = max(top, int(known.max()) if known.size else 0)
            items.append((x, m))
        loaded[split] = items
    k = num_classes if num_classes is not None else max(top + 1, 2)
    sets = {}
    for split, items in loaded.items():
        x = torch.stack([_resize_image(a, image_size) for a, _ in items])
        m = torch.stack([
            F.interpolate(torch.from_numpy(b)[None, None].float(), size=(image_size, image_size), mode="nearest")[0, 0]
            for _, b in items
        ]).long()
        sets[split] = TensorSet({"image": ((x - MEAN) / STD).contiguous(), "mask": m})
    return DataBundle(
        name=f"folder:{root}", train=sets["train"], test=sets["test"],
        classes=["background"] + [f"class {i}" for i in range(1, k)], in_chans=3, image_size=image_size,
        mean=[MEAN] * 3, std=[STD] * 3,
        notes=f"image + mask folder {root}, resized to {image_size}x{image_size} (masks nearest), 255 = ignore",
    )


# -------------------------------------------------------------------- detection


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v) -> str:
    text = json.dumps(v, allow_nan=True) if not isinstance(v, float) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _need(obj: dict, key: str, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"COCO file {path}: {where} has no {key!r}")
    return obj[key]


def load_coco_detection(spec: str, *, image_size: int = 64, num_classes: int | None = None,
                        train_size: int | None = None, test_size: int | None = None) -> DataBundle:
    path = Path(spec[len("coco:"):] if spec.startswith("coco:") else spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"detection data: {path} does not exist (expected a COCO-format JSON)")
    if path.is_dir():
        raise IsADirectoryError(f"detection data: {path} is a folder; pass the COCO JSON file (coco:PATH.json)")
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"COCO file {path} is not valid JSON ({e})") from None
    images = _need(coco, "images", "the file", path)
    anns = _need(coco, "annotations", "the file", path)
    cats = _need(coco, "categories", "the file", path)
    for key, value in (("images", images), ("annotations", anns), ("categories", cats)):
        if not isinstance(value, list) or not value:
            raise ValueError(f"COCO file {path}: {key!r} must be a non-empty list, got {_short(value)}")
    cat_ids = []
    for k, c in enumerate(cats):
        cid = _need(c, "id", f"category {k}", path)
        if not _is_int(cid):
            raise ValueError(f"COCO file {path}: category {k} has id {_short(cid)}; ids must be integers")
        cat_ids.append(cid)
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"COCO file {path}: category ids {cat_ids} are not unique")
    cat_ids.sort()
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    index = {cid: i for i, cid in enumerate(cat_ids)}
    if num_classes is not None and num_classes != len(cat_ids):
        raise ValueError(f"--num-classes {num_classes} but {path} has {len(cat_ids)} categories")
    by_id = {}
    for k, im in enumerate(images):
        iid = _need(im, "id", f"image {k}", path)
        name = _need(im, "file_name", f"image {iid}", path)
        if not _is_int(iid) or iid in by_id:
            raise ValueError(f"COCO file {path}: image {k} has id {_short(iid)}; ids must be distinct integers")
        if not isinstance(name, str) or not name:
            raise ValueError(f"COCO file {path}: image {iid} has file_name {_short(name)}; expected a path")
        for dim in ("width", "height"):
            if dim in im and not (_is_int(im[dim]) and im[dim] > 0):
                raise ValueError(f"COCO file {path}: image {iid} has {dim} {_short(im[dim])}; expected an integer > 0")
        by_id[iid] = {"info": im, "boxes": [], "labels": []}
    for k, a in enumerate(anns):
        iid = _need(a, "image_id", f"annotation {k}", path)
        if not _is_int(iid) or iid not in by_id:
            raise ValueError(f"COCO file {path}: annotation {k} refers to unknown image_id {_short(iid)}")
        cid = _need(a, "category_id", f"annotation {k} (image {iid})", path)
        if not _is_int(cid) or cid not in index:
            raise ValueError(f"COCO file {path}: annotation {k} (image {iid}) has unknown class id {_short(cid)}; "
                             f"valid category ids: {cat_ids}")
        bbox = _need(a, "bbox", f"annotation {k} (image {iid})", path)
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"COCO file {path}: annotation {k} (image {iid}) has bbox {_short(bbox)}; "
                             "expected [x, y, w, h] of 4 finite numbers")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(f"COCO file {path}: annotation {k} (image {iid}) has bbox {bbox} with width or "
                             "height <= 0")
        by_id[iid]["boxes"].append([float(v) for v in bbox])
        by_id[iid]["labels"].append(index[cid])
    entries = list(by_id.values())
    explicit = any("split" in e["info"] for e in entries)
    if explicit:
        tr = [i for i, e in enumerate(entries) if e["info"].get("split", "train") == "train"]
        te = [i for i, e in enumerate(entries) if e["info"].get("split") in ("test", "val")]
        if not tr or not te:
            raise ValueError(f"COCO file {path}: 'split' fields give {len(tr)} train and {len(te)} test images; "
                             "need both (values: train, test or val)")
    else:
        if len(entries) < 2:
            raise ValueError(f"COCO file {path} has 1 image; need at least 2 to split train/test")
        tr, te = _split(len(entries))
    tr, te = tr[:train_size], te[:test_size]
    kmax = max([len(entries[i]["boxes"]) for i in tr + te] + [1])
    sets = {}
    for split, idx in (("train", tr), ("test", te)):
        xs, boxes, labels = [], torch.full((len(idx), kmax, 4), -1.0), torch.full((len(idx), kmax), -1, dtype=torch.int64)
        for row, i in enumerate(idx):
            e = entries[i]
            info = e["info"]
            file = path.parent / info["file_name"]
            if not file.exists():
                raise FileNotFoundError(f"COCO file {path}: image {info['id']} file {file} does not exist")
            x = _read_rgb(file)
            h, w = x.shape[-2:]
            if ("width" in info and int(info["width"]) != w) or ("height" in info and int(info["height"]) != h):
                raise ValueError(f"COCO file {path}: image {file} is {w}x{h} but the JSON says "
                                 f"{info.get('width')}x{info.get('height')}")
            for k, (bx, lab) in enumerate(zip(e["boxes"], e["labels"], strict=True)):
                x0, y0, bw, bh = bx
                if x0 < -0.5 or y0 < -0.5 or x0 + bw > w + 0.5 or y0 + bh > h + 0.5:
                    raise ValueError(f"COCO file {path}: image {info['id']} has a box {bx} (x, y, w, h) outside the "
                                     f"image ({w}x{h})")
                sx, sy = image_size / w, image_size / h
                boxes[row, k] = torch.tensor([max(x0, 0) * sx, max(y0, 0) * sy, min(x0 + bw, w) * sx,
                                              min(y0 + bh, h) * sy])
                labels[row, k] = lab
            xs.append(_resize_image(x, image_size))
        image = torch.stack(xs) if xs else torch.zeros(0, 3, image_size, image_size)
        sets[split] = TensorSet({"image": ((image - MEAN) / STD).contiguous(), "boxes": boxes, "box_labels": labels})
    return DataBundle(
        name=f"coco:{path}", train=sets["train"], test=sets["test"], classes=[names[c] for c in cat_ids],
        in_chans=3, image_size=image_size, has_boxes=True, mean=[MEAN] * 3, std=[STD] * 3,
        notes=f"COCO-format file {path}, images resized to {image_size}x{image_size} (boxes scaled)",
    )
