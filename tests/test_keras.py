"""convattn.keras: the Keras layers against the PyTorch modules, on the three backends.

The backend Keras was imported with (PyTorch unless KERAS_BACKEND says otherwise)
runs every case of tests/keras_parity.py here, one test per case; each other
backend runs one case per key in a subprocess of its own (Keras fixes its backend
at import), in one test per backend.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras_parity import KERAS_SCALE, cases, check_case, check_fit, failures  # noqa: E402

import convattn  # noqa: E402
import convattn.keras as ck  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:keras"),
    # EMA at C = 32 has one channel per group: its softmax over one channel is the official maths
    pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning"),
]

HERE = os.path.dirname(os.path.abspath(__file__))
BACKEND = keras.backend.backend()
OTHERS = [b for b in ("torch", "tensorflow", "jax") if b != BACKEND]

_CASES = cases(ck.list_attention())
_FIRST = {}
for _cid, _key, *_ in _CASES:
    _FIRST.setdefault(_key, _cid)


@pytest.mark.parametrize("cid,key,options,dims,spatial", [pytest.param(*c, id=c[0]) for c in _CASES])
def test_parity_in_process(cid, key, options, dims, spatial):
    rec = check_case(key, options, dims, spatial, save=_FIRST[key] == cid)
    assert not failures(rec), f"{cid} on {BACKEND}: {failures(rec)} ({rec})"


def _importable(backend: str) -> bool:
    mod = {"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[backend]
    import importlib.util

    return importlib.util.find_spec(mod) is not None


@pytest.mark.parametrize("backend", OTHERS)
def test_parity_other_backend(backend, tmp_path):
    if not _importable(backend):
        pytest.skip(f"{backend} is not installed (pip install -e '.[test]' installs it)")
    out = tmp_path / f"{backend}.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    args = ["--one", "--fit", "--out", str(out)] + (["--export"] if backend == "tensorflow" else [])
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "keras_parity.py"), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["backend"] == backend
    keys = {rec["key"] for rec in res["cases"].values()}
    assert keys == set(ck.list_attention())
    bad = {cid: failures(rec) for cid, rec in res["cases"].items() if failures(rec)}
    assert not bad, f"{backend}: {bad}"
    # the example's model.fit: the loss falls (before, during the epoch, after)
    assert isinstance(res["fit"], list), res["fit"]
    before, during, after = res["fit"]
    assert during < before and after < before, res["fit"]
    if backend == "tensorflow":  # model.export() SavedModel, reloaded
        assert isinstance(res["export"], float) and res["export"] <= 1e-5, res["export"]
    worst = {m: max(rec[m] / max(1.0, rec["scale"]) for rec in res["cases"].values()) for m in ("eval", "train")}
    print(f"{backend}: {len(res['cases'])} cases in {time.perf_counter() - t:.1f}s, worst relative error {worst}")


def test_keys_without_a_keras_layer_are_listed():
    missing = ck.missing_layers()
    assert set(ck.list_attention()) | set(missing) == set(convattn.list_attention())
    for key in missing:
        with pytest.raises(ValueError, match=f"attention '{key}' is registered for PyTorch but has no Keras layer yet"):
            ck.create_attention(key)
    if missing:
        pytest.skip(f"registered PyTorch keys without a Keras layer yet: {', '.join(missing)}")


def test_a_key_without_a_keras_layer_is_reported(monkeypatch):
    from convattn.keras import registry

    monkeypatch.delitem(registry._LAYERS, "se")
    assert "se" in ck.missing_layers() and "se" not in ck.list_attention()
    with pytest.raises(ValueError, match="attention 'se' is registered for PyTorch but has no Keras layer yet"):
        ck.create_attention("se")
    with pytest.raises(ValueError, match="has no Keras layer yet"):
        ck.from_torch(convattn.create_attention("se", 16))


# ----------------------------------------------------------------------------- API


def test_registry_mirrors_pytorch():
    for key in ck.list_attention():
        d, t = ck.describe(key), convattn.describe(key)
        assert d["torch_class"] == t["class"] and d["class"].startswith("convattn.keras.")
        assert {k: v for k, v in d["defaults"].items() if k != "data_format"} == {
            k: v for k, v in t["defaults"].items() if k != "dims"
        }
        assert d["defaults"]["data_format"] == "channels_last"
        assert (d["paper"], d["year"], d["family"], d["dims"], d["equation"]) == (
            t["paper"], t["year"], t["family"], t["dims"], t["equation"])
    for fam in ("channel", "spatial", "combined", "self"):
        assert set(ck.list_attention(fam)) <= set(convattn.list_attention(fam))
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        ck.list_attention("nope")


def _torch_error(key, channels, **options):
    with pytest.raises(ValueError) as e:
        convattn.create_attention(key, channels, **options)
    return str(e.value)


def test_errors_are_the_pytorch_ones():
    with pytest.raises(ValueError) as e:
        convattn.create_attention("sqe", 8)
    with pytest.raises(ValueError, match=re.escape(str(e.value))):
        ck.create_attention("sqe")
    x = np.zeros((2, 4, 4, 8), "float32")
    for key, options in (("se", {"reduction": 16}), ("eca", {"padding": "reflect"}), ("ema", {}),
                         ("cbam", {"kernel_size": 4}), ("ge", {"variant": "theta"})):
        msg = _torch_error(key, 8, **options)
        layer = ck.create_attention(key, **options)
        with pytest.raises(ValueError, match=re.escape(msg)):
            layer(x)
    with pytest.raises(TypeError, match=r"SE \(se\): unknown option 'reductoin'; valid options: reduction, hidden"):
        ck.create_attention("se", reductoin=4)
    with pytest.raises(ValueError, match="data_format must be one of 'channels_last', 'channels_first'"):
        ck.create_attention("se", data_format="NHWC")
    with pytest.raises(ValueError, match=r"coord: dims=3 is not supported; valid: 2"):
        ck.create_attention("coord", dims=3)


def test_shape_errors():
    layer = ck.create_attention("coord")
    with pytest.raises(ValueError, match=re.escape(
            "CoordAttention (coord): expected input (B, ..., C) (channels_last) with 2 spatial dims; "
            "got shape (2, 8, 16)")):
        layer(np.zeros((2, 8, 16), "float32"))
    se = ck.create_attention("se", reduction=4)
    se(np.zeros((2, 4, 4, 16), "float32"))
    with pytest.raises(ValueError, match=re.escape(
            "SE (se): expected input (B, ..., 16) (channels_last) with 2 spatial dims (built for 2); "
            "got shape (2, 4, 4, 8)")):
        se(np.zeros((2, 4, 4, 8), "float32"))
    cf = ck.create_attention("se", reduction=4, data_format="channels_first")
    assert tuple(cf(np.zeros((2, 16, 3, 5), "float32")).shape) == (2, 16, 3, 5)
    assert cf.channels == 16 and cf.nd == 2


def test_from_torch_and_to_torch_errors():
    with pytest.raises(ValueError, match="from_torch: expected a registered convattn attention module"):
        ck.from_torch(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="to_torch: expected a convattn.keras attention layer"):
        ck.to_torch(keras.layers.Dense(3))
    with pytest.raises(ValueError, match=r"to_torch: SE \(se\) is not built yet"):
        ck.to_torch(ck.create_attention("se"))


def test_initial_values_are_the_pytorch_module_init():
    # zero-initialised scales (GC's last conv, DANet's gamma) make these the identity at init
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 32)).astype("float32")
    for key in ("gc", "gct", "pam", "cam", "danet", "nonlocal", "sagan"):
        y = keras.ops.convert_to_numpy(ck.create_attention(key)(x))
        np.testing.assert_array_equal(y, x, err_msg=key)


# ----------------------------------------------------------------------------- attach

_APPS = {"ResNet50": "resnet50", "ResNet50V2": "resnet50", "MobileNetV2": "mobilenet_v2",
         "EfficientNetB0": "efficientnet_b0"}
_IDENTITY_KEY = {"ResNet50": "cbam", "ResNet50V2": "gc", "MobileNetV2": "se", "EfficientNetB0": "eca"}


@pytest.fixture(scope="module")
def apps():
    return {
        name: getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10)
        for name in _APPS
    }


@pytest.mark.parametrize("app", list(_APPS))
def test_attach_applications_as_pytorch(apps, app):
    from convattn.keras.attach import insertion_points

    model = apps[app]
    torch_model = convattn.create_model(_APPS[app])
    for where in ("block", "stage"):
        ours = [p["channels"] for p in insertion_points(model, where)]
        theirs = [p.channels for p in convattn.insertion_points(torch_model, where)]
        assert ours == theirs, (app, where)
    # identity init: the outputs are unchanged
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    new = ck.attach(model, _IDENTITY_KEY[app], init="identity")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new(x, training=False)), ref)
    assert len(new.layers) == len(model.layers) + len(insertion_points(model))


def test_se_resnet50_parameters_as_pytorch(apps):
    model = apps["ResNet50"]
    added = ck.attach(model, "se").count_params() - model.count_params()
    torch_plain = sum(p.numel() for p in convattn.create_model("resnet50").parameters())
    torch_se = sum(p.numel() for p in convattn.create_model("resnet50", attention="se").parameters())
    assert added == torch_se - torch_plain == 2_530_992
    # ECA with the released ResNet-50's kernels, one per stage: 3*3 + 4*5 + 6*5 + 3*7 = 80
    eca = ck.attach(model, "eca", kernel_size=convattn.per_stage(3, 5, 5, 7))
    assert eca.count_params() - model.count_params() == 80
    # BAM after stages 1-3: the same learned parameters (Keras also counts BN statistics)
    bam = ck.attach(model, "bam", where="stage")
    torch_bam = sum(p.numel() for p in convattn.create_model("resnet50", attention="bam", where="stage").parameters())
    trainable = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)  # noqa: E731
    assert trainable(bam) - trainable(model) == torch_bam - torch_plain == 357_619


def _user_cnn():
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(8, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4),
    ])


def test_attach_user_cnn_predicate_errors_and_save(tmp_path):
    from convattn.keras.attach import insertion_points

    model = _user_cnn()
    pts = insertion_points(model)
    assert [(p["channels"], p["stage"]) for p in pts] == [(8, 0), (16, 1)]
    assert [p["channels"] for p in insertion_points(model, "stage")] == [8]
    conv_only = insertion_points(model, lambda name, layer: isinstance(layer, keras.layers.Conv2D))
    assert [p["channels"] for p in conv_only] == [8, 16]
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype("float32")
    new = ck.attach(model, "cbam", init="identity", reduction=4)
    assert isinstance(new.layers[4], ck.IdentityInit)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new(x)), keras.ops.convert_to_numpy(model(x)))
    new.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(new(x)))
    with pytest.raises(ValueError, match="attach: where must be 'block', 'stage' or a predicate"):
        ck.attach(model, "se", where="everywhere")
    with pytest.raises(ValueError, match="attach: init must be 'default'"):
        ck.attach(model, "se", init="zeros")
    with pytest.raises(ValueError, match="unknown attention 'sse2'; did you mean 'sse'"):
        ck.attach(model, "sse2")
    with pytest.raises(ValueError, match="attach: the where= predicate selected no layer"):
        ck.attach(model, "se", where=lambda name, layer: False)
    with pytest.raises(ValueError, match="attach: model must be a functional or Sequential keras.Model"):
        ck.attach(keras.layers.Dense(3), "se")


# ----------------------------------------------------------------------------- example


def test_example_cbam_digits_loss_falls():
    before, during, after = check_fit()
    assert during < before and after < before, (before, during, after)


@pytest.mark.skipif(BACKEND != "torch", reason="gradients are compared through PyTorch's autograd")
@pytest.mark.parametrize("key", ck.list_attention())
def test_gradients_match_pytorch(key):
    # training mode: the gradients of <Y, R> for the input and every parameter, within 1e-5
    # relative to max(1, max |gradient|) (a parameter's gradient is a sum over the batch)
    from conftest import narrow_options, randomize

    d = 2 if 2 in convattn.get_spec(key).dims else convattn.get_spec(key).dims[0]
    spatial = {1: (12,), 2: (8, 8), 3: (4, 4, 4)}[d]
    module = randomize(convattn.create_attention(key, 32, dims=d, **narrow_options(key, 32)),
                       scale=KERAS_SCALE.get(key)).train()
    layer = ck.from_torch(module, dims=d)
    g = torch.Generator().manual_seed(3)
    x = torch.randn((4, 32) + spatial, generator=g)
    r = torch.randn(x.shape, generator=g)
    xt = x.clone().requires_grad_(True)
    (module(xt) * r).sum().backward()
    xk = x.movedim(1, -1).contiguous().requires_grad_(True)
    (layer(xk, training=True) * r.movedim(1, -1)).sum().backward()
    scale = max(1.0, float(xt.grad.abs().max()))
    assert float((xk.grad.movedim(-1, 1) - xt.grad).abs().max()) <= 1e-5 * scale
    params = dict(module.named_parameters())
    for name, var in layer.weights_by_name().items():
        if name in params and params[name].grad is not None:
            ref = params[name].grad
            got = var.value.grad
            tol = 1e-5 * max(1.0, float(ref.abs().max()))
            assert got is not None and float((got - ref).abs().max()) <= tol, name
