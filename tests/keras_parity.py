"""The Keras-vs-PyTorch checks of every Keras layer, on whatever backend Keras runs.

Used by tests/test_keras.py in-process (PyTorch backend) and as a script in a
subprocess per backend::

    KERAS_BACKEND=jax python tests/keras_parity.py --out results.json

For every case (a key, its options, the spatial dims) one randomised PyTorch
module (conftest.randomize) is converted with ``from_torch`` and compared:
eval-mode outputs (channels_last and channels_first), training-mode outputs
(BatchNorm batch statistics) and the updated running statistics, the weights
after ``to_torch`` (bit-identical), the ``get_config``/``from_config`` round
trip and (once per key) a ``.keras`` save and load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import SPATIAL, narrow_options, randomize  # noqa: E402

import convattn  # noqa: E402

CHANNELS = 32
BATCH = 4
#: outputs agree within TOL * max(1, max |y|) (float32; the relative form matters only for
#: outputs far above 1, where float32's own spacing exceeds 1e-5)
TOL = 1e-5

#: randomize's weight scale for the keys whose outputs float32 cannot compare at conftest's 0.5:
#: cca's energies are products of two random projections, large enough at 0.5 that its sharp
#: softmax (applied twice, the recurrence) turns the backends' float32 rounding of the
#: energies into ~2e-5 relative output differences; at 0.2 they are O(1e-7)
KERAS_SCALE = {"cca": 0.2}

#: option cases beyond the defaults, 2-D unless a case says otherwise
EXTRA: dict[str, list[dict]] = {
    "eca": [{"padding": "circular"}, {"mlp": True}, {"kernel_size": 5}],
    "cbam": [{"pool_order": "mean_max", "kernel_size": 3}],
    "cbam_spatial": [{"kernel_size": 3, "pool_order": "mean_max"}],
    "scse": [{"merge": "sum"}],
    "triplet": [{"no_spatial": True}],
    "bam": [{"merge": "sum", "bias_before_bn": True}],
    "bam_spatial": [{"num_dilated": 1, "dilation": 2}],
    "gct": [{"mode": "l1"}],
    "ge": [
        {"extent": 2}, {"extent": 4}, {"extent": 2, "dims": 3}, {"extent": 4, "_spatial": (10, 7)},
        {"variant": "theta", "feat_size": 8}, {"variant": "theta-plus", "feat_size": 8},
        {"variant": "theta", "extent": 2}, {"variant": "theta-plus", "extent": 4},
        {"variant": "theta", "extent": 2, "dims": 3},
    ],
    "fca": [{"freq_sel": "low16"}, {"dct_size": 4}, {"dct_size": (7, 7)}, {"freq_sel": "top1", "dims": 3}],
    "ela": [{"shared": False, "norm_groups": 1, "act": "silu"}],
    "strip": [{"refine": False}],
    "gc": [{"fusion": "channel_mul"}, {"fusion": ("channel_add", "channel_mul"), "pooling": "avg"}],
    "nonlocal": [{"mode": "gaussian"}, {"mode": "dot_product"}, {"subsample": False}, {"_spatial": (7, 5)}],
    "sagan": [{"spectral_norm": True}, {"_spatial": (7, 5)}],
    "cam": [{"energy": "paper"}],
    "danet": [{"energy": "paper"}],
    "parallel_gate": [{"spatial_reduction": 4}],
    "srm": [{"eps": 0}],
    "simam": [{"e_lambda": 0.1}],
    "pam_gate": [{"qk_reduction": 4}],
    "psa_p": [{"variant": "paper"}],
    "scsa": [{"window_size": 2, "head_num": 4}, {"gate_layer": "softmax", "down_sample_mode": "max_pool"},
             {"window_size": 4, "qkv_bias": True, "_spatial": (9, 6)}, {"window_size": -1},
             {"_spatial": (5, 8)}, {"down_sample_mode": "max_pool", "_spatial": (8, 5)}],
    "psa_s": [{"variant": "paper"}],
    "cca": [{"recurrence": 1}, {"_spatial": (7, 5)}],
}


def cases(keys, one: bool = False):
    """(case id, key, options, dims, spatial) for the keys: defaults per supported dims, then EXTRA.

    ``one``: a single case per key, its defaults in 2-D (or its first supported dims).
    """
    out = []
    for key in keys:
        spec = convattn.get_spec(key)
        if one:
            d = 2 if 2 in spec.dims else spec.dims[0]
            out.append((f"{key}-{d}d", key, {}, d, SPATIAL[d]))
            continue
        for d in spec.dims:
            out.append((f"{key}-{d}d", key, {}, d, SPATIAL[d]))
        for i, opts in enumerate(EXTRA.get(key, [])):
            opts = dict(opts)
            d = opts.pop("dims", 2)
            spatial = opts.pop("_spatial", SPATIAL[d])
            out.append((f"{key}-opt{i}", key, opts, d, spatial))
    return out


def _np(t):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(t))


def call(layer, x, training: bool):
    return layer(x, training=training)


def _last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def check_case(key: str, options: dict, dims: int, spatial: tuple, save: bool = False, seed: int = 0) -> dict:
    """Every check of one case; returns the errors (floats) and flags (bools)."""
    import keras

    import convattn.keras as ck

    opts = {**narrow_options(key, CHANNELS), **options}
    torch.manual_seed(seed)
    module = randomize(convattn.create_attention(key, CHANNELS, dims=dims, **opts), seed=seed,
                       scale=KERAS_SCALE.get(key))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((BATCH, CHANNELS) + tuple(spatial), generator=g)
    xl = _last(x.numpy())
    rec: dict = {}

    # eval mode, channels_last and channels_first
    module.eval()
    layer = ck.from_torch(module, dims=dims)
    with torch.no_grad():
        y = module(x).numpy()
    yl = _np(call(layer, xl, False))
    rec["eval"] = float(np.abs(_last(y) - yl).max())
    rec["scale"] = float(np.abs(y).max())
    layer_cf = ck.from_torch(module, dims=dims, data_format="channels_first")
    rec["eval_cf"] = float(np.abs(y - _np(call(layer_cf, x.numpy(), False))).max())

    # weights back to PyTorch: bit-identical
    back = ck.to_torch(layer)
    sd, sd2 = module.state_dict(), back.state_dict()
    rec["roundtrip"] = sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)

    # config round trip: the same config, the same outputs with the same weights
    cfg = layer.get_config()
    clone = type(layer).from_config(cfg)
    clone.build(xl.shape)
    clone.set_weights(layer.get_weights())
    rec["config"] = clone.get_config() == cfg and bool(np.array_equal(_np(call(clone, xl, False)), yl))

    # training mode: batch statistics and the running-statistics update
    module.train()
    yt = module(x).detach().numpy()
    ytl = _np(call(layer, xl, True))
    rec["train"] = float(np.abs(_last(yt) - ytl).max())
    st = ck.convert.torch_state(layer)
    sd = module.state_dict()
    # relative to each entry's magnitude (a running variance can be large)
    rec["state_after_train"] = max(
        [float((st[k].double() - sd[k].double()).abs().max() / max(1.0, float(sd[k].double().abs().max())))
         for k in sd if sd[k].numel()] or [0.0]
    )

    if save:
        model = keras.Sequential([keras.Input(xl.shape[1:], batch_size=None), layer])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{key}.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        ref = _np(model(xl, training=False))
        rec["saved"] = bool(np.array_equal(_np(loaded(xl, training=False)), ref))
    return rec


def failures(rec: dict) -> list[str]:
    """What a case's record says is wrong (empty when every check passed)."""
    if "error" in rec:
        return [rec["error"]]
    tol = TOL * max(1.0, rec["scale"])
    bad = [f"{k}={rec[k]:.3g} > {tol:.3g}" for k in ("eval", "eval_cf", "train") if rec[k] > tol]
    if rec["state_after_train"] > TOL:
        bad.append(f"state_after_train={rec['state_after_train']:.3g}")
    bad += [k for k in ("roundtrip", "config", "saved") if rec.get(k) is False]
    return bad


