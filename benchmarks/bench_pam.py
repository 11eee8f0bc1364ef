"""Benchmark: DANet position attention (``pam``) against the naive batched-matmul version.

Configurations: eval forward and train forward+backward, B=2, C in {256, 512},
H=W in {16, 32, 48, 64}; plus one eval forward at 128x128, B=1, C=256 (ours
only: the naive version would hold two 1 GiB score matrices).

- Peak memory: each (implementation, configuration) in a fresh subprocess; a
  tiny warm-up call (4x4), then ``5 > /proc/self/clear_refs``, then VmHWM minus
  VmRSS from ``/proc/self/status`` around one full-size call (DESIGN.md). Ours is
  measured ``--memory-repeats`` times (3; each in its own fresh process), all
  reported, and the ratio taken from the largest.
- Latency: one fresh subprocess per configuration timing both implementations
  interleaved (naive, ours, naive, ours, ...) with ``torch.utils.benchmark``
  (num_threads=2); the median of each is reported and the ratio ours / naive.
- The naive version is the official code's structure (Conv2d projections,
  ``bmm`` -> softmax -> ``bmm`` with the full N x N matrix), given the same
  weights as ours; the outputs are compared as a sanity check.

Writes benchmarks/results/pam.md and benchmarks/results/pam.json (or into ``--out``).

Usage: python benchmarks/bench_pam.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = (16, 32, 48, 64)
CHANNELS = (256, 512)
MODES = ("eval", "train")


def _build(impl: str, channels: int):
    import torch
    from torch import nn

    from convattn import create_attention

    torch.manual_seed(0)
    ours = create_attention("pam", channels)
    with torch.no_grad():
        ours.gamma.fill_(0.5)  # a non-trivial output (gamma = 0 at init)

    if impl == "ours":
        return ours

    class NaivePAM(nn.Module):
        """The official code's structure: full N x N energy and attention."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.query_conv = nn.Conv2d(c, c // 8, 1)
            self.key_conv = nn.Conv2d(c, c // 8, 1, bias=False)
            self.value_conv = nn.Conv2d(c, c, 1)
            self.gamma = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            b, c, h, w = x.shape
            q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
            k = self.key_conv(x).view(b, -1, h * w)
            energy = torch.bmm(q, k)
            attn = torch.softmax(energy, dim=-1)
            v = self.value_conv(x).view(b, -1, h * w)
            out = torch.bmm(v, attn.permute(0, 2, 1)).view(b, c, h, w)
            return self.gamma * out + x

    naive = NaivePAM(channels)
    with torch.no_grad():
        for name in ("query_conv", "key_conv", "value_conv"):
            getattr(naive, name).weight.copy_(getattr(ours, name).weight.unsqueeze(-1))
            if getattr(ours, name).bias is not None:
                getattr(naive, name).bias.copy_(getattr(ours, name).bias)
        naive.gamma.copy_(ours.gamma)
    return naive


def _step(model, x, mode: str):
    import torch

    if mode == "eval":
        with torch.no_grad():
            return model(x)
    y = model(x)
    y.sum().backward()
    return y


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(impl: str, mode: str, channels: int, size: int, batch: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(2)
    model = _build(impl, channels).train(mode == "train")
    small = torch.randn(batch, channels, 4, 4, requires_grad=mode == "train")
    _step(model, small, mode)
    model.zero_grad(set_to_none=True)
    x = torch.randn(batch, channels, size, size, requires_grad=mode == "train")
    del small
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    y = _step(model, x, mode)
    peak = _status_kib("VmHWM")
    del y
    return {"peak_mib": (peak - before) / 1024}


def child_latency(mode: str, channels: int, size: int, batch: int, min_run_time: float, min_rounds: int) -> dict:
    import torch

    from convattn.bench.measure import benchmark_timer

    Timer = benchmark_timer()
    torch.set_num_threads(2)
    models = {impl: _build(impl, channels).train(mode == "train") for impl in ("naive", "ours")}
    x = torch.randn(batch, channels, size, size, requires_grad=mode == "train")
    with torch.no_grad():
        diff = (models["ours"](x) - models["naive"](x)).abs().max().item()
    times: dict[str, list[float]] = {"naive": [], "ours": []}
    deadline = time.perf_counter() + 2 * min_run_time
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline and rounds < 50):
        for impl in ("naive", "ours"):
            t = Timer(
                "step(m, x, mode)",
                globals={"step": _step, "m": models[impl], "x": x, "mode": mode},
                num_threads=2,
            ).timeit(1)
            times[impl].append(t.median)
        rounds += 1
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "naive_ms": med["naive"] * 1e3,
        "ours_ms": med["ours"] * 1e3,
        "rounds": rounds,
        "max_abs_diff": diff,
    }


