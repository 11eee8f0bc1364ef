"""The two benchmark jobs: attention modules alone, and whole models with attention.

:func:`run_modules` times every chosen module interleaved with the memory-traffic
floor (and timm's module where timm has one), at each shape, in eval and train
mode; :func:`run_models` times a backbone with each attention interleaved with
the plain backbone (and timm's model with timm's attention as a peer). Both
return a JSON-serialisable dict (``config``, ``env``, ``rows``) that
:mod:`convattn.bench.report` turns into a table, markdown, JSON and a PNG.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..fast import native
from . import measure as M
from .options import (
    DEFAULT_MODEL_SHAPE,
    DEFAULT_MODULE_SHAPES,
    check_modes,
    check_modules,
    check_threads,
    dtype_name,
    parse_dtype,
    parse_shapes,
)
from .targets import (
    TIMM_PEERS,
    build,
    floor_target,
    label,
    model_target,
    module_target,
    timm_model_available,
    timm_model_target,
    timm_peer_available,
    timm_target,
)

Progress = Callable[[str], None]


def environment(pin_allocator: bool = False) -> dict[str, Any]:
    """The machine and versions; with ``pin_allocator``, after :func:`~convattn.bench.measure.pin_allocator`."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        timm_version = version("timm")  # without importing timm (seconds)
    except PackageNotFoundError:
        timm_version = None
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "timm": timm_version,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "native_kernels": native.status(),
        "allocator": (M.pin_allocator() if pin_allocator else None) or "default",
    }


