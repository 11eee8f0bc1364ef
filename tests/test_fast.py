"""The speed boundary: one selector decides, fast paths follow the maths or step aside.

Every fast path is checked to agree with its module's plain forward or to decline,
whatever is done to the module: non-default options, layers swapped for others
(wrong shapes, other types, other activations), weights transposed in place, a
subclass with its own gate, a method whose code changed. Every fallback rule
(capture, channels-last, trace, export, compile, dispatch mode, dtype, device,
empty batch, the switch) is checked to run the plain forward. A damaged kernel
library is rebuilt.
"""

from __future__ import annotations

import copy
import ctypes
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import narrow_options, randomize
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import convattn
from convattn import create_attention, fast
from convattn.attention.cbam import CBAM, CBAMChannel, CBAMSpatial
from convattn.attention.coord import CoordAttention
from convattn.attention.eca import ECA
from convattn.attention.scse import SCSE, SSE
from convattn.attention.se import SE
from convattn.attention.simam import SimAM
from convattn.attention.triplet import TripletAttention
from convattn.fast import native, plans, select

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

KEYS = ["se", "eca", "cbam_channel", "cbam_spatial", "cbam", "sse", "scse", "coord", "triplet", "simam"]


class _Kernels:
    """Counts every call into the kernel library's wrappers and the eval plans."""

    def __init__(self, monkeypatch):
        self.n = 0
        names = ("pool_spatial", "pool_channel", "scale", "simam_forward", "coord_pool", "triplet_pool")
        for owner, name in (*[(native, n) for n in names], (plans, "run")):
            fn = getattr(owner, name)

            def wrapped(*a, _fn=fn, **k):
                self.n += 1
                return _fn(*a, **k)

            monkeypatch.setattr(owner, name, wrapped)


def _randomized(m: nn.Module, dtype=torch.float64) -> nn.Module:
    return randomize(m.to(dtype))


