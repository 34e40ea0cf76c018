"""The ``uenn-geo`` command line: a thin layer over plain functions.

Each subcommand parses its options into a dataclass and calls one function that is also
usable from Python (:func:`uenn_geo.experiments.paper.run.run_paper`,
:func:`uenn_geo.train.train`, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import torch

__all__ = ["main", "build_parser"]


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _subcommands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """One installer per subcommand module; each adds one parser with ``func`` set."""
    from uenn_geo.cli import bench, eval, md, paper, train

    return [paper.add_parser, train.add_parser, eval.add_parser, bench.add_parser, md.add_parser]


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

        keep_freed_memory()  # 2-3x faster force evaluations on Linux (uenn_geo.perf)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"uenn-geo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
