"""Where does the network look? Spatial attention maps and localisation scores.

:func:`spatial_attention` runs a model under :func:`convattn.capture_maps` and
combines the maps of kind ``"spatial"`` into one map per image at the input
resolution: each recorded map (B, h, w) is upsampled bilinearly to the image
size and the maps of all blocks are averaged (equal weight per block). Raw
gate values are used (no re-normalisation), so a flat map stays flat. A model
whose modules record no spatial map gives ``None``.

Scores against a ground-truth box ``x0, y0, x1, y1`` (pixel edges, a pixel is
inside when its centre is):

- **pointing game**: the fraction of images whose map peak lies inside the box
  (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016);
- **energy in box**: the share of the (non-negative) map's total inside the box.

An image may have several boxes, (N, K, 4): a pixel is then inside when it is
inside any of them, and rows of NaN are empty slots (they contain no pixel).
For both scores, a map that ignores the image scores the boxes' share of the
image on average: :func:`box_area_fraction` gives that chance level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..maps import capture_maps


def _to_image(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if m.dim() == 4 and m.shape[1] == 1:  # tolerate (B, 1, h, w)
        m = m[:, 0]
    if m.dim() != 3:
        raise ValueError(f"expected spatial maps of shape (B, h, w), got {tuple(m.shape)}")
    m = m.float()
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def spatial_attention(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor | None:
    """(N, H, W) average spatial attention of ``model`` on ``images``, or None."""
    was = model.training
    model.eval()
    size = tuple(images.shape[-2:])
    out = []
    try:
        for start in range(0, len(images), batch_size):
            with capture_maps(model) as maps:
                model(images[start:start + batch_size])
            spatial = maps.of_kind("spatial")
            spatial = {k: v for k, v in spatial.items() if v.dim() in (3, 4)}
            if not spatial:
                return None
            ups = [_to_image(v, size) for v in spatial.values()]
            out.append(torch.stack(ups).mean(0))
    finally:
        model.train(was)
    return torch.cat(out)


def _inside(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, H, W) bool: pixel centre inside the box (N, 4), or inside any of the boxes (N, K, 4).

    A comparison with NaN is false, so a NaN row (an empty slot) contains no pixel.
    """
    if boxes.dim() not in (2, 3) or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4) or (N, K, 4), got {tuple(boxes.shape)}")
    b = boxes.float()
    if b.dim() == 2:
        b = b[:, None]
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    inx = (xs >= b[..., 0:1]) & (xs <= b[..., 2:3])  # (N, K, W)
    iny = (ys >= b[..., 1:2]) & (ys <= b[..., 3:4])  # (N, K, H)
    return (iny[..., :, None] & inx[..., None, :]).any(1)


def box_targets(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The boxes localisation is scored against: ``box`` (N, 4), or ``boxes`` (N, K, 4) with empty slots as NaN.

    Padded multi-box data marks an empty slot by ``box_labels == -1``.
    """
    if "box" in tensors:
        return tensors["box"]
    boxes = tensors["boxes"].float().clone()
    boxes[tensors["box_labels"] < 0] = float("nan")
    return boxes


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor) -> float:
    """Fraction of maps (N, H, W) whose maximum lies inside the box (N, 4) or any of the boxes (N, K, 4)."""
    n, h, w = maps.shape
    peak = maps.reshape(n, -1).argmax(1)
    inside = _inside(boxes, h, w).reshape(n, -1)
    return float(inside[torch.arange(n), peak].float().mean())


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> float:
    """Mean share of each map's (clamped at 0) total that lies inside its box (or the union of its boxes)."""
    m = maps.clamp(min=0)
    inside = _inside(boxes, m.shape[1], m.shape[2])
    total = m.sum(dim=(1, 2)).clamp(min=1e-12)
    return float(((m * inside).sum(dim=(1, 2)) / total).mean())


def box_area_fraction(boxes: torch.Tensor, h: int, w: int) -> float:
    """Mean share of the image's pixels inside the box, or the union of the boxes (the chance level)."""
    return float(_inside(boxes, h, w).float().mean())


def localisation_scores(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> dict[str, float] | None:
    """``{"pointing_game", "energy_in_box"}`` for ``model``, or None without spatial maps."""
    maps = spatial_attention(model, images)
    if maps is None:
        return None
    return {"pointing_game": pointing_game(maps, boxes), "energy_in_box": energy_in_box(maps, boxes)}
