"""Progress display: rich bars on a terminal, one plain line per epoch otherwise.

:class:`Progress` is what :func:`convattn.engine.fit` reports to. On a terminal it
shows an overall bar (for several trainings) and a bar per training with the
running loss and accuracy; when stdout is not a terminal (CI, a pipe, a log
file) it prints one line per finished epoch instead, so logs stay readable.
``quiet=True`` prints nothing.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, quiet: bool = False, console: Any = None, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=False)
        self.quiet = quiet or not enabled
        self.live = (not self.quiet) and self.console.is_terminal
        self._bars = None
        self._overall = None
        self._task = None
        self._label = ""

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bars = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._bars is not None:
            self._bars.__exit__(*exc)
            self._bars = None

    # ------------------------------------------------------------------- events
    def overall(self, total: int, description: str = "trainings") -> None:
        if self._bars is not None:
            self._overall = self._bars.add_task(description, total=total, info="")

    def overall_advance(self) -> None:
        if self._bars is not None and self._overall is not None:
            self._bars.advance(self._overall)

    def start(self, label: str, total_steps: int, first_step: int = 0) -> None:
        self._label = label
        if self._bars is not None:
            self._task = self._bars.add_task(label, total=total_steps, completed=first_step, info="")

    def step(self, loss: float, metric: float, metric_name: str) -> None:
        if self._bars is not None and self._task is not None:
            self._bars.update(self._task, advance=1, info=f"loss {loss:.3f}  {metric_name} {metric:.3f}")

    def epoch(self, epoch: int, epochs: int, row: dict[str, float], metric_name: str) -> None:
        text = (
            f"{self._label}: epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  "
            f"train {metric_name} {row['train_' + metric_name]:.4f}  test {metric_name} {row['test_' + metric_name]:.4f}"
        )
        if self._bars is not None:
            self._bars.console.print(text, highlight=False)
        elif not self.quiet:
            print(text, flush=True)

    def done(self) -> None:
        if self._bars is not None and self._task is not None:
            self._bars.remove_task(self._task)
            self._task = None

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self._bars is not None:
            self._bars.console.print(text, highlight=False)
        else:
            print(text, file=sys.stdout, flush=True)


class Relay(Progress):
    """No bars; every :meth:`print` goes to ``say`` (a forked worker's line to the parent's display)."""

    def __init__(self, say: Any):
        super().__init__(quiet=True)
        self._say = say

    def print(self, text: str) -> None:
        self._say(text)