def run(keys=None, one: bool = False) -> dict:
    import keras

    import convattn.keras as ck

    keys = ck.list_attention() if keys is None else keys
    out = {"backend": keras.backend.backend(), "cases": {}}
    seen = set()
    t0 = time.perf_counter()
    for cid, key, opts, dims, spatial in cases(keys, one):
        t = time.perf_counter()
        try:
            rec = check_case(key, opts, dims, spatial, save=key not in seen)
        except Exception as e:  # reported per case by the test
            rec = {"error": f"{type(e).__name__}: {e}"}
        seen.add(key)
        rec["key"], rec["seconds"] = key, round(time.perf_counter() - t, 3)
        out["cases"][cid] = rec
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _example():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    import keras_cbam_digits

    return keras_cbam_digits


def check_fit() -> list[float]:
    """The example's CNN with CBAM: [loss before, loss of the one epoch of ``fit``, loss after]."""
    ex = _example()
    (x, y), _ = ex.load_digits(512)
    model = ex.build_model()
    before = model.evaluate(x, y, batch_size=128, verbose=0)[0]
    hist = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return [float(before), float(hist.history["loss"][0]), float(model.evaluate(x, y, batch_size=128, verbose=0)[0])]


def check_export() -> float:
    """TensorFlow only: a CNN with CBAM exported as a SavedModel (``model.export``), reloaded
    with ``tf.saved_model.load``; the largest difference of the reloaded model's outputs."""
    import tensorflow as tf

    ex = _example()
    (x, y), _ = ex.load_digits(256)
    model = ex.build_model()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # non-trivial weights and running statistics
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved")
        model.export(path, verbose=False)
        loaded = tf.saved_model.load(path)  # kept: its variables live as long as it does
        served = loaded.serve(tf.constant(x[:16]))
        return float(np.abs(np.asarray(served) - _np(model(x[:16], training=False))).max())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--keys", nargs="*")
    p.add_argument("--one", action="store_true", help="one case per key (defaults, 2-D)")
    p.add_argument("--export", action="store_true", help="also the SavedModel check (TensorFlow)")
    p.add_argument("--fit", action="store_true", help="also one epoch of the example's model.fit")
    a = p.parse_args()
    torch.set_num_threads(1)
    res = run(a.keys or None, a.one)
    if a.fit:
        try:
            res["fit"] = check_fit()
        except Exception as e:
            res["fit"] = f"{type(e).__name__}: {e}"
    if a.export:
        try:
            res["export"] = check_export()
        except Exception as e:
            res["export"] = f"{type(e).__name__}: {e}"
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
