"""Put attention into a functional Keras model: :func:`attach`.

``attach(model, "se")`` returns a new functional model (the original layers,
shared, with their weights) in which one attention layer transforms the output
of every insertion point. The placements mirror :func:`convattn.models.attach`:

- ``"block"``: in every residual block, on the output of the last
  BatchNormalization of the residual branch, before the add (ResNet50,
  MobileNetV2, EfficientNetB0; the branch is the input of the ``Add`` with the
  longer path from the model's input, trailing Dropout layers skipped). A
  pre-activation block whose branch ends with a conv (ResNet50V2) gets it on
  that conv's output, before the add. Inverted-residual blocks without a
  residual connection (the first block of a stage) get it after their
  projection BN (a layer named ``*project_bn``), as the PyTorch ``attach`` does
  for every inverted-residual block. A model without residual blocks (a chain of
  layers, e.g. a user's CNN) gets it at the end of every conv block: after each
  maximal run of Conv / BatchNormalization / Activation layers, before the layer
  that follows (pooling, flatten, ...).
- ``"stage"``: after every stage except the last; a stage is a run of
  consecutive blocks with the same output width, and its output is the last
  block's (the add, or the activation directly after it).
- a predicate ``where(name, layer) -> bool``: after every layer it selects.

``init="default"`` (also spelt ``"paper"``) keeps each module's own
initialisation (the PyTorch module's); ``init="identity"`` makes every inserted
layer start as the exact identity: a layer that already is (a zero-initialised
residual scale: GC, GCT, DANet, non-local, SAGAN; checked on a probe) is kept,
any other is wrapped in :class:`IdentityInit`, ``y = x + alpha (m(x) - x)`` with
``alpha`` a learnable scalar starting at 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from ..models.attach import PerStage
from .base import AttentionLayer
from .registry import create_attention

_UNIT = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
         keras.layers.SeparableConv2D, keras.layers.BatchNormalization, keras.layers.Activation,
         keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ZeroPadding2D)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
         keras.layers.SeparableConv2D)


@keras.saving.register_keras_serializable(package="convattn")
class IdentityInit(keras.layers.Layer):
    """``y = x + alpha * (m(x) - x)`` with a learnable scalar ``alpha`` starting at 0."""

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros")
        self.built = True

    def call(self, x, training=None):
        return x + self.alpha * (self.layer(x, training=training) - x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


# --------------------------------------------------------------------------- the graph


class _Graph:
    """Producers, consumers and depths of the layers of a functional model (first call of each)."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
        self.parents: dict[str, list[str]] = {}
        self.children: dict[str, list[str]] = {lay.name: [] for lay in model.layers}
        for lay in self.layers:
            node = lay._inbound_nodes[0]
            names = []
            for t in node.input_tensors:
                op = t._keras_history.operation
                names.append(op.name)
            self.parents[lay.name] = names
            for n in names:
                self.children.setdefault(n, []).append(lay.name)
        self.by_name = {lay.name: lay for lay in model.layers}
        self.depth: dict[str, int] = {}
        for lay in model.layers:  # model.layers is topologically sorted
            ps = self.parents.get(lay.name, [])
            self.depth[lay.name] = 1 + max((self.depth.get(p, 0) for p in ps), default=0)

    def single_parent(self, name: str) -> str | None:
        ps = self.parents.get(name, [])
        return ps[0] if len(ps) == 1 else None


def _channels(layer: keras.layers.Layer) -> tuple[int, int]:
    shape = layer.output.shape
    return int(shape[-1]), len(shape) - 2


def _block_sites(g: _Graph) -> list[tuple[str, str]]:
    """[(site layer, block output layer)] in model order."""
    sites: dict[str, str] = {}
    for lay in g.layers:
        if isinstance(lay, keras.layers.Add) and len(g.parents[lay.name]) == 2:
            branch = max(g.parents[lay.name], key=lambda n: g.depth[n])
            end = branch
            while isinstance(g.by_name[end], keras.layers.Dropout) and g.single_parent(end):
                end = g.single_parent(end)
            kids = g.children.get(lay.name, [])
            out = kids[0] if len(kids) == 1 and isinstance(g.by_name[kids[0]], (keras.layers.Activation, keras.layers.ReLU)) else lay.name
            sites[end] = out
    for lay in g.layers:
        if isinstance(lay, keras.layers.BatchNormalization) and lay.name.lower().endswith("project_bn"):
            if lay.name not in sites:
                # an inverted-residual block without a residual connection
                out = lay.name
                while len(g.children.get(out, [])) == 1 and isinstance(g.by_name[g.children[out][0]], keras.layers.Dropout):
                    out = g.children[out][0]
                sites[lay.name] = out
    order = {lay.name: i for i, lay in enumerate(g.model.layers)}
    return sorted(sites.items(), key=lambda kv: order[kv[0]])


def _plain_sites(g: _Graph) -> list[tuple[str, str]]:
    """Ends of the runs of conv / norm / activation layers of a chain."""
    sites = []
    run: list[str] = []
    for lay in g.layers + [None]:
        if lay is not None and isinstance(lay, _UNIT):
            run.append(lay.name)
            continue
        if run and any(isinstance(g.by_name[n], _CONV) for n in run):
            sites.append((run[-1], run[-1]))
        run = []
    return sites


