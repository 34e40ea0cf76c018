"""``uenn-geo train``: train a force model on a structure file or a built-in data set.

:func:`run_training` is the whole command as one Python call (a :class:`TrainJob` in,
metrics out); :func:`add_parser` installs the subcommand, every default read from
:class:`TrainJob`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uenn_geo.data.registry import DATASET_NAMES, load_dataset
from uenn_geo.data.transforms import CastFloats
from uenn_geo.files import atomic_write
from uenn_geo.models import MODELS, save_model
from uenn_geo.train import DenseForceData, TrainConfig, TrainResult, evaluate, train

__all__ = ["TrainJob", "run_training", "job_from_args", "add_parser"]

_CONFIG_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


@dataclass(frozen=True)
class TrainJob:
    """Settings of ``uenn-geo train`` (:func:`run_training`).

    Args:
        data: a structure file with forces (extended XYZ or anything ASE reads) or a built-in
            data set (:data:`~uenn_geo.data.registry.DATASET_NAMES`).
        out: output directory (default: ``"runs/train"``).
        root: folder of the processed-data cache (default: ``"datasets"``).
        model: a name of :data:`uenn_geo.models.MODELS` (default: ``"graph"``).
        model_kwargs: keyword arguments of the model (default: none; the graph model gets
            the atomic numbers of the data).
        time_limit: seconds of training (default: :obj:`600.0`).
        max_epochs: epoch limit (default: :obj:`None`).
        batch_size: structures per step (default: :obj:`16`); evaluation uses 4 times as many.
        lr: Adam's initial learning rate (default: that of :class:`~uenn_geo.train.TrainConfig`).
        val_fraction, test_fraction: the shares of the structures held out for validation and
            testing (default: :obj:`0.1` each).
        seed: seed of the split, the model's initial weights and the training
            (default: that of :class:`~uenn_geo.train.TrainConfig`).
        resume: continue from ``out/checkpoint.pt`` if present (default: :obj:`True`).
        progress: show a progress bar (default: :obj:`True`).
    """

    data: str
    out: str = "runs/train"
    root: str = "datasets"
    model: str = "graph"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = 600.0
    max_epochs: int | None = None
    batch_size: int = 16
    lr: float = _CONFIG_DEFAULTS["lr"]
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = _CONFIG_DEFAULTS["seed"]
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction must lie in (0, 1) and test_fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train a model on ``job.data``; writes ``model.pt``, ``log.csv`` and ``metrics.json``.

    Returns:
        The metrics (also in ``metrics.json``): structures per split, the model and its
        configuration, the best validation force RMSE (eV/A), epochs, steps, seconds, the
        stop reason and, with a test split, the test errors of :func:`~uenn_geo.train.evaluate`.
    """
    if job.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {job.model!r}")
    dataset = load_dataset(job.data, job.root)
    if len(dataset) < 3:
        raise ValueError(f"{job.data} holds {len(dataset)} structures; at least 3 are needed")
    model = _build_model(job, dataset)
    dataset.transform = CastFloats(model.dtype)
    train_set, val_set, test_set = _split(dataset, job)
    _fit_scales(model, job.model, train_set)
    cfg = _train_config(job)
    out = Path(job.out)
    meta = {"data": job.data, "job": asdict(job)}
    result = train(model, train_set, val_set, cfg, out, resume=job.resume, metadata=meta)
    save_model(model, out / "model.pt", metadata=meta)
    metrics = _metrics(job, model, result, (train_set, val_set, test_set))
    if test_set is not None:
        metrics["test"] = evaluate(model, test_set, cfg.eval_batch_size)
    atomic_write(out / "metrics.json", lambda f: json.dump(metrics, f, indent=1), mode="w")
    return metrics


def _build_model(job: TrainJob, dataset: Any) -> nn.Module:
    kwargs = dict(job.model_kwargs)
    if job.model == "graph" and "atomic_numbers" not in kwargs:
        kwargs["atomic_numbers"] = sorted({int(z) for z in dataset._data.z.unique().tolist()})
    torch.manual_seed(job.seed)
    return MODELS[job.model](**kwargs)


