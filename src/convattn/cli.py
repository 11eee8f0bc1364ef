"""The ``convattn`` command.

Each subcommand lives in ``convattn/commands/<name>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises
``ValueError``/``FileNotFoundError`` (or :class:`UsageError`), a training whose
loss diverges ``FloatingPointError`` (also from a forked worker), an unwritable
location ``PermissionError``; ``main`` prints it as one line of plain text and
exits with code 2. A run folder this invocation created is then removed unless
it holds a checkpoint (see :func:`convattn.runs.folders.discard_new_runs`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from . import __version__, commands

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``convattn <command>: error: ...``, exit code 2).

    argparse prints the whole usage block before the error; ``--help`` still shows it.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_modules():
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"{commands.__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convattn",
        description="Attention mechanisms for CNNs: list, attach, train, compare, explain, export.",
    )
    parser.add_argument("--version", action="version", version=f"convattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _command_modules():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .runs.folders import NEW_RUNS, discard_new_runs

    NEW_RUNS.clear()
    try:
        return int(args._run(args) or 0)
    except (ValueError, FloatingPointError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            FileExistsError, PermissionError) as e:
        lines = [ln for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
        msg = lines[0].strip() if lines else type(e).__name__
        if isinstance(e, PermissionError) and e.filename and str(e.filename) not in msg:
            msg += f": {e.filename}"
        print(f"convattn {args.command}: error: {msg}{discard_new_runs(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