def _finish_env(env: dict[str, Any]) -> dict[str, Any]:
    env["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return env


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def _time_group(targets: dict[str, dict], shape, *, dtype, channels_last, threads, modes, rounds, block_s, max_s,
                baseline: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Build each target, time all of them interleaved per mode; per-target results.

    Returns ({key: {"params", "flops", "<mode>": summary}}, {key: error}).
    """
    dims = len(shape) - 2
    built, errors, out = {}, {}, {}
    x = M.make_input(shape, dtype, channels_last)
    for key, tgt in targets.items():
        try:
            m = M.prepare(build(tgt), dtype, channels_last, "eval", dims)
            with torch.no_grad():
                y = m(x)  # fails early (unsupported shape) before any timing
            out[key] = {"params": M.count_params(m), "out_shape": list(y.shape)}
            try:
                out[key]["flops"] = M.count_flops(m, x, "eval")
                out[key]["train_flops"] = M.count_flops(m, x, "train") if "train" in modes else None
            except Exception as e:  # noqa: BLE001 - FLOPs are informative, never fatal
                out[key]["flops"] = None
                out[key]["flops_error"] = _err(e)
            built[key] = m
        except Exception as e:  # noqa: BLE001 - one bad module must not stop the run
            errors[key] = _err(e)
    if baseline not in built:
        return out, errors
    prev = torch.get_num_threads()
    try:
        for mode in modes:
            fns = {}
            for key, m in built.items():
                try:
                    fns[key] = M.step_fn(m, x, mode)
                    fns[key]()
                except Exception as e:  # noqa: BLE001
                    out[key][f"{mode}_error"] = _err(e)
                    fns.pop(key, None)
            times = M.time_interleaved(fns, threads=threads, rounds=rounds, block_s=block_s, max_s=max_s)
            for key, summ in M.summarize(times, baseline).items():
                out[key][mode] = summ
                out[key][f"{mode}_times"] = times[key]
    finally:
        torch.set_num_threads(prev)
    return out, errors


def run_modules(
    names: Iterable[str] | None = None,
    shapes: Any = DEFAULT_MODULE_SHAPES,
    *,
    dtype: Any = "float32",
    channels_last: bool = False,
    threads: int = 2,
    modes: Iterable[str] = ("eval", "train"),
    peers: bool = True,
    memory: bool = True,
    rounds: int = 15,
    block_s: float = 0.05,
    max_s: float = 30.0,
    options: dict[str, dict] | None = None,
    progress: Progress | None = None,
    pin_allocator: bool = True,
) -> dict[str, Any]:
    """Benchmark registered attention modules (all when ``names`` is None).

    For each module and shape: parameters, FLOPs, eval and train latency (median
    and quartiles) as ratios to FLOOR and to timm's module (2D only, when timm has
    it), timed interleaved in the same rounds; peak memory per mode in fresh
    subprocesses. ``options`` maps a module name to constructor options.
    ``pin_allocator`` first keeps freed memory in this process
    (:func:`~convattn.bench.measure.pin_allocator`, process-wide).
    """
    from ..registry import get_spec, list_attention

    names = check_modules(list_attention() if names is None else list(names))
    shapes = parse_shapes(shapes)
    dt = parse_dtype(dtype)
    threads = check_threads(threads)
    modes = check_modes(modes)
    options = options or {}
    env = environment(pin_allocator)
    rows: list[dict[str, Any]] = []
    floor_rows: list[dict[str, Any]] = []
    probe = M.MemoryProbe(threads=threads) if memory else None
    say = progress or (lambda s: None)
    try:
        for shape in shapes:
            channels, dims = shape[1], len(shape) - 2
            floor_ms: dict[str, list[float]] = {m: [] for m in modes}
            for name in names:
                spec = get_spec(name)
                say(f"{name} {'x'.join(map(str, shape))}")
                row: dict[str, Any] = {
                    "name": name, "family": spec.family, "shape": list(shape), "dtype": dtype_name(dt),
                    "channels_last": channels_last, "threads": threads, "error": None,
                }
                rows.append(row)
                if dims not in spec.dims:
                    row["error"] = f"unsupported: {name} takes {', '.join(f'{d}D' for d in spec.dims)} inputs"
                    continue
                opts = options.get(name, {})
                targets = {"floor": floor_target(), "ours": module_target(name, channels, dims, opts)}
                if peers and timm_peer_available(name, dims):
                    targets["timm"] = timm_target(name, channels, dims, opts)
                res, errors = _time_group(targets, shape, dtype=dt, channels_last=channels_last, threads=threads,
                                          modes=modes, rounds=rounds, block_s=block_s, max_s=max_s, baseline="floor")
                if "ours" in errors:
                    row["error"] = errors["ours"]
                    continue
                ours = res["ours"]
                row.update({"params": ours["params"], "flops": ours.get("flops"),
                            "train_flops": ours.get("train_flops")})
                row["timm"] = TIMM_PEERS[name] if "timm" in res else None
                if "timm" in errors:
                    row["timm_error"] = errors["timm"]
                for mode in modes:
                    if f"{mode}_error" in ours:
                        row[f"{mode}_error"] = ours[f"{mode}_error"]
                        continue
                    s, f = ours[mode], res["floor"][mode]
                    floor_ms[mode].append(f["ms"])
                    row.update({
                        f"{mode}_ms": s["ms"], f"{mode}_q1_ms": s["q1_ms"], f"{mode}_q3_ms": s["q3_ms"],
                        f"{mode}_rounds": s["rounds"],
                        f"floor_{mode}_ms": f["ms"],
                        f"{mode}_vs_floor": s["ratio"], f"{mode}_vs_floor_q1": s["ratio_q1"],
                        f"{mode}_vs_floor_q3": s["ratio_q3"],
                    })
                    if "timm" in res and mode in res["timm"]:
                        t = res["timm"][mode]
                        q1, med, q3 = M.ratio_stats(ours[f"{mode}_times"], res["timm"][f"{mode}_times"])
                        row.update({f"timm_{mode}_ms": t["ms"], f"{mode}_vs_timm": med,
                                    f"{mode}_vs_timm_q1": q1, f"{mode}_vs_timm_q3": q3,
                                    f"timm_{mode}_vs_floor": t.get("ratio")})
                if probe is not None:
                    for mode in modes:
                        try:
                            row[f"mem_{mode}_mib"] = probe.measure(targets["ours"], shape, mode=mode,
                                                                   dtype=dtype_name(dt), channels_last=channels_last)
                        except Exception as e:  # noqa: BLE001
                            row[f"mem_{mode}_error"] = _err(e)
            frow: dict[str, Any] = {"name": "FLOOR", "shape": list(shape), "params": 0}
            for mode in modes:
                if floor_ms[mode]:
                    frow[f"{mode}_ms"] = sorted(floor_ms[mode])[len(floor_ms[mode]) // 2]
                if probe is not None:
                    try:
                        frow[f"mem_{mode}_mib"] = probe.measure(floor_target(), shape, mode=mode,
                                                                dtype=dtype_name(dt), channels_last=channels_last)
                    except Exception as e:  # noqa: BLE001
                        frow[f"mem_{mode}_error"] = _err(e)
            floor_rows.append(frow)
            for row in rows:
                if row["shape"] == list(shape):
                    for mode in modes:
                        fm, rm = frow.get(f"mem_{mode}_mib"), row.get(f"mem_{mode}_mib")
                        if fm and rm is not None:
                            row[f"mem_{mode}_vs_floor"] = rm / fm
    finally:
        if probe is not None:
            probe.close()
    return {
        "kind": "modules",
        "config": {"modules": names, "shapes": [list(s) for s in shapes], "dtype": dtype_name(dt),
                   "channels_last": channels_last, "threads": threads, "modes": list(modes), "peers": peers,
                   "memory": memory, "rounds": rounds, "block_s": block_s},
        "env": _finish_env(env),
        "floor": floor_rows,
        "rows": rows,
    }


def run_models(
    model: str,
    attentions: Iterable[str],
    *,
    where: str = "block",
    shape: Any = DEFAULT_MODEL_SHAPE,
    dtype: Any = "float32",
    channels_last: bool = False,
    threads: int = 2,
    modes: Iterable[str] = ("eval",),
    peers: bool = True,
    timm_attentions: Iterable[str] | None = None,
    memory: bool = True,
    rounds: int = 15,
    block_s: float = 0.3,
    max_s: float = 240.0,
    progress: Progress | None = None,
    pin_allocator: bool = True,
) -> dict[str, Any]:
    """Benchmark ``model`` plain and with each attention (``convattn.models.create_model``).

    All variants (and timm's plain model and timm's model with its own attention
    layer, when ``peers`` and timm has them) are timed interleaved in the same
    rounds; ratios are per round to the plain model (timm lines: to timm's plain
    model). ``timm_attentions`` limits the timm lines (default: every attention
    timm has). ``pin_allocator`` as in :func:`run_modules`.
    """
    try:
        from ..models import list_models
    except ImportError as e:  # pragma: no cover - the models package is part of convattn
        raise ValueError(f"convattn.models is not available: {e}") from None
    if model not in list_models():
        import difflib

        close = difflib.get_close_matches(str(model), list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown model {model!r}; {hint}valid: {', '.join(list_models())}")
    attentions = check_modules(attentions)
    (shape,) = parse_shapes([shape] if not isinstance(shape, str) else shape)
    if len(shape) != 4:
        raise ValueError(f"model input shape must be BxCxHxW, got {'x'.join(map(str, shape))}")
    dt = parse_dtype(dtype)
    threads = check_threads(threads)
    modes = check_modes(modes)
    env = environment(pin_allocator)
    say = progress or (lambda s: None)
    opts = {"in_chans": shape[1]} if shape[1] != 3 else {}
    targets: dict[str, dict] = {"plain": model_target(model, None, where, opts)}
    for a in attentions:
        targets[a] = model_target(model, a, where, opts)
    if peers and shape[1] == 3 and timm_model_available(model, None):
        targets["timm:plain"] = timm_model_target(model, None)
        for a in attentions if timm_attentions is None else [a for a in attentions if a in set(timm_attentions)]:
            if timm_model_available(model, a):
                targets[f"timm:{a}"] = timm_model_target(model, a)
    say(f"{model}: building and timing {len(targets)} variants")
    res, errors = _time_group(targets, shape, dtype=dt, channels_last=channels_last, threads=threads, modes=modes,
                              rounds=rounds, block_s=block_s, max_s=max_s, baseline="plain")
    rows = []
    for key, tgt in targets.items():
        row: dict[str, Any] = {"name": label(tgt), "key": key, "model": model, "attention": tgt.get("attention"),
                               "source": "timm" if key.startswith("timm") else "convattn",
                               "where": where if tgt["kind"] == "model" else None,
                               "shape": list(shape), "dtype": dtype_name(dt), "channels_last": channels_last,
                               "threads": threads, "error": errors.get(key)}
        rows.append(row)
        if key in errors:
            continue
        r = res[key]
        row.update({"params": r["params"], "flops": r.get("flops"), "train_flops": r.get("train_flops")})
        for mode in modes:
            if mode not in r:
                row[f"{mode}_error"] = r.get(f"{mode}_error")
                continue
            s = r[mode]
            row.update({f"{mode}_ms": s["ms"], f"{mode}_q1_ms": s["q1_ms"], f"{mode}_q3_ms": s["q3_ms"],
                        f"{mode}_rounds": s["rounds"]})
            if key == "plain":
                row.update({f"{mode}_vs_plain": 1.0, f"{mode}_vs_plain_q1": 1.0, f"{mode}_vs_plain_q3": 1.0})
            elif not key.startswith("timm"):
                row.update({f"{mode}_vs_plain": s["ratio"], f"{mode}_vs_plain_q1": s["ratio_q1"],
                            f"{mode}_vs_plain_q3": s["ratio_q3"]})
    # timm lines: per-round ratio to timm's own plain model, timed in the same rounds
    if "timm:plain" in res and "timm:plain" not in errors:
        for mode in modes:
            base = res["timm:plain"].get(f"{mode}_times")
            if not base:
                continue
            for row in rows:
                k = row["key"]
                if k.startswith("timm") and f"{mode}_times" in res.get(k, {}):
                    q1, med, q3 = M.ratio_stats(res[k][f"{mode}_times"], base)
                    row.update({f"{mode}_vs_plain": med, f"{mode}_vs_plain_q1": q1, f"{mode}_vs_plain_q3": q3})
    if memory:
        with M.MemoryProbe(threads=threads) as probe:
            for row, tgt in zip(rows, targets.values(), strict=True):
                if row["error"]:
                    continue
                for mode in modes:
                    say(f"peak memory {row['name']} ({mode})")
                    try:
                        row[f"mem_{mode}_mib"] = probe.measure(tgt, shape, mode=mode, dtype=dtype_name(dt),
                                                               channels_last=channels_last)
                    except Exception as e:  # noqa: BLE001
                        row[f"mem_{mode}_error"] = _err(e)
    return {
        "kind": "models",
        "config": {"model": model, "attentions": attentions, "where": where, "shape": list(shape),
                   "dtype": dtype_name(dt), "channels_last": channels_last, "threads": threads,
                   "modes": list(modes), "peers": peers, "memory": memory, "rounds": rounds, "block_s": block_s},
        "env": _finish_env(env),
        "rows": rows,
    }
