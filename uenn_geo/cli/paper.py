"""``uenn-geo paper``: the paper's argon experiment (:mod:`uenn_geo.experiments.paper`)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from uenn_geo.experiments.paper.config import PRESETS, preset_config
    from uenn_geo.experiments.paper.published import PAPER_RESULTS
    from uenn_geo.experiments.paper.run import run_paper

    preset = "full" if args.full else "default"
    overrides = {
        "out": args.out,
        "root": args.root,
        "model": args.model,
        "num_configs": args.num_configs,
        "seed": args.seed,
        "optimizer": args.optimizer,
        "max_steps": args.max_steps,
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
        overrides = {**PRESETS["faithful"], **{k: v for k, v in overrides.items() if v is not None}}
    config = preset_config(preset, **overrides)
    metrics = run_paper(config)
    paper = PAPER_RESULTS["test_force_rmsd"]
    print(f"\nreport: {config.out}/report.md")
    print(f"test force RMSD: {metrics['test_force_rmsd']:.3e} eV/A (paper: {paper:.2e})")
    for step, value in metrics["md"]["position_rmsd_at"].items():
        energy = metrics["md"]["energy_rmsd_at"][step]
        print(f"MD step {step}: position RMSD {value:.3e} A, energy RMSD {energy:.3e} eV")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from uenn_geo.experiments.paper.config import preset_default as default
    from uenn_geo.models import MODELS

    steps, guard = default("max_steps"), default("time_limit")
    p = sub.add_parser(
        "paper",
        help="reproduce the paper's argon experiment (data, training, test, MD, report)",
        description="Generate the paper's data (cached under --root), train, evaluate, run "
        "the MD test and write report.md, metrics.json, model.pt and Figs. 2-7 into --out. "
        f"The default preset trains for {steps:,} steps (stopping at {guard:g} s of training "
        "at the latest); docs/reproduction.md gives its results and run times.",
    )
    p.add_argument("--out", default=None, help=f"output directory (default: {default('out')})")
    p.add_argument("--root", default=None, help=f"data root (default: {default('root')})")
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help=f"force model (default: {default('model')})",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help=f"the long preset: {default('max_steps', 'full'):,} training steps",
    )
    p.add_argument(
        "--faithful",
        action="store_true",
        help="the paper's protocol: fixed 60,000 training configurations, no net-force removal",
    )
    p.add_argument(
        "--optimizer",
        choices=["adam", "fire"],
        default=None,
        help=f"(default: {default('optimizer')})",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help=f"training steps (default: {steps:,}; with --full {default('max_steps', 'full'):,})",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds of training: a wall-clock budget that replaces the step budget unless "
        f"--max-steps is given too (default: a guard of {guard:g} s beside the step budget)",
    )
    p.add_argument(
        "--num-configs",
        type=int,
        default=None,
        help=f"data set size (default: {default('num_configs')})",
    )
    p.add_argument("--seed", type=int, default=None, help=f"(default: {default('seed')})")
    p.add_argument(
        "--md-steps", type=int, default=None, help=f"MD steps (default: {default('md_steps')})"
    )
    p.add_argument(
        "--fire-compare-time",
        type=float,
        default=None,
        help="seconds of FIRE runs shown beside Adam, 0 to skip "
        f"(default: {default('fire_compare_time'):g})",
    )
    _add_run_options(p)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1; the small paper network runs fastest on one, "
        "and a second thread waits on a busy core)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of the report, resumption and the model's evaluation."""
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