def _same_as_plain(m: nn.Module, x: torch.Tensor, train: bool) -> None:
    """Output and gradients of ``m(x)`` equal those of its plain forward (float64)."""
    m.train(train)
    ref = copy.deepcopy(m)  # BN statistics as before the first call
    xa = x.clone().requires_grad_(train)
    ya = m(xa)
    xb = x.clone().requires_grad_(train)
    with fast.disabled():
        yb = ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(m.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    if train:
        g = torch.randn_like(ya)
        ga = torch.autograd.grad(ya, [xa, *m.parameters()], g, allow_unused=True)
        gb = torch.autograd.grad(yb, [xb, *ref.parameters()], g, allow_unused=True)
        for a, b in zip(ga, gb, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ the maths cannot drift

NON_DEFAULT = [
    ("se", {"reduction": 4}),
    ("se", {"hidden": 3}),
    ("eca", {"kernel_size": 7}),
    ("eca", {"kernel_size": 1}),
    ("eca", {"padding": "circular"}),
    ("eca", {"mlp": True}),
    ("cbam_channel", {"reduction": 2}),
    ("cbam_spatial", {"kernel_size": 3, "pool_order": "mean_max"}),
    ("cbam_spatial", {"kernel_size": 5, "dims": 1}),
    ("cbam", {"reduction": 8, "kernel_size": 5, "pool_order": "mean_max", "zero_init_bn": True}),
    ("sse", {}),
    ("scse", {"reduction": 4, "merge": "sum"}),
    ("coord", {"reduction": 4, "min_hidden": 2}),
    ("triplet", {"kernel_size": 3}),
    ("triplet", {"kernel_size": 5, "no_spatial": True}),
    ("simam", {"e_lambda": 0.1}),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("key, opts", NON_DEFAULT, ids=[f"{k}-{'-'.join(map(str, o.values()))}" for k, o in NON_DEFAULT])
def test_non_default_options_agree_with_the_plain_forward(key, opts, train):
    m = _randomized(create_attention(key, 16, **opts))
    shape = (3, 16, 11) if opts.get("dims") == 1 else (3, 16, 6, 7)
    x = torch.randn(shape, dtype=torch.float64)
    assert fast.path_of(m, x).startswith("fast:")
    _same_as_plain(m, x, train)


def _swap(m: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(m.get_submodule(parent) if parent else m, name, new.double())


# (key, submodule path, replacement): layers a user might swap in after construction
SWAPS = [
    ("se", "fc1", nn.Linear(16, 64)),  # fc2 left as it was: the shapes no longer fit
    ("se", "fc1", nn.Linear(16, 1, bias=False)),
    ("se", "fc2", nn.Sequential(nn.Linear(1, 16))),
    ("eca", "conv", nn.Conv1d(1, 1, 3, padding=2, dilation=2, bias=False)),
    ("eca", "conv", nn.Conv1d(1, 1, 3, padding=1, bias=True)),
    ("cbam_channel", "fc2", nn.Linear(1, 16, bias=False)),
    ("cbam_spatial", "conv", nn.Conv2d(2, 1, 3, padding=1, bias=True)),
    ("cbam_spatial", "conv", nn.Conv2d(2, 1, 5, padding=1, bias=False)),  # padding that shrinks the map
    ("cbam_spatial", "bn", nn.Identity()),
    ("cbam", "channel.fc1", nn.Linear(16, 3)),
    ("cbam", "spatial.conv", nn.Conv2d(2, 1, 7, padding=3, stride=1, dilation=1, bias=True)),
    ("sse", "proj", nn.Linear(16, 1, bias=False)),
    ("scse", "proj", nn.Linear(16, 2)),
    ("coord", "act", nn.SiLU()),
    ("coord", "conv1", nn.Conv2d(16, 8, 1, bias=False)),
    ("coord", "bn1", nn.Identity()),
    ("triplet", "cw.conv", nn.Conv2d(2, 1, 7, padding=3, bias=True)),
    ("triplet", "hc.bn", nn.BatchNorm2d(1, eps=0.5)),
]


def _outcome(fn):
    try:
        return fn(), None
    except Exception as exc:  # the plain forward's error is the expected outcome
        return None, (type(exc), str(exc))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("key, path, new", SWAPS, ids=[f"{k}-{p}-{i}" for i, (k, p, _) in enumerate(SWAPS)])
def test_swapped_layers_agree_or_decline(key, path, new, train):
    """After a layer is swapped, the module computes what its plain forward computes, or
    raises the plain forward's error: never the kernel's own idea of the layer."""
    m = _randomized(create_attention(key, 16))
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        m.eval()(x)  # a plan is built and cached before the swap
    _swap(m, path, _randomized(new))
    m.train(train)
    ref = copy.deepcopy(m)
    got, err = _outcome(lambda: m(x))
    with fast.disabled():
        want, want_err = _outcome(lambda: ref(x))
    assert err == want_err
    if want is not None:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key", ["se", "cbam", "cbam_channel"])
def test_a_far_too_wide_hidden_layer_is_the_plain_shape_error(key):
    """fc1 replaced by a 100,000-wide layer and fc2 kept: the plain forward's shape error,
    in eval without autograd too (a kernel reading fc2 as 100,000 wide would read out of bounds)."""
    m = create_attention(key, 16).eval()
    owner = m.channel if key == "cbam" else m
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        m(x)
        owner.fc1 = nn.Linear(16, 100_000)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            m(x)
        assert fast.path_of(m, x).startswith("plain: ")


def test_weights_transposed_in_place_are_not_read_through_a_stale_plan():
    """A square SE whose fc1 weight becomes its transpose (same data pointer, other strides)
    after a first eval call: the plain forward's values, not the cached plan's."""
    m = _randomized(create_attention("se", 16, reduction=1), torch.float32).eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        m(x)
        m.fc1.weight.data = m.fc1.weight.data.t()
        y = m(x)
        with fast.disabled():
            ref = m(x)
        assert fast.path_of(m, x) == "plain: SE.fc1.weight is not contiguous"
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


@pytest.mark.parametrize("key", KEYS)
def test_float64_input_into_a_float32_module_behaves_as_the_plain_forward(key):
    m = create_attention(key, 16).eval()
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got, err = _outcome(lambda: m(x))
            with fast.disabled():
                want, want_err = _outcome(lambda: m(x))
        assert err == want_err
        if want is not None:
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want)


def _gelu_mlp_se(self, z, _unused=None):
    return torch.sigmoid(self.fc2(F.gelu(self.fc1(z))))


class _GeluSE(SE):
    def gate_from_mean(self, z, _unused=None):
        return torch.sigmoid(self.fc2(F.gelu(self.fc1(z))))


class _TanhECA(ECA):
    def gate_from_mean(self, z, _unused=None):
        return torch.tanh(self.conv(z.unsqueeze(1))).squeeze(1) * 0.5 + 0.5


class _SquaredCBAMChannel(CBAMChannel):
    def gate_from_pools(self, avg, mx):
        return super().gate_from_pools(avg, mx) ** 2


class _MeanOnlySpatial(CBAMSpatial):
    def gate_from_pools(self, mx, mean):
        return super().gate_from_pools(mean, mean)


class _HalfSSE(SSE):
    def gate(self, x):
        return super().gate(x) * 0.5


class _ProductSCSE(SCSE):
    def forward(self, x):
        s, q = self.gates(x)
        return x * s.view(*s.shape, 1, 1) * q.unsqueeze(1)


class _NoWidthCoord(CoordAttention):
    def gates(self, x):
        g_h, g_w = super().gates(x)
        return g_h, torch.ones_like(g_w)


class _TwoBranchTriplet(TripletAttention):
    def gates(self, x):
        a_cw, a_hc, a_hw = super().gates(x)
        return a_cw, a_hc, None if a_hw is None else a_hw.square()


class _SquaredSimAM(SimAM):
    def forward(self, x):
        return super().forward(x) * 2


class _PlainCBAM(CBAM):
    pass


SUBCLASSES = [_GeluSE, _TanhECA, _SquaredCBAMChannel, _MeanOnlySpatial, _HalfSSE, _ProductSCSE, _NoWidthCoord,
              _TwoBranchTriplet, _SquaredSimAM, _PlainCBAM]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_a_subclass_takes_its_own_forward(cls, train):
    """A subclass (here each overriding its gate or its forward, or nothing) is not the
    class a fast path was registered for: its own maths runs, in eval and in training."""
    m = _randomized(cls(16))
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    assert fast.path_of(m, x) == f"plain: no fast path for {cls.__name__}"
    _same_as_plain(m, x, train)


def test_every_recorded_fingerprint_matches_the_code_it_mirrors():
    """A change to a mirrored method (a module's maths) fails here: check that its fast
    path (the file named) still computes it, then record the new fingerprint there."""
    stale = {
        (cls.__name__, path.where, label): fp
        for cls, path in fast.registered().items()
        for label, (recorded, fp) in fast.fingerprints(cls).items()
        if recorded != fp
    }
    assert not stale, f"maths changed since its fast path was written (current fingerprints): {stale}"
    assert {c.__name__ for c in fast.registered()} == {
        "SE", "ECA", "CBAMChannel", "CBAMSpatial", "CBAM", "SSE", "SCSE", "CoordAttention", "TripletAttention", "SimAM"
    }


def test_a_changed_method_is_declined_with_one_warning(monkeypatch):
    """Editing SE's gate (ReLU -> GELU, here by patching the class) turns its fast path off:
    the new maths runs, in eval and training, and one warning names what changed."""
    path = fast.registered()[SE]
    monkeypatch.setattr(SE, "gate_from_mean", _gelu_mlp_se)
    monkeypatch.setattr(path, "_checked", False)
    monkeypatch.setattr(path, "_drift", None)
    m = _randomized(create_attention("se", 16))
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="SE.gate_from_mean changed") as record:
        m(x)
        m(x)
    assert len(record) == 1
    assert fast.path_of(m, x).startswith("plain: SE.gate_from_mean changed since the fast path")
    _same_as_plain(m, x, train=False)
    _same_as_plain(m, x, train=True)
    ref = x * torch.sigmoid(m.fc2(F.gelu(m.fc1(x.mean((2, 3)))))).view(2, 16, 1, 1)
    torch.testing.assert_close(m(x), ref)


def test_fingerprints_ignore_docstrings_comments_and_layout():
    def a(x):
        """Doc."""
        return x + 1  # one

    def b(x):
        return (x
                + 1)

    def c(x):
        return x + 2

    assert select.fingerprint(a) == select.fingerprint(b) != select.fingerprint(c)


# ------------------------------------------------------------------ every fallback rule


class _CountingMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


RULES = ["switch", "channels-last", "capture", "trace", "dispatch mode", "float16", "empty batch", "meta device"]


def _under(rule: str, m: nn.Module, x: torch.Tensor):
    """``m(x)`` where ``rule`` says the plain forward must run."""
    if rule == "switch":
        with fast.disabled():
            return m(x)
    if rule == "channels-last":
        return m(x.to(memory_format=torch.channels_last))
    if rule == "capture":
        with convattn.capture_maps(m) as maps:
            y = m(x)
        assert len(maps) > 0
        return y
    if rule == "trace":
        return torch.jit.trace(m, (x,), check_trace=False)(x)
    if rule == "dispatch mode":
        with _CountingMode():
            return m(x)
    if rule == "float16":
        return m.half()(x.half())
    if rule == "empty batch":
        return m(x[:0])
    assert rule == "meta device"
    try:
        return m.to("meta")(x.to("meta"))
    except (NotImplementedError, RuntimeError):  # what the plain forward makes of meta tensors
        return None


@pytest.mark.parametrize("key", KEYS)
def test_every_fallback_rule_runs_the_plain_forward(key, monkeypatch):
    calls = _Kernels(monkeypatch)
    x = torch.randn(2, 16, 6, 6)
    for rule in RULES:
        m = create_attention(key, 16).eval()
        calls.n = 0
        with torch.no_grad():
            _under(rule, m, x)
        assert calls.n == 0, f"{key}: under {rule} the plain forward must run"
    m = create_attention(key, 16).eval()
    with torch.no_grad():
        m(x)
    assert calls.n > 0, "a contiguous float32 CPU input takes the fast path"


@pytest.mark.parametrize("key", ["se", "cbam", "coord"])
def test_export_and_compile_see_only_standard_ops(key, monkeypatch):
    calls = _Kernels(monkeypatch)
    m = create_attention(key, 16).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        ref = m(x)
    calls.n = 0
    exported = torch.export.export(m, (x,))
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-6)
    assert calls.n == 0
    graph = str(exported.graph)
    assert "call_function" in graph and "convattn" not in graph


def test_empty_batch_gives_an_empty_output_everywhere():
    for key in convattn.list_attention():
        spec = convattn.get_spec(key)
        shape = (0, 16, 6, 6) if 2 in spec.dims else (0, 16, 6)
        m = create_attention(key, 16, **narrow_options(key, 16)).eval()
        with torch.no_grad():
            y = m(torch.randn(shape))
        assert y.shape == shape, key


def test_status_names_the_path_of_every_attention_module():
    model = convattn.create_model("resnet8", attention="cbam").eval()
    x = torch.randn(2, 3, 16, 16)
    paths = fast.status(model, x)
    assert len(paths) == 3 and all(v.startswith("fast: CBAM:") for v in paths.values())
    assert all(v.startswith("plain: input not contiguous")
               for v in fast.status(model, x.to(memory_format=torch.channels_last)).values())
    with fast.disabled():
        assert all(v.startswith("plain: switched off") for v in fast.status(model, x).values())
    m = create_attention("gc", 16)
    assert fast.path_of(m, torch.randn(1, 16, 4, 4)) == "plain: no fast path for GlobalContext"


def test_the_switch_is_local_to_a_context_and_nests():
    assert fast.enabled()
    with fast.use(False):
        assert not fast.enabled()
        with fast.use(True):
            assert fast.enabled()
        assert not fast.enabled()
    assert fast.enabled()


# ------------------------------------------------------------------ the kernel library itself

_CHILD = """
import warnings, torch, convattn
from convattn.fast import native
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    m = convattn.create_attention("cbam", 16).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        y = m(x)
        with convattn.fast.disabled():
            ref = m(x)
print(native.status().split()[0], sum("damaged" in str(i.message) for i in w), torch.allclose(y, ref, atol=1e-6))
"""


def _child(cache) -> list[str]:
    env = {**os.environ, "CONVATTN_CACHE": str(cache)}
    env.pop("CONVATTN_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_a_damaged_cached_library_is_rebuilt_with_one_warning(tmp_path):
    """A truncated library (which would crash the process on its first call) and one
    whose recorded checksum is missing are each rebuilt once, with one warning."""
    built = native._library_path(native._compiler())
    lib = tmp_path / "native" / built.parent.name / built.name
    lib.parent.mkdir(parents=True)
    for f in (built, built.with_name(built.name + ".sha256")):
        (lib.parent / f.name).write_bytes(f.read_bytes())
    assert _child(tmp_path) == ["on", "0", "True"]  # the copy is trusted as it is
    lib.write_bytes(lib.read_bytes()[:5000])
    assert _child(tmp_path) == ["on", "1", "True"]
    lib.with_name("gates.so.sha256").unlink()
    assert _child(tmp_path) == ["on", "1", "True"]
    assert _child(tmp_path) == ["on", "0", "True"]  # rebuilt, then trusted


def test_the_binding_is_read_from_the_c_headers():
    """Every kernel declared in csrc/kernels.def exists for both dtypes with the declared
    parameter count, and the Python structure matches the C one field for field."""
    decls = native.kernel_declarations()
    assert {"gate_eval", "coord_eval", "triplet_eval", "pool_spatial", "simam_fwd"} <= set(decls)
    lib = native.load()
    for name, (_, params) in decls.items():
        for suffix in ("f32", "f64"):
            assert len(getattr(lib, f"{name}_{suffix}").argtypes) == len(params)
    fields = [f for f, _ in native.GateEvalArgs._fields_]
    assert fields[:5] == ["B", "C", "S", "H", "W"] and fields[-1] == "lb" and "s_bn_var" in fields
    assert ctypes.sizeof(native.GateEvalArgs) == 8 * len(fields)  # every field 8 bytes, as in C
    assert (native.PRODUCT, native.SUM, native.MAX) == (0, 1, 2)


def test_without_source_to_check_the_fast_path_is_declined(monkeypatch):
    """The fingerprints need the modules' source; where it cannot be read (a frozen
    install), the fast path is declined rather than trusted."""
    path = fast.registered()[SE]
    monkeypatch.setattr(path, "_checked", False)
    monkeypatch.setattr(path, "_drift", None)

    def no_source(*args, **kwargs):
        raise OSError("could not get source code")

    monkeypatch.setattr(select.inspect, "getsource", no_source)
    m = create_attention("se", 16)
    x = torch.randn(2, 16, 4, 4)
    assert fast.path_of(m, x) == "plain: the code convattn.fast.channel mirrors cannot be read (OSError)"
    with fast.disabled():
        ref = m(x)
    torch.testing.assert_close(m(x), ref)
