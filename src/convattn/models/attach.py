"""Put attention into an existing CNN: :func:`attach` and :func:`detach`.

``attach(model, "se")`` finds the blocks of ``model`` and inserts one attention
module per insertion point, in place; ``detach(model)`` takes them out again.

Placements (``where=``):

- ``"block"``: inside every residual / inverted-residual block, on the output of
  the block's last norm, before the residual add (the SE, CBAM and ECA
  placement). For ConvNeXt blocks: on the output of the block's branch (after
  the last pointwise layer, back in channels-first layout), before the layer
  scale. For plain conv nets (VGG, a user's ``nn.Sequential``): at the end of
  every conv block, i.e. after each maximal run of conv / norm / activation
  layers, before the pooling layer that follows it.
  A model may also list its blocks itself: a class attribute
  ``attention_blocks`` (paths of submodules, e.g. ``("block1", "block2",
  "block3")`` in the 1-D FCN) puts the attention on each listed module's output,
  each block a stage of its own.
- ``"stage"``: after every stage except the last (the BAM placement: 3 modules in
  a ResNet-50, after ``layer1``-``layer3``). A stage is a run of consecutive
  blocks in the same container with the same output width (ResNet ``layerN``,
  EfficientNet ``features.N``, the 7 bottleneck groups of MobileNetV2, ...); in
  plain conv nets every conv block is a stage.
- a predicate ``where(path, module) -> bool``: after every module for which it
  returns True (channels come from that module, or from the last norm/conv in
  it, or from the norm/conv before it in its ``nn.Sequential`` parent).

How the module is inserted: it becomes a child named ``attention`` of the module
whose output it transforms (``layer1.0.bn3.attention``, ``layer1.attention``).
When that module is a plain ``nn.Sequential`` the child simply runs last;
otherwise a forward hook applies it to the module's output. No existing module
is renamed or replaced, so every original parameter and buffer keeps its name
(a torchvision / timm state dict still loads with ``strict=False``, the only
missing keys are the attention's), and :func:`detach` restores the exact original
module tree. The hooks run under ``torch.compile``, ``torch.jit.trace`` and
``torch.onnx.export``; ``torch.jit.script`` and ``torch.fx`` tracing do not see
them.

For inference, :func:`convattn.fast.fuse_for_inference` replaces each norm and the
gate attached to it by one module that writes the gate's result over the norm's
fresh output (an explicit step, like conv-BN fusion; :func:`detach` undoes it too).

Options: ``**options`` go to the attention's constructor. Wrap a value in
:func:`per_stage` to give one value per stage, e.g. ECA's official ResNet-50
kernels ``attach(m, "eca", kernel_size=per_stage(3, 5, 5, 7))``.

``init="identity"`` makes every inserted module start as the exact identity, so
that attaching to a trained model leaves its outputs unchanged until fine-tuning
moves them. In order of preference:

1. a module that defines ``identity_init()`` is asked to make itself the identity;
2. a module that already is the exact identity at its own init (a zero-initialised
   residual scale: GC, GCT, DANet's PAM/CAM, non-local, SAGAN; checked on a random
   probe input) is left as it is;
3. every other module is wrapped in :class:`IdentityInit`,
   ``y = x + alpha * (m(x) - x)`` with a learnable scalar ``alpha`` initialised
   to 0. At the first step only ``alpha`` receives a gradient (the module's own
   gradients are multiplied by ``alpha = 0``); from the second step on both learn
   (the ReZero / zero-init-residual recipe).

Step 2 matters: wrapping a module that is already the identity through a zero
scale ``gamma`` would give ``y = x + alpha * gamma * f(x)`` with both factors 0,
a saddle where neither ``alpha`` nor ``gamma`` ever receives a gradient.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import create_attention, get_spec

ATTR = "attention"
_MARK = "_convattn_inserted"
_HOOK = "_convattn_hook"  # the inserted module's handle of the forward hook that applies it

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_CONV_DIMS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2,
              nn.ConvTranspose3d: 3}
_NORM_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3, nn.InstanceNorm1d: 1,
              nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}

Where = str | Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class InsertionPoint:
    """One place where :func:`attach` inserted (or would insert) an attention module.

    ``path``: the module whose output is transformed (``"layer1.0.bn3"``);
    ``channels``: its channels; ``stage``: the stage index (None for a predicate
    placement); ``attention_path``: where the inserted module lives.
    """

    path: str
    channels: int
    stage: int | None = None
    attention_path: str = ""


@dataclass(frozen=True)
class PerStage:
    """An option value given per stage; see :func:`per_stage`."""

    values: tuple

    def pick(self, name: str, stage: int | None, order: int, n_stages: int, n_points: int, where: Any) -> Any:
        n = len(self.values)
        if stage is None:
            raise ValueError(f"{name}=per_stage(...) needs where='block' or 'stage' (stages are unknown for a predicate)")
        if n == n_stages:
            return self.values[stage]
        if where == "stage" and n == n_points:
            return self.values[order]
        valid = f"{n_stages}" + (f" (or {n_points}, one per insertion point)" if where == "stage" else "")
        raise ValueError(f"{name}=per_stage(...) has {n} values but this model has {n_stages} stages; give {valid}")


def per_stage(*values: Any) -> PerStage:
    """Mark an option as one value per stage: ``kernel_size=per_stage(3, 5, 5, 7)``.

    With ``where="block"`` the value of a block's stage is used; with
    ``where="stage"`` either one value per stage or one per insertion point.
    """
    if len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = tuple(values[0])
    if not values:
        raise ValueError("per_stage: give at least one value")
    return PerStage(tuple(values))


class IdentityInit(nn.Module):
    """``y = x + alpha * (m(x) - x)`` with a learnable scalar ``alpha`` starting at 0.

    Exactly the identity at initialisation (for finite ``m(x)``), whatever ``m``
    computes; becomes ``m`` when ``alpha`` reaches 1.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * (self.module(x) - x)


