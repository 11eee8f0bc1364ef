"""Subprocess side of the peak-memory measurement.

Two ways to run it:

- ``python -m convattn.bench.memory '<json job>'``: one configuration in this
  fresh process; prints one JSON line with ``peak_mib``.
- ``python -m convattn.bench.memory --serve``: a server that imports torch and
  convattn once (and timm when a job needs it) and never touches a tensor; for
  each JSON job read from stdin it forks a child that measures that one
  configuration and dies. Every configuration thus still runs in a fresh process
  whose heap has never held a full-size tensor, without paying 2-5 s of imports
  each time. :class:`convattn.bench.measure.MemoryProbe` drives it.

The measurement itself is :func:`convattn.bench.measure._child`: tiny warm-up
call, write ``5`` to ``/proc/self/clear_refs``, ``VmHWM - VmRSS`` around one
full-size call.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _run_forked(job: dict) -> dict:
    from .measure import _child

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report, exit without running atexit handlers
        os.close(r)
        try:
            out = {"ok": True, **_child(job)}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            tb = traceback.format_exc().strip().splitlines()
            out = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0], "trace": tb[-3:]}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"ok": False, "error": f"child died (wait status {status})"}
    return json.loads(data)


def serve() -> int:
    import torch  # noqa: F401  (imported once, before any fork)

    import convattn  # noqa: F401

    from . import measure, options, targets  # noqa: F401

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        job = json.loads(line)
        if job["target"].get("kind", "").startswith("timm"):
            import timm  # noqa: F401  (once; later forks inherit it)
        if job["target"].get("kind", "").endswith("model"):
            import torchvision  # noqa: F401
        try:
            res = _run_forked(job)
        except Exception as e:  # noqa: BLE001
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        print("usage: python -m convattn.bench.memory ('<json job>' | --serve)", file=sys.stderr)
        return 2
    from .measure import _child

    print(json.dumps(_child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
