"""The ``uenn-geo`` command line: a thin layer over plain functions.

Each subcommand parses its options into a dataclass and calls one function that is also
usable from Python (:func:`uenn_geo.experiments.paper.run.run_paper`,
:func:`uenn_geo.train.train`, ...). Expected errors (bad input: :class:`ValueError`; files
missing, unreadable or unwritable: :class:`OSError`) end a command with one line on stderr
and exit status 2, warnings are shown as one line each; only bugs show tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["main", "build_parser"]


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _subcommands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """One installer per subcommand module; each adds one parser with ``func`` set."""
    from uenn_geo.cli import bench, eval, md, paper, prepare, train

    modules = [paper, train, eval, bench, md, prepare]
    return [module.add_parser for module in modules]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uenn-geo", description="Unitary-equivariant graph networks for atomistic forces."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for install in _subcommands():
        install(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args)
    if not os.environ.get("UENN_GEO_SYSTEM_MALLOC"):
        from uenn_geo.perf import keep_freed_memory

        keep_freed_memory()  # faster CPU force evaluations on Linux (uenn_geo.perf)
    if not os.environ.get("UENN_GEO_KEEP_DENORMALS"):
        from uenn_geo.perf import flush_denormals

        flush_denormals()  # denormal floats as zero: no slow path (uenn_geo.perf)
    try:
        with _one_line_warnings(args.command):
            return args.func(args)
    except (ValueError, OSError) as err:
        print(f"uenn-geo {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uenn-geo {args.command}: interrupted", file=sys.stderr)
        return 130


def _message(err: BaseException) -> str:
    """The error's text; an OSError's strerror and file name when it has them."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


@contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Show warnings as ``uenn-geo CMD: warning: text`` (no source line) while running."""
    old = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        return f"uenn-geo {command}: warning: {message}\n"

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