# --------------------------------------------------------------------------- discovery


@dataclass
class _Site:
    path: str              # path of the module whose output is transformed
    module: nn.Module
    channels: int
    dims: int
    stage: int | None = None


@dataclass
class _Block:
    path: str              # the block (or, for a plain conv run, its last layer)
    parent: str            # path of the container holding it
    site: _Site            # where "block" placement inserts
    last: nn.Module        # the block module itself (stage placement hooks it)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_frozen_bn(m: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d, timm's FrozenBatchNorm2d (detection backbones):
    # buffers only, no num_features
    rm = m._buffers.get("running_mean")
    return "BatchNorm" in type(m).__name__ and isinstance(rm, torch.Tensor) and rm.dim() == 1


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, _NORMS) or _is_frozen_bn(m)


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd)


def _width_of(m: nn.Module) -> tuple[int, int] | None:
    """(channels, dims) when ``m`` itself is a norm or conv."""
    if _is_frozen_bn(m) and not isinstance(m, _NORMS):
        return m._buffers["running_mean"].numel(), 2
    if _is_norm(m):
        c = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
        dims = next((d for t, d in _NORM_DIMS.items() if isinstance(m, t)), 2)
        return c, dims
    if _is_conv(m):
        dims = next((d for t, d in _CONV_DIMS.items() if isinstance(m, t)), 2)
        return m.out_channels, dims
    return None


def _last_width(modules: Sequence[nn.Module]) -> tuple[int, int] | None:
    """Channels and dims of the last norm or conv among ``modules`` (and their subtrees)."""
    for top in reversed(list(modules)):
        for m in reversed(list(top.modules())):
            w = _width_of(m)
            if w is not None:
                return w
    return None


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ == "torch.nn.modules.activation"


def _is_unit_leaf(m: nn.Module) -> bool:
    return (
        _is_conv(m) or _is_norm(m) or _is_activation(m)
        or isinstance(m, (nn.modules.dropout._DropoutNd, nn.Identity))
    )


def _is_unit(m: nn.Module) -> bool:
    """A conv / norm / activation layer, or a container made only of them (Conv-BN-ReLU)."""
    if _is_unit_leaf(m):
        return True
    kids = list(m.children())
    return bool(kids) and _is_plain_sequential(m) and all(_is_unit(k) for k in kids)


