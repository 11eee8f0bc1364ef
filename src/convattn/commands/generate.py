"""``convattn generate``: a SAGAN-style class-conditional GAN on the embedded digits, with vs without attention."""

from __future__ import annotations

import argparse

HELP = ("train a class-conditional SAGAN-style GAN (hinge loss, spectral norm, TTUR, EMA) on the embedded "
        "28x28 digits with and without attention over seeds; score samples with the project's digit classifier "
        "(class accuracy, Frechet distance in its feature space: not FID)")

DEFAULT_VARIANTS = "none,sagan"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..gen.job import DEFAULTS as d

    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated attention registry keys, 'none' = no attention (default {DEFAULT_VARIANTS})")
    p.add_argument("--seeds", default=str(d["seeds"]),
                   help=f"number of seeds ({d['seeds']} = seeds 0..{d['seeds'] - 1}) or a comma-separated list")
    p.add_argument("--attn-res", type=int, default=d["attn_res"],
                   help=f"feature-map resolution of the attention layer in G and D: 7, 14 or 28 (default {d['attn_res']})")
    g = p.add_argument_group("training (the same for every variant and seed)")
    g.add_argument("--epochs", type=int, default=d["epochs"], help=f"epochs over the training digits (default {d['epochs']})")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"default {d['batch_size']}")
    g.add_argument("--lr-g", type=float, default=d["lr_g"], help=f"generator Adam lr (default {d['lr_g']:g}, TTUR)")
    g.add_argument("--lr-d", type=float, default=d["lr_d"], help=f"discriminator Adam lr (default {d['lr_d']:g}, TTUR)")
    g.add_argument("--beta1", type=float, default=d["beta1"], help=f"Adam beta1 (default {d['beta1']})")
    g.add_argument("--beta2", type=float, default=d["beta2"], help=f"Adam beta2 (default {d['beta2']})")
    g.add_argument("--n-critic", type=int, default=d["n_critic"], help=f"D steps per G step (default {d['n_critic']})")
    g.add_argument("--ema-decay", type=float, default=d["ema_decay"], help=f"decay of G-EMA (default {d['ema_decay']})")
    g.add_argument("--spectral-norm", choices=["both", "d", "none"], default=d["spectral_norm"],
                   help=f"where to apply spectral norm (default {d['spectral_norm']}; SAGAN uses both, which at this "
                        "budget made G ignore z)")
    g.add_argument("--conditioning", choices=["cbn", "concat"], default=d["conditioning"],
                   help="class input of G: conditional BatchNorm (cbn, default) or an embedding concatenated to z")
    g.add_argument("--width", type=int, default=d["width"], help=f"base channel width of G and D (default {d['width']})")
    g.add_argument("--z-dim", type=int, default=d["z_dim"], help=f"noise dimension (default {d['z_dim']})")
    g.add_argument("--train-size", type=int, default=None,
                   help="use N of the 4,000 training digits (default all; class-balanced random subset)")
    g.add_argument("--eval-samples", type=int, default=d["eval_samples"],
                   help=f"generated samples scored after each epoch (default {d['eval_samples']})")
    g.add_argument("--classifier-epochs", type=int, default=d["classifier_epochs"],
                   help=f"epochs of the metric's digit classifier (default {d['classifier_epochs']}; cached per config)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice). The default run takes ~12 min on 1 thread; "
                        "2 threads are ~1.5x faster on an idle machine but several times slower than 1 when "
                        "another busy process shares the cores")
    g.add_argument("--jobs", type=int, default=d["jobs"],
                   help=f"GANs trained at once in separate processes, the threads split between them "
                        f"(default {d['jobs']})")
    g.add_argument("--cache-dir", default=None,
                   help="where the digit classifier is cached (default $CONVATTN_CACHE or the user cache folder)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="run folder to create (must not exist; default runs/generate-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR with its saved options (other options are ignored)")
    g.add_argument("--quiet", action="store_true", help="no progress output (the report path is still printed)")


def run(args: argparse.Namespace) -> int:
    from ..gen.job import run_generate_job

    return run_generate_job(args)
