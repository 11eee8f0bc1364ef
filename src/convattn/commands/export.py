"""``convattn export``: write a model with attention as ONNX or TorchScript, verified.

``convattn export resnet50 --attention cbam --format onnx`` builds
``create_model("resnet50", attention="cbam")``, exports it (ONNX: dynamic batch
and spatial size, opset 18 by default) and checks the file: onnxruntime (or the
loaded TorchScript module) must match PyTorch within the tolerance at the export
size and at a second, different size. An existing file is kept unless --force.
"""

from __future__ import annotations

import argparse

HELP = "export a model with attention to ONNX or TorchScript and verify the file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="backbone name (see convattn.models.list_models), e.g. resnet50 or resnet20")
    p.add_argument("--attention", help="registry key of the attention to insert (default: none, the plain model)")
    p.add_argument("--where", default="block", help="placement passed to create_model (default block)")
    p.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    p.add_argument("--out", help="output file (default <model>-<attention>.onnx / .pt in the current folder)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--size", type=int, help="input height and width used to export (default 32 for the CIFAR "
                   "ResNets, 64 otherwise; the ONNX file accepts any size)")
    p.add_argument("--batch", type=int, default=2, help="batch size used to export (default 2; ONNX batch is dynamic)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 17 up to the newest the installed onnx "
                   "supports (default 18)")
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance (default 1e-4)")


def _positive(name: str, v) -> None:
    if v is not None and v < 1:
        raise ValueError(f"--{name} must be >= 1, got {v}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..engine.options import MAX_IMAGE_SIZE, check_fits
    from ..export import ExportError, check_format, export_model, opset_range
    from ..models import create_model, list_models
    from ..registry import get_spec
    from ..runs.folders import check_writable

    fmt = check_format(args.format)
    if args.model not in list_models():
        import difflib

        close = difflib.get_close_matches(args.model, list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown model {args.model!r}; {hint}valid: {', '.join(list_models())}")
    if args.attention is not None:
        get_spec(args.attention)
    for name in ("size", "batch", "in_chans", "num_classes"):
        _positive(name.replace("_", "-"), getattr(args, name))
    lo, hi = opset_range()
    if fmt == "onnx" and not lo <= args.opset <= hi:
        raise ValueError(f"--opset {args.opset} is not supported by the installed exporter; valid: {lo}..{hi}")
    if args.size is not None and args.size > MAX_IMAGE_SIZE:
        raise ValueError(f"--size {args.size} is larger than the limit of {MAX_IMAGE_SIZE} pixels; "
                         f"valid: 1..{MAX_IMAGE_SIZE}")
    if not args.atol > 0:
        raise ValueError(f"--atol must be > 0, got {args.atol}")
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    out = Path(args.out) if args.out else Path(f"{args.model}-{args.attention or 'plain'}{suffix}")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to overwrite it")
    check_writable(out.parent, "--out")
    cifar = args.model.startswith("resnet") and args.model[6:].isdigit() and int(args.model[6:]) < 18
    size = args.size or (32 if cifar else 64)
    kw = {"in_chans": args.in_chans}
    if args.num_classes:
        kw["num_classes"] = args.num_classes
    model = create_model(args.model, attention=args.attention, where=args.where, **kw).eval()
    g = torch.Generator().manual_seed(0)
    check_fits(f"--batch {args.batch} x --in-chans {args.in_chans} x --size {size}",
               4 * args.batch * args.in_chans * size * size * 64)  # the input and a model's activations
    x = torch.randn(args.batch, args.in_chans, size, size, generator=g)
    extra = {"opset": args.opset, "atol": args.atol} if fmt == "onnx" else {"atol": args.atol}
    try:
        report = export_model(model, x, out, fmt, force=args.force, **extra)
    except ExportError as e:
        raise ValueError(f"{e}; {out} was not written") from None
    shapes = " and ".join("x".join(map(str, s)) for s in report.input_shapes)
    diffs = ", ".join(f"{d:.2e}" for d in report.max_abs_diff)
    what = "onnxruntime" if fmt == "onnx" else f"TorchScript ({report.method})"
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); {what} matches PyTorch at {shapes} "
          f"(max abs diff {diffs} <= {args.atol:g})")
    return 0
