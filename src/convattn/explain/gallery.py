"""Attention-map gallery: the same test images, each variant's spatial attention overlaid.

One row per variant (the first row shows the images with their ground-truth
box), one column per image. The overlay is the map of
:func:`convattn.explain.spatial_attention` (all blocks' spatial maps, upsampled
to the image and averaged), min-max scaled per image for display only. A
variant without a spatial map gets a row that says so.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_gallery(
    path: str | Path,
    images: torch.Tensor,
    maps: dict[str, torch.Tensor | None],
    boxes: torch.Tensor | None = None,
    title: str = "",
) -> Path:
    """Write the gallery PNG. ``images`` (N, C, H, W) normalised; ``maps`` {variant: (N, H, W) or None}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n + 1.2, 1.6 * rows + 0.4), squeeze=False)
    shown = images.float().mean(1)  # (N, H, W) grey
    lo = shown.flatten(1).min(1).values[:, None, None]
    hi = shown.flatten(1).max(1).values[:, None, None]
    shown = ((shown - lo) / (hi - lo).clamp(min=1e-8)).numpy()

    def draw_box(ax, i):
        if boxes is None:
            return
        for box in boxes[i].reshape(-1, 4):  # one box (4,) or several (K, 4); NaN rows are empty slots
            if bool(torch.isnan(box).any()):
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))

    for i in range(n):
        ax = axes[0, i]
        ax.imshow(shown[i], cmap="gray", interpolation="nearest")
        draw_box(ax, i)
    axes[0, 0].set_ylabel("image", rotation=0, ha="right", va="center")
    for r, (name, m) in enumerate(maps.items(), start=1):
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(shown[i], cmap="gray", interpolation="nearest")
            if m is None:
                if i == 0:
                    ax.text(0.5, 0.5, "no spatial map", transform=ax.transAxes, color="yellow",
                            fontsize=8, va="center", ha="center", bbox={"facecolor": "black", "alpha": 0.6})
                continue
            a = m[i].float()
            a = (a - a.min()) / (a.max() - a.min()).clamp(min=1e-8)
            ax.imshow(a.numpy(), cmap="jet", alpha=0.45, interpolation="bilinear")
            draw_box(ax, i)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
