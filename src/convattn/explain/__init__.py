"""Explanations: spatial attention at the input resolution, localisation scores, galleries."""

from .gallery import save_gallery
from .localisation import (
    box_area_fraction,
    energy_in_box,
    localisation_scores,
    pointing_game,
    spatial_attention,
)

__all__ = [
    "box_area_fraction",
    "energy_in_box",
    "localisation_scores",
    "pointing_game",
    "save_gallery",
    "spatial_attention",
]
