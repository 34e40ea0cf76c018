"""``uenn-geo bench``: speed and memory against SchNet and exact Lennard-Jones."""

from __future__ import annotations

import argparse

from uenn_geo.cli.options import defaults_of
from uenn_geo.dtypes import REAL_DTYPES
from uenn_geo.experiments.bench import (
    BENCH_MODELS,
    QUICK_SIZES,
    BenchConfig,
    format_table,
    run_bench,
)
from uenn_geo.experiments.bench.systems import SYSTEMS


def run(args: argparse.Namespace) -> int:
    explicit = {
        "sizes": tuple(args.sizes) if args.sizes else None,
        "dtypes": tuple(args.dtypes) if args.dtypes else None,
        "models": tuple(args.models) if args.models else None,
        "devices": tuple(args.devices) if args.devices else None,
        "systems": tuple(args.systems) if args.systems else None,
        "cutoff": args.cutoff,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": args.threads,
        "seed": args.seed,
        "out": args.out,
    }
    preset = {"sizes": QUICK_SIZES, "repeats": 2} if args.quick else {}
    config = BenchConfig(**{**preset, **{k: v for k, v in explicit.items() if v is not None}})
    report = run_bench(config)
    print(format_table(report))
    if config.out:
        print(f"wrote {config.out}")
    return 0


def _shown(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install the ``bench`` subcommand (``func`` set) on ``sub``; the defaults shown are
    :class:`BenchConfig`'s."""
    d = {k: _shown(v) for k, v in defaults_of(BenchConfig).items()}
    p = sub.add_parser(
        "bench",
        help="time our force field (bare network and ASE calculator) against SchNet, MACE and "
        "exact Lennard-Jones",
        description="Atoms per second for one force evaluation (median of repeats, with and "
        "without building the neighbour list) and peak memory, for each model, dtype, device "
        "and box size (periodic fcc argon at 1.374 g/cm^3), all in one run.",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help=f"atoms per box, multiples of 4 (default: {d['sizes']})",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(REAL_DTYPES),
        default=None,
        help=f"(default: {d['dtypes']})",
    )
    p.add_argument(
        "--models", nargs="+", choices=sorted(BENCH_MODELS), default=None, help="(default: all)"
    )
    p.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="(default: cpu, and cuda when available)",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=None,
        help="argon boxes (--sizes), an EMT copper box (864 atoms, 6 A), ethanol (9 atoms, 5 A) "
        f"and a batch of 32 ethanols (bare networks only) (default: {d['systems']})",
    )
    p.add_argument(
        "--cutoff", type=float, default=None, help=f"Angstrom, argon (default: {d['cutoff']})"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help=f"timed calls (default: {d['repeats']})"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help=f"untimed calls per round (default: {d['warmup']})"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=None, help=f"(default: {d['seed']})")
    p.add_argument(
        "--quick", action="store_true", help=f"tiny boxes {QUICK_SIZES} and 2 repeats (for tests)"
    )
    p.add_argument("--out", default=None, help="JSON file to write (e.g. bench.json)")
    p.set_defaults(func=run)