def _residual_target(block: nn.Module) -> tuple[str, nn.Module, tuple[int, int]] | None:
    """The module inside a known residual block whose output gets the attention."""
    d = block._modules
    # ResNet basic / bottleneck blocks (torchvision, timm, ours): after bn3 or bn2.
    if hasattr(block, "downsample") and all(isinstance(d.get(k), nn.Module) for k in ("conv1", "bn1", "conv2", "bn2")):
        name = "bn3" if isinstance(d.get("bn3"), nn.Module) and isinstance(d.get("conv3"), nn.Module) else "bn2"
        w = _width_of(d[name]) or _last_width([d[name]])
        return (name, d[name], w) if w else None
    # ConvNeXt block: after the residual branch (channels-first again), before the layer scale.
    if "layer_scale" in block._parameters and isinstance(d.get("block"), nn.Sequential):
        branch = d["block"]
        conv = next((m for m in branch.modules() if _is_conv(m)), None)
        return ("block", branch, _width_of(conv)) if conv is not None else None
    # Inverted residual blocks (MobileNetV2/V3, EfficientNet MBConv): after the last norm.
    if hasattr(block, "use_res_connect"):
        body = d.get("conv") if isinstance(d.get("conv"), nn.Sequential) else d.get("block")
        if isinstance(body, nn.Sequential):
            prefix = "conv" if body is d.get("conv") else "block"
            for rel, m in reversed(list(body.named_modules())):
                if _is_norm(m):
                    return _join(prefix, rel), m, _width_of(m)
        return None
    # timm's mobile blocks: InvertedResidual (bn3 after conv_pwl), DepthwiseSeparableConv (bn2 after conv_pw).
    if isinstance(d.get("conv_pwl"), nn.Module) and isinstance(d.get("bn3"), nn.Module):
        return "bn3", d["bn3"], _width_of(d["bn3"]) or _last_width([d["conv_pwl"]])
    if isinstance(d.get("conv_dw"), nn.Module) and isinstance(d.get("conv_pw"), nn.Module) and isinstance(
        d.get("bn2"), nn.Module
    ):
        return "bn2", d["bn2"], _width_of(d["bn2"]) or _last_width([d["conv_pw"]])
    return None


def _residual_blocks(model: nn.Module) -> list[_Block]:
    blocks: list[_Block] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = _join(prefix, name)
            t = _residual_target(child)
            if t is None:
                visit(path, child)
                continue
            rel, target, width = t
            if width is None:
                raise ValueError(f"attach: cannot infer the channels of block {path!r} ({type(child).__name__})")
            site = _Site(_join(path, rel), target, width[0], width[1])
            blocks.append(_Block(path, prefix, site, child))

    visit("", model)
    return blocks


def _plain_blocks(model: nn.Module) -> list[_Block]:
    """Conv blocks of a network without residual blocks: runs of conv/norm/act layers."""
    blocks: list[_Block] = []

    def flush(prefix: str, run: list[tuple[str, nn.Module]]) -> None:
        if not any(_is_conv(m) for _, mod in run for m in mod.modules()):
            return
        width = _last_width([m for _, m in run])
        name, last = run[-1]
        path = _join(prefix, name)
        blocks.append(_Block(path, prefix, _Site(path, last, width[0], width[1]), last))

    def visit(prefix: str, module: nn.Module) -> None:
        if _is_plain_sequential(module):
            run: list[tuple[str, nn.Module]] = []
            for name, child in module.named_children():
                if _is_unit(child):
                    run.append((name, child))
                    continue
                if run:
                    flush(prefix, run)
                run = []
                visit(_join(prefix, name), child)
            if run:
                flush(prefix, run)
        else:
            for name, child in module.named_children():
                visit(_join(prefix, name), child)

    visit("", model)
    return blocks


def _stages(blocks: list[_Block], plain: bool) -> list[list[_Block]]:
    stages: list[list[_Block]] = []
    for b in blocks:
        prev = stages[-1][-1] if stages else None
        same = (
            prev is not None and not plain and prev.parent == b.parent and prev.site.channels == b.site.channels
        )
        if same:
            stages[-1].append(b)
        else:
            stages.append([b])
    return stages


def _declared_blocks(model: nn.Module, paths: Sequence[str]) -> list[_Block]:
    """The blocks a model lists in its ``attention_blocks`` attribute (paths of submodules)."""
    blocks = []
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"attach: {type(model).__name__}.attention_blocks names {path!r}, which is not a "
                             "submodule of the model") from None
        width = _last_width([module])
        if width is None:
            raise ValueError(f"attach: cannot infer the channels of block {path!r} ({type(module).__name__})")
        blocks.append(_Block(path, path.rpartition(".")[0], _Site(path, module, width[0], width[1]), module))
    return blocks


def _structure(model: nn.Module) -> tuple[list[list[_Block]], bool]:
    declared = getattr(model, "attention_blocks", None)
    if declared is not None:
        return [[b] for b in _declared_blocks(model, declared)], True
    blocks = _residual_blocks(model)
    plain = not blocks
    if plain:
        blocks = _plain_blocks(model)
    return _stages(blocks, plain), plain


def _stage_site(model: nn.Module, stage: list[_Block], plain: bool) -> _Site:
    last = stage[-1]
    if plain:
        return last.site
    site = last.site
    parent = model.get_submodule(last.parent) if last.parent else model
    if last.parent and _is_plain_sequential(parent):
        kids = list(parent.children())
        members = {id(b.last) for b in stage}
        if kids and kids[-1] is last.last and all(id(k) in members for k in kids):
            return _Site(last.parent, parent, site.channels, site.dims)
    return _Site(last.path, last.last, site.channels, site.dims)


