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


def _cmd_paper(args: argparse.Namespace) -> int:
    from uenn_geo.experiments.paper.run import preset_config, run_paper

    preset = "full" if args.full else "default"
    overrides = {
        "out": args.out,
        "root": args.root,
        "model": args.model,
        "num_configs": args.num_configs,
        "seed": args.seed,
        "optimizer": args.optimizer,
        "time_limit": args.time_limit,
        "md_steps": args.md_steps,
        "fire_compare_time": args.fire_compare_time,
        "compare": tuple(args.compare) if args.compare else None,
        "resume": not args.restart,
        "progress": not args.no_progress,
        "compile": args.compile,
        "symmetrize": args.symmetrize,
    }
    if args.faithful:
        from uenn_geo.experiments.paper.run import PRESETS

        overrides = {**PRESETS["faithful"], **{k: v for k, v in overrides.items() if v is not None}}
    config = preset_config(preset, **overrides)
    metrics = run_paper(config)
    print(f"\nreport: {config.out}/report.md")
    print(f"test force RMSD: {metrics['test_force_rmsd']:.3e} eV/A (paper: 1.18e-03)")
    for step, value in metrics["md"]["position_rmsd_at"].items():
        energy = metrics["md"]["energy_rmsd_at"][step]
        print(f"MD step {step}: position RMSD {value:.3e} A, energy RMSD {energy:.3e} eV")
    return 0


def _add_paper(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.models import MODELS

    p = sub.add_parser(
        "paper",
        help="reproduce the paper's argon experiment (data, training, test, MD, report)",
        description="Generate the paper's data (cached under --root), train, evaluate, run "
        "the MD test and write report.md, metrics.json, model.pt and Figs. 2-7 into --out. "
        "The default preset takes under 15 minutes on a 2-core CPU.",
    )
    p.add_argument("--out", default=None, help="output directory (default: runs/paper)")
    p.add_argument("--root", default=None, help="data root (default: datasets)")
    p.add_argument(
        "--model", choices=sorted(MODELS), default=None, help="force model (default: paper)"
    )
    p.add_argument("--full", action="store_true", help="the long preset (about 2 hours)")
    p.add_argument(
        "--faithful",
        action="store_true",
        help="the paper's protocol: fixed 60,000 training configurations, no net-force removal",
    )
    p.add_argument("--optimizer", choices=["adam", "fire"], default=None)
    p.add_argument("--time-limit", type=float, default=None, help="training seconds")
    p.add_argument("--num-configs", type=int, default=None, help="data set size (default: 100000)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--md-steps", type=int, default=None, help="MD steps (default: 10000)")
    p.add_argument(
        "--fire-compare-time",
        type=float,
        default=None,
        help="seconds of FIRE runs shown beside Adam (0 to skip)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        default=None,
        help="output directories of earlier paper runs (e.g. the faithful and the default "
        "model) shown side by side with this run in report.md",
    )
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument(
        "--symmetrize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the trained paper network over the 24 orderings of its identical atoms "
        "(default: on, except with --faithful)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training step (default: on for the paper network with Adam; "
        "needs a C++ compiler, and falls back to eager mode without one)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_paper)


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from uenn_geo.train import TrainJob, run_training

    model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if args.cutoff is not None:
        model_kwargs["cutoff"] = args.cutoff
    job = TrainJob(
        data=args.data,
        out=args.out,
        root=args.root,
        model=args.model,
        model_kwargs=model_kwargs,
        time_limit=args.time_limit,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        resume=not args.restart,
        progress=not args.no_progress,
    )
    metrics = run_training(job)
    print(f"\nmodel: {args.out}/model.pt   metrics: {args.out}/metrics.json")
    print(f"best validation force RMSE: {metrics['best_val_force_rmse']:.3e} eV/A")
    if "test" in metrics:
        print(f"test force RMSE: {metrics['test']['force_rmse']:.3e} eV/A")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.models import MODELS
    from uenn_geo.train import DATASET_NAMES

    p = sub.add_parser(
        "train",
        help="train a force model on an extended-XYZ file or a built-in data set",
        description="Train on forces; writes model.pt (loadable with uenn_geo.load_model), "
        "checkpoint.pt (resumable), log.csv and metrics.json into --out.",
    )
    p.add_argument(
        "--data",
        required=True,
        help=f"extended-XYZ (or ASE-readable) file with forces, or one of {list(DATASET_NAMES)}",
    )
    p.add_argument("--out", default="runs/train", help="output directory (default: runs/train)")
    p.add_argument("--root", default="datasets", help="processed-data cache (default: datasets)")
    p.add_argument("--model", choices=sorted(MODELS), default="graph", help="(default: graph)")
    p.add_argument("--cutoff", type=float, default=None, help="graph model cutoff in Angstrom")
    p.add_argument("--model-kwargs", default=None, help="JSON, e.g. '{\"num_blocks\": 3}'")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds (default: 600)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16, help="structures per step (default: 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.experiments.bench import add_bench_parser

    add_bench_parser(sub)


def _add_md(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.cli.md import add_md_parser

    add_md_parser(sub)


#: Subcommand installers; each adds one parser with ``func`` set.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_paper,
    _add_train,
    _add_bench,
    _add_md,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uenn-geo", description="Unitary-equivariant graph networks for atomistic forces."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for install in SUBCOMMANDS:
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
