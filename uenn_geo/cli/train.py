"""``uenn-geo train``: train a force model on DFT (or any) structure files or a built-in set.

:func:`run_training` is the whole command as one Python call (a :class:`TrainJob` in, metrics
out); :func:`add_parser` installs the subcommand, every default read from :class:`TrainJob`;
``--config FILE.yaml`` may hold any option (see :mod:`uenn_geo.cli.options`). The data, the
model and the errors are prepared by :mod:`uenn_geo.cli.train_job`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from uenn_geo.cli.options import defaults_of, resolve
from uenn_geo.data.registry import DATASET_NAMES
from uenn_geo.models import MODELS
from uenn_geo.train import TrainConfig

__all__ = ["TrainJob", "run_training", "job_from_args", "add_parser"]

_CONFIG_DEFAULTS = defaults_of(TrainConfig)


@dataclass(frozen=True)
class TrainJob:
    """Settings of ``uenn-geo train`` (:func:`run_training`).

    Data (one of ``data`` and ``train_file``):
        data: a structure file (extended XYZ or anything ASE reads) or a built-in data set
            (:data:`~uenn_geo.data.registry.DATASET_NAMES`), split into training, validation
            and test sets.
        train_file: the training structures; ``valid_file`` or ``val_fraction`` of them
            validate, and ``test_files`` test.
        valid_file: the validation structures.
        test_files: files evaluated at the end, one table each.
        energy_key, forces_key, stress_key: where the references are, e.g. ``REF_energy``
            (default: ASE's calculator results, then ``info``/``arrays``).
        config_type_weights: loss weight per ``config_type`` (others: 1).
        e0s: isolated-atom energies (:func:`uenn_geo.data.e0s.resolve_e0s`): ``"isolated"``,
            ``"average"``, a file, or a JSON mapping; default: the training file's
            isolated-atom frames if any.

    Model:
        model: a name of :data:`uenn_geo.models.MODELS` (default: ``"graph"``).
        cutoff: Angstrom (default: 5.0 for files, the model's own for built-in sets).
        dtype: ``"float32"`` (default) or ``"float64"``.
        direct: predict forces directly, without an energy (default: the model has an
            energy whenever the data has energies).
        model_kwargs: further keyword arguments of the model.

    Training (see :class:`~uenn_geo.train.TrainConfig`):
        energy_weight: weight of the per-atom energy term (default: 1 when the model has an
            energy and the data energies, else 0); stress_weight likewise (default 0).
        stage_two: fraction of the budget after which the energy weight becomes
            ``stage_two_energy_weight`` (default: one stage).
        time_limit, max_epochs, batch_size, lr, seed: as in TrainConfig.
        val_fraction, test_fraction: shares of ``data`` held out (``test_fraction`` of a
            ``train_file`` only when given).
        out, root, resume, progress: output folder, processed-data cache, continue from
            ``out/checkpoint.pt``, show progress.
    """

    data: str | None = None
    train_file: str | None = None
    valid_file: str | None = None
    test_files: tuple[str, ...] = ()
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    config_type_weights: dict[str, float] = field(default_factory=dict)
    e0s: str | dict[str, float] | None = None
    out: str = "runs/train"
    root: str = "datasets"
    model: str = "graph"
    cutoff: float | None = None
    dtype: str | None = None
    direct: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    energy_weight: float | None = None
    stress_weight: float = 0.0
    stage_two: float | None = None
    stage_two_energy_weight: float = _CONFIG_DEFAULTS["stage_two_energy_weight"]
    time_limit: float | None = 600.0
    max_epochs: int | None = None
    batch_size: int = 16
    lr: float = _CONFIG_DEFAULTS["lr"]
    val_fraction: float = 0.1
    test_fraction: float | None = None
    seed: int = _CONFIG_DEFAULTS["seed"]
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.data is None) == (self.train_file is None):
            raise ValueError("give exactly one of --data and --train-file")
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        test = self.test_fraction or 0.0
        if not 0 <= test < 1 or self.val_fraction + test >= 1:
            raise ValueError("--test-fraction must lie in [0, 1) and leave training data")
        for name in ("time_limit", "max_epochs", "batch_size", "lr", "cutoff"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.time_limit is None and self.max_epochs is None:
            raise ValueError("give --time-limit or --max-epochs")
        object.__setattr__(self, "test_files", tuple(self.test_files))
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {self.model_kwargs!r}")

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (what ``config.yaml`` holds)."""
        out = asdict(self)
        out["test_files"] = list(self.test_files)
        return out


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train a model as ``job`` says; writes ``model.pt``, ``checkpoint.pt``, ``log.csv``,
    ``config.yaml`` and ``metrics.json`` into ``job.out``.

    Returns:
        The metrics (also in ``metrics.json``): structures per set, the model and its
        configuration, the training summary and the error tables
        (:func:`uenn_geo.train.metrics.error_table`) of the validation and test sets.
    """
    from uenn_geo.cli.train_job import run_job

    return run_job(job)


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`TrainJob` of parsed options: defaults, then ``--config``, then flags."""
    return resolve(TrainJob, args)


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args)
    metrics = run_training(job)
    print(f"\nmodel: {job.out}/model.pt   metrics: {job.out}/metrics.json")
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
    group.add_argument("--data", help=f"a structure file or one of {list(DATASET_NAMES)}")
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
    group = p.add_argument_group("training")
    for flag, kind, text in [
        ("--energy-weight", float, "per-atom energy term (default: 1 with energies)"),
        ("--stress-weight", float, f"(default: {d['stress_weight']})"),
        ("--stage-two", float, "budget fraction where stage two starts (default: none)"),
        ("--stage-two-energy-weight", float, f"(default: {d['stage_two_energy_weight']})"),
        ("--time-limit", float, f"seconds (default: {d['time_limit']})"),
        ("--max-epochs", int, "(default: none)"),
        ("--batch-size", int, f"structures per step (default: {d['batch_size']})"),
        ("--lr", float, f"Adam's learning rate (default: {d['lr']})"),
        ("--val-fraction", float, f"(default: {d['val_fraction']})"),
        ("--test-fraction", float, "(default: 0.1 of --data)"),
        ("--seed", int, f"(default: {d['seed']})"),
    ]:
        group.add_argument(flag, type=kind, help=text)
    group.add_argument("--valid-fraction", dest="val_fraction", type=float, help="same")
    p.add_argument("--out", help=f"output folder (default: {d['out']})")
    p.add_argument("--root", help=f"processed-data cache (default: {d['root']})")
    p.add_argument("--restart", dest="resume", action="store_false", help="ignore checkpoints")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)