def _split(dataset: Any, job: TrainJob) -> tuple[Any, Any, Any | None]:
    """Train, validation and test sets (the last :obj:`None` without a test share)."""
    n = len(dataset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(job.seed))
    n_val = max(1, round(job.val_fraction * n))
    n_test = round(job.test_fraction * n)
    val_set = dataset[perm[:n_val]]
    test_set = dataset[perm[n_val : n_val + n_test]] if n_test else None
    return dataset[perm[n_val + n_test :]], val_set, test_set


def _fit_scales(model: nn.Module, name: str, train_set: Any) -> None:
    if name == "paper":  # the paper's model takes structures of equal size, dense
        pos = torch.stack([d.pos for d in train_set])
        forces = torch.stack([d.forces for d in train_set])
        model.fit_scales(DenseForceData(pos, forces))
    else:
        model.fit_scales(train_set)


def _train_config(job: TrainJob) -> TrainConfig:
    return TrainConfig(
        lr=job.lr,
        batch_size=job.batch_size,
        time_limit=job.time_limit,
        max_epochs=job.max_epochs,
        seed=job.seed,
        eval_batch_size=4 * job.batch_size,
        progress=job.progress,
    )


def _metrics(
    job: TrainJob, model: nn.Module, result: TrainResult, sets: tuple[Any, Any, Any | None]
) -> dict[str, Any]:
    train_set, val_set, test_set = sets
    return {
        "data": job.data,
        "structures": {
            "train": len(train_set),
            "val": len(val_set),
            "test": len(test_set) if test_set is not None else 0,
        },
        "model": job.model,
        "model_config": model.config,
        "best_val_force_rmse": result.best_val_rmse,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": result.elapsed,
        "stop_reason": result.stop_reason,
    }


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`TrainJob` of parsed ``uenn-geo train`` options (``--cutoff`` goes into the
    model's keyword arguments)."""
    model_kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    if args.cutoff is not None:
        model_kwargs["cutoff"] = args.cutoff
    options = {f.name: getattr(args, f.name) for f in fields(TrainJob) if f.name != "model_kwargs"}
    return TrainJob(**options, model_kwargs=model_kwargs)


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    metrics = run_training(job)
    print(f"\nmodel: {job.out}/model.pt   metrics: {job.out}/metrics.json")
    print(f"best validation force RMSE: {metrics['best_val_force_rmse']:.3e} eV/A")
    if "test" in metrics:
        print(f"test force RMSE: {metrics['test']['force_rmse']:.3e} eV/A")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install ``uenn-geo train`` (an installer for :func:`uenn_geo.cli.build_parser`).

    Every default comes from :class:`TrainJob`.
    """
    default = {f.name: f.default for f in fields(TrainJob)}
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
    p.add_argument("--out", default=default["out"], help="output directory (default: %(default)s)")
    p.add_argument(
        "--root", default=default["root"], help="processed-data cache (default: %(default)s)"
    )
    p.add_argument(
        "--model", choices=sorted(MODELS), default=default["model"], help="(default: %(default)s)"
    )
    p.add_argument("--cutoff", type=float, default=None, help="graph model cutoff in Angstrom")
    p.add_argument("--model-kwargs", default=None, help="JSON, e.g. '{\"num_blocks\": 3}'")
    _number(p, "--time-limit", float, default["time_limit"], "seconds of training")
    _number(p, "--max-epochs", int, default["max_epochs"], "epoch limit")
    _number(p, "--batch-size", int, default["batch_size"], "structures per step")
    _number(p, "--lr", float, default["lr"], "Adam learning rate")
    _number(p, "--val-fraction", float, default["val_fraction"], "share held out for validation")
    _number(p, "--test-fraction", float, default["test_fraction"], "share held out for testing")
    _number(p, "--seed", int, default["seed"], "seed of the split, weights and training")
    p.add_argument(
        "--restart",
        dest="resume",
        action="store_false",
        default=default["resume"],
        help="ignore an existing checkpoint in --out",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", default=default["progress"]
    )
    p.set_defaults(func=run)


def _number(p: argparse.ArgumentParser, flag: str, kind: type, default: Any, text: str) -> None:
    p.add_argument(flag, type=kind, default=default, help=f"{text} (default: %(default)s)")
