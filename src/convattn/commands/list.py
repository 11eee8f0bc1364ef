"""``convattn list``: the registered modules by family."""

from __future__ import annotations

import argparse
import json

HELP = ("list the registered attention modules by family (paper, year, params at C=256, dims; a dash where a "
        "module cannot be built at --channels)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=["channel", "spatial", "combined", "self"], help="only this family")
    p.add_argument("--channels", type=int, default=256, help="channel count for the params column (default 256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def rows(family: str | None, channels: int) -> list[dict]:
    from ..registry import create_attention, get_spec, list_attention

    out = []
    for name in list_attention(family):
        spec = get_spec(name)
        opts = {"dims": 2} if spec.dims_at_init else {}
        try:
            params = sum(p.numel() for p in create_attention(name, channels, **opts).parameters())
        except (TypeError, ValueError, RuntimeError):
            params = None  # the module cannot be built at this width
        out.append(
            {
                "name": name,
                "family": spec.family,
                "paper": spec.paper,
                "venue": spec.venue,
                "year": spec.year,
                "params": params,
                "dims": list(spec.dims),
            }
        )
    return sorted(out, key=lambda r: (["channel", "spatial", "combined", "self"].index(r["family"]), r["name"]))


def run(args: argparse.Namespace) -> int:
    if args.channels < 1:
        raise ValueError(f"--channels must be >= 1, got {args.channels}")
    data = rows(args.family, args.channels)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"convattn modules (params at C={args.channels})")
    for col, kw in [("family", {}), ("name", {"style": "bold"}), ("paper", {}), ("venue", {}),
                    ("year", {"justify": "right"}), ("params", {"justify": "right"}), ("dims", {})]:
        table.add_column(col, **kw)
    last = None
    for r in data:
        if last is not None and r["family"] != last:
            table.add_section()
        table.add_row(
            r["family"] if r["family"] != last else "",
            r["name"], r["paper"], r["venue"], str(r["year"]), "–" if r["params"] is None else f"{r['params']:,}",
            ", ".join(f"{d}D" for d in r["dims"]),
        )
        last = r["family"]
    Console().print(table)
    return 0
