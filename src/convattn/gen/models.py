"""Generator and discriminator of the conditional SAGAN-style GAN on 28 x 28 digits.

Small on purpose (a default comparison trains several GANs on 2 CPU cores in
minutes), but with SAGAN's ingredients (Zhang et al., ICML 2019):

- self-attention (any registry key, ``sagan`` by default) at one feature-map
  resolution (7, 14 or 28) in both networks;
- spectral norm (``torch.nn.utils.parametrizations.spectral_norm``) on every
  conv and linear layer of D, and of G too if asked as SAGAN does
  (``spectral_norm="both" | "d" | "none"`` in :class:`~convattn.gen.train.GenConfig`,
  default ``"d"``: see :mod:`convattn.gen.train` for why), attention layers included;
- the class enters G through conditional BatchNorm (``conditioning="cbn"``:
  BN without affine, then a per-class gain and bias from two embeddings, gain
  initialised to 1 and bias to 0, as in SAGAN/BigGAN) or by concatenating a
  learned class embedding to z (``conditioning="concat"``, then plain BN);
- D is a projection discriminator (Miyato & Koyama, ICLR 2018):
  ``D(x, y) = w . h(x) + b + <embed(y), h(x)>`` with ``h`` the globally
  sum-pooled last features; the class embedding is spectrally normalised too
  (as SNEmbedID in their code).

Shapes (``width`` w = 32 by default)::

    G: z (B, z_dim), y (B,)
       linear z -> (B, 2w, 7, 7)                      [attention at 7]
       CBN, ReLU, convT4x4/2 2w -> w        (B, w, 14, 14)     [attention at 14]
       CBN, ReLU, convT4x4/2 w -> w/2       (B, w/2, 28, 28)   [attention at 28]
       BN, ReLU, conv3x3 w/2 -> 1, tanh     (B, 1, 28, 28) in [-1, 1]
    D: x (B, 1, 28, 28), y (B,)
       conv3x3 1 -> w/2, lReLU(0.1)         (B, w/2, 28, 28)   [attention at 28]
       conv4x4/2 w/2 -> w, lReLU            (B, w, 14, 14)     [attention at 14]
       conv4x4/2 w -> 2w, lReLU             (B, 2w, 7, 7)      [attention at 7]
       h = sum over positions               (B, 2w)
       out = linear(h) + sum(embed(y) * h)  (B,)

Deviations from SAGAN, for CPU budget: plain DCGAN-style blocks (transposed
4x4 convs in G, strided 4x4 convs in D) instead of residual blocks, about
3.3 M multiply-adds per image in each network at w = 32; one attention layer
per network (SAGAN has one in each too, at 32 x 32 of 128 x 128, i.e. the
second-highest resolution, which here is 14 x 14, the default).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

RESOLUTIONS = (7, 14, 28)
SPECTRAL_NORM = ("both", "d", "none")
CONDITIONING = ("cbn", "concat")
SN_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)


def _check(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(str, valid))}; got {value!r}")


def make_attention(key: str | None, channels: int) -> nn.Module:
    """``create_attention(key, channels, dims=2)``, or identity for None/"none"."""
    if key is None or key == "none":
        return nn.Identity()
    from ..registry import create_attention

    return create_attention(key, channels, dims=2)


def apply_spectral_norm(module: nn.Module, embeddings: bool = False) -> nn.Module:
    """Spectral-normalise every conv/linear weight in ``module`` (and embeddings if asked).

    Layers already parametrised (an attention module built with its own
    spectral-norm option) are left alone. Returns ``module``.
    """
    types = SN_TYPES + ((nn.Embedding,) if embeddings else ())
    for m in list(module.modules()):
        if isinstance(m, types) and getattr(m, "weight", None) is not None:
            if not parametrize.is_parametrized(m, "weight"):
                spectral_norm(m)
    return module


def spectral_norm_layers(module: nn.Module) -> list[str]:
    """Names of the submodules whose ``weight`` carries a spectral-norm parametrisation."""
    out = []
    for name, m in module.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            if any(type(p).__name__ == "_SpectralNorm" for p in m.parametrizations["weight"]):
                out.append(name)
    return out


class ConditionalBatchNorm2d(nn.Module):
    """BN without affine, then ``gain[y] * x_hat + bias[y]`` (gain init 1, bias init 0)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class _PlainBN(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class Generator(nn.Module):
    def __init__(
        self,
        z_dim: int = 64,
        num_classes: int = 10,
        width: int = 32,
        attention: str | None = "sagan",
        attn_res: int = 14,
        spectral_norm: bool = True,
        conditioning: str = "cbn",
    ):
        super().__init__()
        _check("attention resolution", attn_res, RESOLUTIONS)
        _check("conditioning", conditioning, CONDITIONING)
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even integer >= 2, got {width!r}")
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim!r}")
        self.z_dim, self.num_classes, self.conditioning = z_dim, num_classes, conditioning
        w = width
        norm = (lambda c: ConditionalBatchNorm2d(c, num_classes)) if conditioning == "cbn" else _PlainBN
        in_dim = z_dim
        if conditioning == "concat":
            self.embed = nn.Embedding(num_classes, z_dim)
            in_dim = 2 * z_dim
        self.fc = nn.Linear(in_dim, 2 * w * 7 * 7)
        self.norm1 = norm(2 * w)
        self.conv1 = nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1)
        self.norm2 = norm(w)
        self.conv2 = nn.ConvTranspose2d(w, w // 2, 4, stride=2, padding=1)
        self.norm3 = nn.BatchNorm2d(w // 2)
        self.conv_out = nn.Conv2d(w // 2, 1, 3, padding=1)
        self.attn_res = attn_res
        self.attn = make_attention(attention, {7: 2 * w, 14: w, 28: w // 2}[attn_res])
        self.width = w
        if spectral_norm:
            apply_spectral_norm(self)

    def _attn(self, h: torch.Tensor, res: int) -> torch.Tensor:
        return self.attn(h) if res == self.attn_res else h

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "concat":
            z = torch.cat([z, self.embed(y)], dim=1)
        h = self.fc(z).view(z.shape[0], 2 * self.width, 7, 7)
        h = self._attn(h, 7)
        h = self._attn(self.conv1(F.relu(self.norm1(h, y))), 14)
        h = self._attn(self.conv2(F.relu(self.norm2(h, y))), 28)
        return torch.tanh(self.conv_out(F.relu(self.norm3(h))))


class Discriminator(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        attention: str | None = "sagan",
        attn_res: int = 14,
        spectral_norm: bool = True,
    ):
        super().__init__()
        _check("attention resolution", attn_res, RESOLUTIONS)
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even integer >= 2, got {width!r}")
        w = width
        self.conv1 = nn.Conv2d(1, w // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(w // 2, w, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        self.linear = nn.Linear(2 * w, 1)
        self.embed = nn.Embedding(num_classes, 2 * w)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.attn_res = attn_res
        self.attn = make_attention(attention, {28: w // 2, 14: w, 7: 2 * w}[attn_res])
        if spectral_norm:
            apply_spectral_norm(self, embeddings=True)

    def _attn(self, h: torch.Tensor, res: int) -> torch.Tensor:
        return self.attn(h) if res == self.attn_res else h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self._attn(F.leaky_relu(self.conv1(x), 0.1), 28)
        h = self._attn(F.leaky_relu(self.conv2(h), 0.1), 14)
        return self._attn(F.leaky_relu(self.conv3(h), 0.1), 7).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]``."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(G(z))]``."""
    return -fake.mean()


class EMA:
    """Exponential moving average of a model's parameters; buffers are copied.

    ``decay_at(step) = min(decay, (1 + step) / (10 + step))`` so that the average
    is not dominated by the random initialisation early in short runs.
    Buffers (BN running statistics, spectral-norm power-iteration vectors) are
    copied from the live model at every update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for pe, p in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(self.model.buffers(), model.buffers(), strict=True):
            be.copy_(b)
