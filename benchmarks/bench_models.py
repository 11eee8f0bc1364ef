"""Whole-model cost of attention: ResNet-50 with cbam / se / eca vs plain ResNet-50.

The speed target: eval, batch 8, 224x224, 2 threads, attention at "block";
latency ratio to the plain model <= 1.03x for cbam and <= 1.02x for se and eca.
timm's resnet50 with its own CBAM (and SE, ECA) is the peer line, as a ratio to
timm's plain resnet50. All variants are timed interleaved (A B C ... A B C ...)
so that drift of the shared machine cancels; medians of per-round ratios with
their interquartile spread. Our models are timed after ``convattn.fast.fuse_for_inference``
(each gate writes over its norm's output), the step a deployment takes. Writes
benchmarks/results/models.md and models.json.

    python benchmarks/bench_models.py            # ~5-10 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convattn.bench import parse_names, run_models
from convattn.bench.report import markdown

#: latency / plain ResNet-50 targets
TARGETS = {"cbam": 1.03, "se": 1.02, "eca": 1.02}
RESULTS = Path(__file__).resolve().parent / "results"


def verdict(row: dict) -> str:
    if row.get("source") != "convattn" or row.get("attention") not in TARGETS or row.get("eval_vs_plain") is None:
        return ""
    return "pass" if row["eval_vs_plain"] <= TARGETS[row["attention"]] else "FAIL"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--attention", default="cbam,se,eca")
    p.add_argument("--timm-attention", default="cbam,se,eca", help="timm peer lines ('' for none)")
    p.add_argument("--shape", default="8x3x224x224")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-pin-allocator", action="store_true",
                   help="leave glibc malloc at its defaults (freed blocks returned to the OS)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    timm_att = parse_names(args.timm_attention)
    result = run_models(args.model, parse_names(args.attention), shape=args.shape, threads=args.threads,
                        rounds=args.rounds, block_s=0.2, max_s=1e9, peers=bool(timm_att), timm_attentions=timm_att,
                        memory=not args.no_memory, pin_allocator=not args.no_pin_allocator,
                        progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    for row in result["rows"]:
        if row["source"] == "convattn" and row.get("attention") in TARGETS:
            row["target_vs_plain"] = TARGETS[row["attention"]]
            row["eval_pass"] = verdict(row) == "pass"
    extra = [
        ("target", lambda r: f"<= {r['target_vs_plain']}x" if r.get("target_vs_plain") else ""),
        ("pass", verdict),
    ]
    note = ("Targets: eval latency / plain <= 1.03x for cbam, <= 1.02x for se and eca (timm's CBAM: "
            "1.088x when the targets were set). timm lines are ratios to timm's plain resnet50, timed in the same "
            "rounds. The machine is shared with other jobs (load average above): per-round ratios cancel slow "
            "drift, [q1-q3] is their spread.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "models.md").write_text(markdown(result, f"{args.model} with attention vs plain", note, extra))
    print(f"wrote {out / 'models.md'} and {out / 'models.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