def _run_child(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only H=W in {16, 64}, C=256 (a smoke run)")
    p.add_argument("--min-run-time", type=float, default=1.0, help="keep timing rounds for 2x this")
    p.add_argument("--min-rounds", type=int, default=3, help="interleaved (naive, ours) rounds at least")
    p.add_argument("--memory-repeats", type=int, default=3, help="fresh-process peak measurements of ours")
    p.add_argument("--child", nargs="+")
    p.add_argument("--markdown-only", action="store_true", help="rewrite pam.md from pam.json (no measurement)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for pam.md and pam.json")
    p.add_argument("--no-latency", action="store_true", help="peak memory only (unaffected by machine load)")
    a = p.parse_args()

    if a.child:
        kind, *rest = a.child
        if kind == "memory":
            impl, mode, c, s, b = rest
            res = child_memory(impl, mode, int(c), int(s), int(b))
        else:
            mode, c, s, b, mrt, rounds = rest
            res = child_latency(mode, int(c), int(s), int(b), float(mrt), int(rounds))
        print(json.dumps(res))
        return

    if a.markdown_only:
        saved = json.loads((a.out / "pam.json").read_text())
        (a.out / "pam.md").write_text(_markdown(saved["meta"], saved["rows"], saved["large"]))
        return

    sizes = (16, 64) if a.quick else SIZES
    channels = (256,) if a.quick else CHANNELS
    rows = []
    load_start = os.getloadavg()
    t0 = time.time()
    for mode in MODES:
        for c in channels:
            for s in sizes:
                row = {"mode": mode, "B": 2, "C": c, "H": s, "W": s, "N": s * s}
                m = _run_child(["memory", "naive", mode, str(c), str(s), "2"])
                row["naive_peak_mib"] = m.get("peak_mib")
                if "error" in m:
                    row["naive_error"] = m["error"]
                peaks = []
                for _ in range(max(1, a.memory_repeats)):
                    m = _run_child(["memory", "ours", mode, str(c), str(s), "2"])
                    if "error" in m:
                        row["ours_error"] = m["error"]
                    else:
                        peaks.append(m["peak_mib"])
                row["ours_peak_runs_mib"] = peaks
                row["ours_peak_mib"] = max(peaks) if peaks else None
                if not a.no_latency:
                    row.update(
                        _run_child(["latency", mode, str(c), str(s), "2", str(a.min_run_time), str(a.min_rounds)])
                    )
                if row.get("naive_peak_mib") and row.get("ours_peak_mib") is not None:
                    row["mem_ratio"] = row["ours_peak_mib"] / row["naive_peak_mib"]
                if row.get("naive_ms"):
                    row["latency_ratio"] = row["ours_ms"] / row["naive_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    big = {"mode": "eval", "B": 1, "C": 256, "H": 128, "W": 128, "N": 128 * 128}
    big_runs = [_run_child(["memory", "ours", "eval", "256", "128", "1"]).get("peak_mib") for _ in range(max(1, a.memory_repeats))]
    big["ours_peak_runs_mib"] = big_runs
    big["ours_peak_mib"] = None if None in big_runs else max(big_runs)
    print(json.dumps(big), flush=True)
    elapsed = time.time() - t0

    import torch

    from convattn.layers import attention_kernel

    meta = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": 2,
        "min_rounds": a.min_rounds,
        "min_run_time": a.min_run_time,
        "memory_repeats": a.memory_repeats,
        "auto_chunked_min_scores": attention_kernel.AUTO_CHUNKED_MIN_SCORES,
        "chunk_elements": attention_kernel.CHUNK_ELEMENTS,
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
        "elapsed_s": elapsed,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "pam.json").write_text(json.dumps({"meta": meta, "rows": rows, "large": big}, indent=2))
    (a.out / "pam.md").write_text(_markdown(meta, rows, big))
    print(f"wrote {a.out / 'pam.md'} and {a.out / 'pam.json'} in {elapsed:.0f}s")


def _fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def _markdown(meta: dict, rows: list[dict], big: dict) -> str:
    def load(key: str) -> str:
        return str(tuple(round(x, 1) for x in meta[key])) if key in meta else "n/a"

    busy = max(meta.get("load_average_at_start", (0,))[0], meta["load_average_at_end"][0]) > 2.5
    lines = [
        "# `pam` (DANet position attention): ours vs the naive batched-matmul version",
        "",
        f"torch {meta['torch']}, {meta['cpus']} shared CPU cores, 2 threads; {meta['date_utc']} UTC; "
        f"load average (1, 5, 15 min) at the start {load('load_average_at_start')}, "
        f"at the end {load('load_average_at_end')}.",
        (
            ("**The machine is shared with other jobs (load average above its 2 cores during this run): "
             if busy else "The machine is shared with other jobs: ")
            + "latencies are noisy (each is the median of the interleaved naive/ours rounds, at least "
            f"{meta['min_rounds']}, for up to {2 * meta['min_run_time']:.0f} s); compare the ratios, not the "
            "absolute times." + ("**" if busy else "")
        )
        if any(r.get("naive_ms") for r in rows)
        else "Latency not measured in this run (`--no-latency`): peak memory only, which machine load does not affect.",
        "",
        "Peak = VmHWM - VmRSS around one full-size call in a fresh process after a 4x4 warm-up; ours "
        f"measured {meta.get('memory_repeats', 1)} times (each in a fresh process), all listed, the ratio "
        "from the largest. "
        "Ours uses `path=\"auto\"`, computed in the (B, C, N) layout of X (the three projections as one "
        "product, X + gamma V S^T as one product seeded with X, softmax in place): the full softmax while N*N < "
        f"{meta.get('auto_chunked_min_scores', 0):,} scores per sample, above it the chunked path "
        f"(blocks of query positions holding max({meta.get('chunk_elements', 0):,}, B*N*C) scores across the "
        "batch, recomputed block by block in the backward; q and k keep width C/8). On this shared machine one "
        "configuration's latency ratio can move by tens of percent between runs of the same code.",
        "",
        "| mode | C | HxW | N | naive peak MiB | ours peak MiB (runs) | mem ratio | naive ms | ours ms | latency ratio | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = r.get("ours_peak_runs_mib")
        ours_peak = " / ".join(_fmt(v) for v in runs) if runs else _fmt(r.get("ours_peak_mib"))
        lines.append(
            f"| {r['mode']} | {r['C']} | {r['H']}x{r['W']} | {r['N']} | {_fmt(r.get('naive_peak_mib'))} | "
            f"{ours_peak} | {_fmt(r.get('mem_ratio'), '.3f')} | {_fmt(r.get('naive_ms'))} | "
            f"{_fmt(r.get('ours_ms'))} | {_fmt(r.get('latency_ratio'), '.2f')} | {_fmt(r.get('max_abs_diff'), '.1e')} |"
        )
    lines += [
        "",
        f"Large input: eval forward at 128x128 (N=16,384), B=1, C=256: ours peak "
        f"{' / '.join(_fmt(v) for v in big.get('ours_peak_runs_mib') or [big.get('ours_peak_mib')])} MiB "
        "(target < 1024 MiB; the naive version is not run: "
        "its two 16,384 x 16,384 float32 matrices alone are 2 GiB).",
        "",
        f"Whole run: {meta['elapsed_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
