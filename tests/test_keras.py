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
from keras_parity import cases, check_case, failures  # noqa: E402

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
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "keras_parity.py"), "--one", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["backend"] == backend
    keys = {rec["key"] for rec in res["cases"].values()}
    assert keys == set(ck.list_attention())
    bad = {cid: failures(rec) for cid, rec in res["cases"].items() if failures(rec)}
    assert not bad, f"{backend}: {bad}"
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