def _predicate_sites(model: nn.Module, where: Callable[[str, nn.Module], bool]) -> list[_Site]:
    sites = []
    parents = {}
    for m in model.modules():
        for name, child in m.named_children():
            parents[id(child)] = (m, name)
    for path, m in model.named_modules():
        if not path or not where(path, m):
            continue
        width = _last_width([m])
        if width is None and id(m) in parents:
            parent, name = parents[id(m)]
            if _is_plain_sequential(parent):
                kids = list(parent.named_children())
                i = [k for k, _ in kids].index(name)
                width = _last_width([c for _, c in kids[:i]])
        if width is None:
            raise ValueError(
                f"attach: cannot infer the channels at {path!r} ({type(m).__name__}): it contains no norm or "
                f"conv layer and no norm/conv precedes it in an nn.Sequential; choose a norm or conv layer "
                f"(or the block containing it), or pass a factory that knows its channels"
            )
        sites.append(_Site(path, m, width[0], width[1]))
    return sites


def _plan(model: nn.Module, where: Where) -> tuple[list[_Site], int]:
    if callable(where) and not isinstance(where, str):
        sites = _predicate_sites(model, where)
        if not sites:
            raise ValueError("attach: the where= predicate selected no module")
        return sites, 0
    if where not in ("block", "stage"):
        raise ValueError(
            f"attach: where must be 'block', 'stage' or a predicate (path, module) -> bool; got {where!r}"
        )
    stages, plain = _structure(model)
    if not stages:
        raise ValueError(
            f"attach: found no supported blocks in {type(model).__name__} (supported: ResNet basic/bottleneck "
            "blocks (torchvision, timm), inverted residuals (MobileNetV2/V3, EfficientNet), ConvNeXt blocks, "
            "and conv blocks (conv/norm/activation runs) inside nn.Sequential containers); "
            "use where=<predicate> to choose the modules yourself"
        )
    sites = []
    if where == "block":
        for i, stage in enumerate(stages):
            for b in stage:
                sites.append(_Site(b.site.path, b.site.module, b.site.channels, b.site.dims, i))
    else:
        if len(stages) < 2:
            raise ValueError(
                f"attach: where='stage' inserts after every stage but the last, and {type(model).__name__} "
                "has a single stage"
            )
        for i, stage in enumerate(stages[:-1]):
            s = _stage_site(model, stage, plain)
            sites.append(_Site(s.path, s.module, s.channels, s.dims, i))
    return sites, len(stages)


# --------------------------------------------------------------------------- building


def _factory(attention: Any) -> Callable[..., nn.Module]:
    if isinstance(attention, str):
        get_spec(attention)  # unknown name: ValueError with suggestions

        def build(channels: int, dims: int, **options: Any) -> nn.Module:
            return create_attention(attention, channels, dims=dims, **options)

        return build
    if isinstance(attention, type):
        if not issubclass(attention, nn.Module):
            raise ValueError(f"attach: attention class {attention.__name__} is not an nn.Module")
        takes_dims = "dims" in inspect.signature(attention.__init__).parameters

        def build_cls(channels: int, dims: int, **options: Any) -> nn.Module:
            return attention(channels, dims=dims, **options) if takes_dims else attention(channels, **options)

        return build_cls
    if callable(attention):

        def build_fn(channels: int, dims: int, **options: Any) -> nn.Module:
            m = attention(channels, **options)
            if not isinstance(m, nn.Module):
                raise ValueError(f"attach: the attention factory returned {type(m).__name__}, not an nn.Module")
            return m

        return build_fn
    raise ValueError(
        f"attach: attention must be a registry name (see convattn.list_attention()), an nn.Module class "
        f"or a factory callable(channels) -> module; got {attention!r}"
    )


def _is_identity(m: nn.Module, channels: int, dims: int) -> bool:
    """True when ``m`` returns its input exactly on a random probe (eval mode, no grad)."""
    p = next(iter(m.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, channels) + (8,) * dims, generator=g, dtype=dtype)
    modes = [(mod, mod.training) for mod in m.modules()]
    m.eval()
    try:
        with torch.no_grad():
            y = m(x.clone())
        return isinstance(y, torch.Tensor) and y.shape == x.shape and torch.equal(y, x)
    except Exception:  # a module that cannot run on the probe: wrap it to be safe
        return False
    finally:
        for mod, training in modes:
            mod.training = training


