"""``uenn-geo eval``: the error table of a trained model on structure files.

The same table as at the end of ``uenn-geo train`` (:func:`uenn_geo.train.metrics.error_table`):
energy RMSE and MAE per atom and per structure, force RMSE and MAE, the worst structure's force
RMSE and stress errors where the file has them, for all structures and per ``config_type``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uenn_geo.cli.options import defaults_of, resolve
from uenn_geo.files import write_csv, write_json

__all__ = ["EvalJob", "run_eval", "add_parser"]


@dataclass(frozen=True)
class EvalJob:
    """Settings of ``uenn-geo eval``.

    Args:
        model: a model file written by uenn-geo (``model.pt``), or several: their committee
            (:class:`~uenn_geo.models.committee.Committee`, the mean of their predictions); a
            folder of ``uenn-geo train`` stands for its model files (with ``--committee``,
            the members': :func:`~uenn_geo.models.committee.model_files`).
        files: structure files with reference forces (and energies, stresses).
        energy_key, forces_key, stress_key: where the references are (as for training).
        batch_size: structures per evaluation batch (default: 64).
        out: also write the tables as JSON to this file (default: none).
        per_structure: a directory: write ``<file stem>.csv`` there for each file, one row
            per structure (:data:`uenn_geo.train.metrics.PER_STRUCTURE_FIELDS`: its energy
            and force errors, and for a committee how far the members disagree) (default:
            none).
    """

    model: str | tuple[str, ...]
    files: tuple[str, ...] = ()
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    batch_size: int = 64
    out: str | None = None
    per_structure: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if not isinstance(self.model, str):
            object.__setattr__(self, "model", tuple(os.fspath(m) for m in self.model))
            if not self.model:
                raise ValueError("give at least one --model")
        if not self.files:
            raise ValueError("give at least one --file")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


def run_eval(job: EvalJob) -> dict[str, dict[str, Any]]:
    """``{file stem: error table}`` of ``job.model`` on each of ``job.files`` (meV units)."""
    from uenn_geo.data.extxyz import read_frames
    from uenn_geo.data.transforms import CastFloats
    from uenn_geo.models import load_committee
    from uenn_geo.train.metrics import PER_STRUCTURE_FIELDS, error_table

    model = load_committee([job.model] if isinstance(job.model, str) else job.model)
    cast = CastFloats(model.dtype)
    tables = {}
    for path in job.files:
        frames = read_frames(
            path, job.energy_key, job.forces_key, min_distance=0.0, stress_key=job.stress_key
        )
        rows: list[dict[str, Any]] | None = None if job.per_structure is None else []
        data = [cast(f) for f in frames]
        tables[Path(path).stem] = error_table(model, data, job.batch_size, rows)
        if rows is not None:
            folder = Path(job.per_structure)
            folder.mkdir(parents=True, exist_ok=True)
            write_csv(folder / f"{Path(path).stem}.csv", rows, PER_STRUCTURE_FIELDS)
    if job.out is not None:
        write_json(job.out, tables)  # strict JSON: NaN and inf as null
    return tables


def run(args: argparse.Namespace) -> int:
    from uenn_geo.train.metrics import format_table

    print(format_table(run_eval(resolve(EvalJob, args))))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install ``uenn-geo eval``; every default comes from :class:`EvalJob`."""
    d = defaults_of(EvalJob)
    p = sub.add_parser(
        "eval",
        help="errors of a trained model on structure files (meV/atom, meV/A tables)",
        description="Evaluate a model on files with reference forces (and energies and "
        "stresses): one table row per file and per config_type.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--model",
        nargs="+",
        required=True,
        help="model file (model.pt) or the --out folder of uenn-geo train; several (or a "
        "--committee folder): their committee (the mean of their predictions)",
    )
    p.add_argument("--file", dest="files", nargs="+", required=True, help="structure files")
    for key in ("energy", "forces", "stress"):
        p.add_argument(f"--{key}-key", help=f"name of the {key} (e.g. REF_{key})")
    p.add_argument("--batch-size", type=int, help=f"(default: {d['batch_size']})")
    p.add_argument("--out", help="write the tables as JSON here")
    p.add_argument(
        "--per-structure",
        metavar="DIR",
        help="write DIR/<file stem>.csv: each structure's energy and force errors (meV/atom, "
        "meV/A) and, for a committee, the members' force deviation",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)