def _plan(model: keras.Model, where) -> tuple[list[tuple[str, int | None]], int]:
    g = _Graph(model)
    if callable(where) and not isinstance(where, str):
        names = [lay.name for lay in g.layers if where(lay.name, lay)]
        if not names:
            raise ValueError("attach: the where= predicate selected no layer")
        return [(n, None) for n in names], 0
    if where not in ("block", "stage"):
        raise ValueError(f"attach: where must be 'block', 'stage' or a predicate (name, layer) -> bool; got {where!r}")
    blocks = _block_sites(g) or _plain_sites(g)
    if not blocks:
        raise ValueError(
            f"attach: found no residual blocks or conv blocks in {model.name!r}; "
            "use where=<predicate> to choose the layers yourself"
        )
    stages: list[list[tuple[str, str]]] = []
    for b in blocks:
        if stages and _channels(g.by_name[stages[-1][-1][1]])[0] == _channels(g.by_name[b[1]])[0]:
            stages[-1].append(b)
        else:
            stages.append([b])
    if where == "block":
        return [(site, i) for i, st in enumerate(stages) for site, _ in st], len(stages)
    if len(stages) < 2:
        raise ValueError(f"attach: where='stage' inserts after every stage but the last, and {model.name!r} has a single stage")
    return [(st[-1][1], i) for i, st in enumerate(stages[:-1])], len(stages)


def insertion_points(model: keras.Model, where="block") -> list[dict[str, Any]]:
    """Where :func:`attach` would insert layers: ``{"layer", "channels", "dims", "stage"}`` each."""
    _check_model(model)
    model = _functional(model)
    sites, _ = _plan(model, where)
    out = []
    for name, stage in sites:
        c, nd = _channels(model.get_layer(name))
        out.append({"layer": name, "channels": c, "dims": nd, "stage": stage})
    return out


def _check_model(model) -> None:
    if not isinstance(model, keras.Model) or not hasattr(model, "_inbound_nodes") or not getattr(model, "_functional", True):
        raise ValueError(f"attach: model must be a functional or Sequential keras.Model, got {type(model).__name__}")
    try:
        model.inputs  # noqa: B018  (a subclassed model has none)
    except AttributeError as e:
        raise ValueError(f"attach: model must be a functional or Sequential keras.Model, got {type(model).__name__}") from e


def _functional(model: keras.Model) -> keras.Model:
    """A Sequential model as the functional model of the same layers (shared); others as they are."""
    if not isinstance(model, keras.Sequential):
        return model
    inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    h = inputs
    for layer in model.layers:
        h = layer(h)
    return keras.Model(inputs, h, name=model.name)


def _is_identity(layer: keras.layers.Layer, channels: int, dims: int) -> bool:
    x = np.random.default_rng(0).standard_normal((2,) + (8,) * dims + (channels,)).astype("float32")
    try:
        y = ops.convert_to_numpy(layer(x, training=False))
    except Exception:  # cannot run on the probe: wrap it to be safe
        return False
    return y.shape == x.shape and bool(np.array_equal(y, x))


def attach(
    model: keras.Model,
    attention: str | Callable[..., keras.layers.Layer],
    where: str | Callable[[str, keras.layers.Layer], bool] = "block",
    init: str = "default",
    **options: Any,
) -> keras.Model:
    """A new functional model: ``model``'s layers (shared, weights kept) with attention inserted.

    Args:
        model: a functional or Sequential ``keras.Model`` (``keras.applications``
            ResNet50, ResNet50V2, MobileNetV2, EfficientNetB0, or a user's CNN).
        attention: a registry key (see :func:`convattn.keras.list_attention`) or a
            factory ``callable(**options) -> keras.layers.Layer``.
        where: ``"block"``, ``"stage"`` or a predicate ``(name, layer) -> bool``.
        init: ``"default"`` / ``"paper"`` (the module's own init) or ``"identity"``.
        **options: the attention's options; :func:`convattn.models.per_stage`
            values are resolved per stage.
    """
    _check_model(model)
    model = _functional(model)
    if init not in ("default", "paper", "identity"):
        raise ValueError(f"attach: init must be 'default' (or 'paper') or 'identity', got {init!r}")
    if isinstance(attention, str):
        key = attention
        make = lambda **o: create_attention(key, **o)  # noqa: E731
        make()  # an unknown key is an error before anything is built
    elif callable(attention):
        make = attention
    else:
        raise ValueError(f"attach: attention must be a registry key or a factory callable, got {attention!r}")
    sites, n_stages = _plan(model, where)
    made: dict[str, keras.layers.Layer] = {}
    for order, (name, stage) in enumerate(sites):
        opts = {
            k: v.pick(k, stage, order, n_stages, len(sites), where) if isinstance(v, PerStage) else v
            for k, v in options.items()
        }
        c, nd = _channels(model.get_layer(name))
        layer = make(**opts)
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"attach: the attention factory returned {type(layer).__name__}, not a keras Layer")
        layer.build((None,) + (None,) * nd + (c,)) if isinstance(layer, AttentionLayer) else None
        if init == "identity" and not _is_identity(layer, c, nd):
            layer = IdentityInit(layer, name=f"{name}_attention_init")
        made[name] = layer

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        extra = made.get(layer.name)
        return extra(out) if extra is not None else out

    return keras.models.clone_model(model, clone_function=lambda lay: lay, call_function=call_function)
