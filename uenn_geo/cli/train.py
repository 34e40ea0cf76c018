"""``uenn-geo train``: train a force model on DFT (or any) structure files or a built-in set.

:func:`run_training` is the whole command as one Python call (a :class:`TrainJob` in, metrics
out); :func:`add_parser` installs the subcommand, every default read from :class:`TrainJob`;
``--config FILE.yaml`` may hold any option (see :mod:`uenn_geo.cli.options`). The data, the
model and the errors are prepared by :mod:`uenn_geo.cli.train_job`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from uenn_geo.cli.options import defaults_of, resolve
from uenn_geo.cli.train_settings import (
    BATCH,
    COMPILE_MAX_ATOMS,
    COMPILE_MIN_SECONDS,
    SMALL_BATCH,
    TrainJob,
)
from uenn_geo.data.registry import DATASET_NAMES
from uenn_geo.models import MODELS
from uenn_geo.train import distributed

__all__ = ["TrainJob", "run_training", "job_from_args", "add_parser"]


def run_training(job: TrainJob, threads: int | None = None) -> dict[str, Any]:
    """Train a model as ``job`` says; writes ``model.pt``, ``checkpoint.pt``, ``log.csv``,
    ``config.yaml`` and ``metrics.json`` into ``job.out`` (with ``job.committee`` > 1, one
    folder per member and the committee's ``metrics.json``: :mod:`uenn_geo.cli.train_committee`,
    its members run with ``threads`` torch threads each, default 1).

    Returns:
        The metrics (also in ``metrics.json``): structures per set, the model and its
        configuration, the training summary and the error tables
        (:func:`uenn_geo.train.metrics.error_table`) of the validation and test sets.
    """
    if job.committee > 1:
        from uenn_geo.cli.train_committee import run_committee

        return run_committee(job, threads)
    from uenn_geo.cli.train_job import run_job

    return run_job(job)


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`TrainJob` of parsed options: defaults, then ``--config``, then flags."""
    return resolve(TrainJob, args)


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    metrics = run_training(job, getattr(args, "threads", None))
    if distributed.launched_rank() != 0:
        return 0  # under torchrun, rank 0 prints the tables
    model = f"{job.out}/member*/model.pt" if job.committee > 1 else f"{job.out}/model.pt"
    print(f"\nmodel: {model}   metrics: {job.out}/metrics.json")
    print(metrics["table"])
    return 0


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install ``uenn-geo train``; every default comes from :class:`TrainJob`."""
    d = defaults_of(TrainJob)
    p = sub.add_parser(
        "train",
        help="train a force model on structure files (DFT energies, forces, stress)",
        description="Train on forces (and energies and stresses where the data has them); "
        "writes model.pt (uenn_geo.load_model), checkpoint.pt (resumable), log.csv, "
        "config.yaml and metrics.json into --out. Options combine as: defaults, then "
        "--config FILE.yaml, then the flags given.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", default=None, help="YAML file of options (their long names)")
    group = p.add_argument_group("data")
    group.add_argument(
        "--data", help=f"a structure file, a `uenn-geo prepare` folder or one of {DATASET_NAMES}"
    )
    group.add_argument("--train-file", help="training structures (extended XYZ, ...)")
    group.add_argument("--valid-file", help="validation structures")
    group.add_argument("--test-file", dest="test_files", action="append", help="repeatable")
    for key in ("energy", "forces", "stress"):
        group.add_argument(f"--{key}-key", help=f"name of the {key} (e.g. REF_{key})")
    group.add_argument("--config-type-weights", type=_json, help="JSON {config_type: weight}")
    group.add_argument("--E0s", dest="e0s", help="isolated | average | FILE | JSON {Z: eV}")
    group = p.add_argument_group("model")
    group.add_argument("--model", choices=sorted(MODELS), help=f"(default: {d['model']})")
    group.add_argument("--cutoff", type=float, help="Angstrom (default: 5 for files)")
    group.add_argument("--dtype", choices=["float32", "float64"], help="(default: float32)")
    group.add_argument("--direct", action="store_true", help="forces without an energy")
    group.add_argument("--model-kwargs", type=_json, help="JSON, e.g. '{\"num_blocks\": 3}'")
    _add_training_options(p.add_argument_group("training"), d)
    p.add_argument("--out", help=f"output folder (default: {d['out']})")
    p.add_argument("--root", help=f"processed-data cache (default: {d['root']})")
    p.add_argument("--restart", dest="resume", action="store_false", help="ignore checkpoints")
    p.add_argument("--threads", type=int, help="torch CPU threads (a member's: --committee)")
    p.add_argument("--device", help="cpu or cuda (cuda:LOCAL_RANK per process under torchrun)")
    p.add_argument("--num-workers", type=int, help="processes reading prepared data (0)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def _add_training_options(group: argparse._ArgumentGroup, d: dict[str, Any]) -> None:
    """The options of the loss, the optimiser and the schedule."""
    for flag, kind, text in [
        ("--energy-weight", float, "per-atom energy term (default: 0.01 with energies)"),
        ("--stress-weight", float, f"(default: {d['stress_weight']})"),
        (
            "--stage-two",
            float,
            "budget fraction where stage two starts; 0: none (default: "
            "0.8 for files of structures of several compositions, with energies; else none)",
        ),
        ("--stage-two-energy-weight", float, "(default: 1 for those files, else 10)"),
        ("--time-limit", float, f"seconds (default: {d['time_limit']})"),
        ("--max-epochs", int, "(default: none)"),
        (
            "--batch-size",
            int,
            f"structures per step and process (default: {BATCH}; {SMALL_BATCH} for files "
            f"of more than {COMPILE_MAX_ATOMS} atoms a structure)",
        ),
        ("--lr", float, f"Adam's learning rate (default: {d['lr']})"),
        ("--lr-final", float, f"schedule's end, times --lr (default: {d['lr_final']})"),
        ("--weight-decay", float, f"AdamW's (default: {d['weight_decay']})"),
        ("--ema-decay", float, f"weight average, 0: none (default: {d['ema_decay']})"),
        ("--grad-clip", float, "gradient-norm clip, 0: none (default: 0.3 for files)"),
        ("--val-fraction", float, f"(default: {d['val_fraction']})"),
        ("--test-fraction", float, "(default: 0.1 of --data)"),
        ("--seed", int, f"(default: {d['seed']})"),
        ("--split-seed", int, "of the validation and test split (default: --seed)"),
        ("--committee", int, "models trained side by side, a process each (default: 1)"),
    ]:
        group.add_argument(flag, type=kind, help=text)
    group.add_argument(
        "--amsgrad",
        action=argparse.BooleanOptionalAction,
        help=f"Adam's AMSGrad variant, as in MACE (default: {d['amsgrad']})",
    )
    group.add_argument(
        "--optimizer",
        choices=("adam", "muon"),
        help="adam: AdamW; muon: Muon for the weight matrices, AdamW for the rest (default: "
        "muon for files, adam for built-in sets)",
    )
    group.add_argument("--valid-fraction", dest="val_fraction", type=float, help="same")
    group.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        help="torch.compile the training step (one process; structures of many sizes in "
        "packed batches of one shape); auto: runs limited by --time-limit alone of "
        f"{COMPILE_MIN_SECONDS:.0f} s or more (default: auto)",
    )
