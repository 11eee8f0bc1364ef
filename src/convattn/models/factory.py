"""``create_model``: built-in backbones with any registered attention.

CIFAR-style ResNets (``resnet8/20/32/56``, small images) are defined in
:mod:`convattn.models.cifar_resnet`, the 1-D time-series FCN and ResNet
(``fcn1d``, ``resnet1d``) in :mod:`convattn.models.tsc`; the ImageNet-style families come from
torchvision, always built with ``weights=None`` (nothing is downloaded; use
:func:`convattn.models.load_backbone_weights` with a local file). Attention is
inserted with :func:`convattn.models.attach`.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from .attach import Where, attach
from .cifar_resnet import CIFAR_DEPTHS, CifarResNet
from .pairing import separate_rng
from .tsc import TSC_MODELS

TORCHVISION_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "vgg11_bn",
    "vgg16_bn",
    "convnext_tiny",
)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: the CIFAR ResNets, the time-series nets, then torchvision's."""
    return list(CIFAR_DEPTHS) + list(TSC_MODELS) + list(TORCHVISION_MODELS)


def _positive_int(owner: str, what: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {v!r}")
    return v


def _replace_stem(model: nn.Module, in_chans: int) -> None:
    """Swap the first conv for one with ``in_chans`` inputs (same shape otherwise)."""
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(
                in_chans, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                bias=m.bias is not None, padding_mode=m.padding_mode,
            )
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, name, new)
            return
    raise ValueError(f"create_model: no stem conv found in {type(model).__name__}")


def create_model(
    name: str,
    attention: Any = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    where: Where = "block",
    init: str = "default",
    **options: Any,
) -> nn.Module:
    """Build backbone ``name`` with ``attention`` inserted at ``where``.

    Args:
        name: one of :func:`list_models`.
        attention: None (plain backbone), a registry name, a class or a factory
            (see :func:`convattn.models.attach`).
        num_classes: classifier outputs (default 10 for the CIFAR ResNets, 2 for
            the time-series nets, 1000 for the torchvision models).
        in_chans: input channels; for torchvision models a value other than 3
            replaces the stem conv.
        where, init, **options: as in :func:`convattn.models.attach`.

    The attention's weights come from a random stream of their own
    (:func:`convattn.models.pairing.separate_rng`): under the same seed,
    every backbone layer starts with the same weights with or without attention.
    """
    if not isinstance(name, str) or name not in list_models():
        valid = list_models()
        close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"create_model: unknown model {name!r}; {hint}valid: {', '.join(valid)}")
    _positive_int("create_model", "in_chans", in_chans)
    if name in CIFAR_DEPTHS:
        num_classes = 10 if num_classes is None else _positive_int("create_model", "num_classes", num_classes)
        model: nn.Module = CifarResNet(CIFAR_DEPTHS[name], num_classes=num_classes, in_chans=in_chans)
    elif name in TSC_MODELS:
        num_classes = 2 if num_classes is None else _positive_int("create_model", "num_classes", num_classes)
        model = TSC_MODELS[name](in_chans=in_chans, num_classes=num_classes)
    else:
        num_classes = 1000 if num_classes is None else _positive_int("create_model", "num_classes", num_classes)
        import torchvision.models as tvm  # heavy: imported only when needed

        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        if in_chans != 3:
            _replace_stem(model, in_chans)
    if attention is not None:
        with separate_rng():  # the backbone's weights do not depend on the attention
            attach(model, attention, where=where, init=init, **options)
    elif options or init != "default":
        raise ValueError(
            f"create_model: attention options {sorted(options) or [f'init={init!r}']} given without attention=..."
        )
    return model