def _apply_attention(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    # forward hook installed by attach(): the inserted module transforms the output
    return module._modules[ATTR](output)


def _inserted(model: nn.Module) -> list[str]:
    return [
        _join(path, ATTR) for path, m in model.named_modules()
        if getattr(m._modules.get(ATTR), _MARK, False)
    ]


def attach(
    model: nn.Module,
    attention: str | type | Callable[..., nn.Module],
    where: Where = "block",
    init: str = "default",
    **options: Any,
) -> list[InsertionPoint]:
    """Insert attention modules into ``model`` in place; return the insertion points.

    Args:
        model: any supported CNN (see the module docstring).
        attention: a registry name (``"se"``, ``"cbam"``, ...), an ``nn.Module``
            class taking ``(channels, **options)``, or a factory
            ``callable(channels, **options) -> nn.Module``.
        where: ``"block"``, ``"stage"`` or a predicate ``(path, module) -> bool``.
        init: ``"default"`` (the module's own init) or ``"identity"`` (exact
            identity at insertion; see :class:`IdentityInit`).
        **options: constructor options of the attention; :func:`per_stage`
            values are resolved per stage.

    Raises:
        ValueError: unknown attention or placement, a model with no supported
            blocks, channels that cannot be inferred (the message names the
            module path), or a model that already has attention attached.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"attach: model must be an nn.Module, got {type(model).__name__}")
    if init not in ("default", "identity"):
        raise ValueError(f"attach: init must be 'default' or 'identity', got {init!r}")
    done = _inserted(model)
    if done:
        raise ValueError(
            f"attach: {type(model).__name__} already has {len(done)} attention module(s) attached "
            f"(first at {done[0]!r}); call detach(model) first"
        )
    build = _factory(attention)
    sites, n_stages = _plan(model, where)

    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    for s in sites:
        if counts.get(id(s.module), 0) > 1:
            raise ValueError(f"attach: {s.path!r} is used at several places in the model; cannot attach after it")
        if ATTR in s.module._modules or hasattr(s.module, ATTR):
            raise ValueError(f"attach: {s.path!r} already has an attribute named {ATTR!r}")
    if len({id(s.module) for s in sites}) != len(sites):
        raise ValueError("attach: the placement selected the same module twice")

    made: list[nn.Module] = []
    for order, s in enumerate(sites):
        opts = {
            k: v.pick(k, s.stage, order, n_stages, len(sites), where) if isinstance(v, PerStage) else v
            for k, v in options.items()
        }
        m = build(s.channels, opts.pop("dims", s.dims), **opts)
        if any(m is o for o in made):
            raise ValueError("attach: the attention factory returned the same module twice; return a new one per call")
        if init == "identity":
            if callable(getattr(m, "identity_init", None)):
                m.identity_init()
            elif not _is_identity(m, s.channels, s.dims):
                m = IdentityInit(m)
        made.append(m)

    ref = next((t for t in model.parameters()), None)
    points = []
    for s, m in zip(sites, made, strict=True):
        if ref is not None:
            m.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        m.train(s.module.training)  # an eval-mode model gets eval-mode attention
        setattr(m, _MARK, True)
        s.module.add_module(ATTR, m)
        if not _is_plain_sequential(s.module):
            setattr(m, _HOOK, s.module.register_forward_hook(_apply_attention))
        points.append(InsertionPoint(s.path, s.channels, s.stage, _join(s.path, ATTR)))
    return points


def insertion_points(model: nn.Module, where: Where = "block") -> list[InsertionPoint]:
    """Where :func:`attach` would insert modules, without changing ``model``."""
    sites, _ = _plan(model, where)
    return [InsertionPoint(s.path, s.channels, s.stage, _join(s.path, ATTR)) for s in sites]


def attached(model: nn.Module) -> list[str]:
    """Paths of the modules that :func:`attach` inserted into ``model``."""
    return _inserted(model)


def detach(model: nn.Module) -> list[str]:
    """Remove every module :func:`attach` inserted; return their paths.

    The module tree, parameter names and outputs are the original ones again.
    """
    from ..fast.fusion import unfuse

    unfuse(model)
    removed = []
    for path, m in list(model.named_modules()):
        child = m._modules.get(ATTR)
        if not getattr(child, _MARK, False):
            continue
        del m._modules[ATTR]
        handle = child.__dict__.pop(_HOOK, None)
        if handle is not None:
            handle.remove()
        removed.append(_join(path, ATTR))
    if not removed:
        raise ValueError(f"detach: {type(model).__name__} has no attention attached by convattn's attach()")
    return removed
