"""Generation: a SAGAN-style class-conditional GAN on the embedded digits (``convattn generate``).

- :mod:`.models`: generator (conditional BN or concat), projection discriminator,
  spectral norm, hinge losses, EMA;
- :mod:`.train`: one training with checkpoints and exact resume;
- :mod:`.metrics`: the cached digit classifier, class accuracy and the Frechet
  distance in its feature space (not FID);
- :mod:`.report`, :mod:`.job`: variants x seeds, report in the ``compare`` format.

Imported lazily by the command; nothing here is imported by ``convattn`` itself.
"""

from .metrics import (
    ClassifierConfig,
    DigitClassifier,
    QualityMeter,
    frechet_distance,
    load_or_train_classifier,
)
from .models import EMA, Discriminator, Generator, apply_spectral_norm, spectral_norm_layers
from .train import GenConfig, build_models, load_digits, train_gan

__all__ = [
    "EMA",
    "ClassifierConfig",
    "DigitClassifier",
    "Discriminator",
    "GenConfig",
    "Generator",
    "QualityMeter",
    "apply_spectral_norm",
    "build_models",
    "frechet_distance",
    "load_digits",
    "load_or_train_classifier",
    "spectral_norm_layers",
    "train_gan",
]
