"""Latency / FLOOR of a few modules in eval and train, timed interleaved, as JSON.

A quick check for an A/B: run it once per version of the code (alternating, on a
quiet machine) and compare the ratios; FLOOR = ``x * x.mean(spatial)`` is timed
in the same rounds as each module, so slow drift cancels.

    python benchmarks/floor_ratios.py OUT.json [--cases eca:8x256x28x28,triplet:32x64x56x56]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import convattn

DEFAULT = ("eca:8x256x28x28,triplet:32x64x56x56,cbam_spatial:32x64x56x56,coord:32x64x56x56,"
           "cbam_channel:32x64x56x56,sse:8x256x28x28")


def main(argv=None) -> int:
    from convattn.bench.measure import benchmark_timer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--cases", default=DEFAULT)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    Timer = benchmark_timer()
    torch.set_num_threads(2)

    def median_s(stmt: str, g: dict) -> float:
        return Timer(stmt, globals=g, num_threads=2).blocked_autorange(min_run_time=0.15).median

    def floor(v):
        return v * v.mean((2, 3), keepdim=True)

    out = {}
    for case in args.cases.split(","):
        key, shape_text = case.split(":")
        shape = tuple(int(s) for s in shape_text.split("x"))
        x = torch.randn(shape)
        m = convattn.create_attention(key, shape[1]).eval()
        mt = convattn.create_attention(key, shape[1]).train()
        xg = x.clone().requires_grad_()
        ev, tr = [], []
        for _ in range(args.rounds):
            with torch.no_grad():
                ev.append(median_s("m(x)", {"m": m, "x": x}) / median_s("f(x)", {"f": floor, "x": x}))
            tr.append(median_s("m(x).sum().backward()", {"m": mt, "x": xg})
                      / median_s("f(x).sum().backward()", {"f": floor, "x": xg}))
        out[case] = {"eval_vs_floor": statistics.median(ev), "train_vs_floor": statistics.median(tr)}
        print(f"{case}: eval {out[case]['eval_vs_floor']:.2f}x, train {out[case]['train_vs_floor']:.2f}x FLOOR")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
