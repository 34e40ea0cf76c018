"""The steps of ``uenn-geo train`` (:func:`uenn_geo.cli.train.run_training`): data sets, E0s,
the model with defaults that fit the data, training, the energy refit and the error tables."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.transforms import Compose

from uenn_geo.cli.train import TrainJob
from uenn_geo.data.e0s import is_isolated_atom, isolated_atom_energies, resolve_e0s
from uenn_geo.data.registry import load_dataset
from uenn_geo.data.transforms import CastFloats, ConfigTypeWeights
from uenn_geo.files import atomic_write
from uenn_geo.models import MODELS, save_model
from uenn_geo.models.scales import refit_energy_shift
from uenn_geo.train import DenseForceData, TrainConfig, train
from uenn_geo.train.loss import has_energy
from uenn_geo.train.metrics import error_table, format_table

__all__ = ["run_job", "FILE_CUTOFF"]

#: The cutoff of models trained on files (Angstrom): the usual one for molecules and
#: materials (MACE, NequIP and Allegro use 4-6 A), where the first neighbour shells lie.
FILE_CUTOFF = 5.0


@dataclass
class _Sets:
    train: Any
    val: Any
    tests: dict[str, Any] = field(default_factory=dict)
    isolated: dict[int, float] = field(default_factory=dict)
    from_file: bool = True


def run_job(job: TrainJob) -> dict[str, Any]:
    out = Path(job.out)
    _print_config(job)
    atomic_write(out / "config.yaml", lambda f: _dump_yaml(job.as_dict(), f), mode="w")
    sets = _load_sets(job)
    energies = getattr(sets.train[0], "energy", None) is not None
    model = _build_model(job, sets, energies)
    transform = _transform(job, model)
    for data in (sets.train, sets.val, *sets.tests.values()):
        data.transform = transform
    _fit_scales(model, job.model, sets.train)
    cfg = _train_config(job, model, energies)
    meta = {"job": job.as_dict()}
    result = train(model, sets.train, sets.val, cfg, out, resume=job.resume, metadata=meta)
    if has_energy(model) and energies and model.config.get("e0s") is None:
        refit_energy_shift(model, sets.train, cfg.eval_batch_size)
    save_model(model, out / "model.pt", metadata=meta)
    tables = {"validation": error_table(model, sets.val, cfg.eval_batch_size)}
    for name, data in sets.tests.items():
        tables[name] = error_table(model, data, cfg.eval_batch_size)
    metrics = {
        "structures": {"train": len(sets.train), "val": len(sets.val)}
        | {name: len(d) for name, d in sets.tests.items()},
        "model": job.model,
        "model_config": model.config,
        "best_val_force_rmse": result.best_val_rmse,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": result.elapsed,
        "stop_reason": result.stop_reason,
        "errors": tables,
        "units": "meV/atom, meV per structure, meV/A, meV/A^3",
    }
    atomic_write(out / "metrics.json", lambda f: json.dump(metrics, f, indent=1), mode="w")
    metrics["table"] = format_table(tables)
    return metrics


def _dump_yaml(values: dict[str, Any], f: Any) -> None:
    import yaml

    yaml.safe_dump(values, f, sort_keys=False)


def _print_config(job: TrainJob) -> None:
    if job.progress:
        given = {k: v for k, v in job.as_dict().items() if v not in (None, (), [], {})}
        print("uenn-geo train: " + json.dumps(given), file=sys.stderr)


def _load(job: TrainJob, spec: str) -> Any:
    keys = {"energy_key": job.energy_key, "forces_key": job.forces_key}
    return load_dataset(spec, job.root, stress_key=job.stress_key, **keys)


def _split(data: Any, fractions: list[float], seed: int) -> list[Any]:
    """Disjoint random parts of ``data`` of the given fractions, then the rest."""
    n = len(data)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for fraction in fractions:
        size = max(1, round(fraction * n)) if fraction > 0 else 0
        parts.append(data[perm[start : start + size]])
        start += size
    parts.append(data[perm[start:]])
    return parts


def _load_sets(job: TrainJob) -> _Sets:
    source = job.data if job.data is not None else job.train_file
    full = _load(job, source)
    from_file = Path(source).is_file()
    keep = [k for k in range(len(full)) if not is_isolated_atom(full[k])]
    isolated = isolated_atom_energies((full[k] for k in range(len(full))), source)
    full = full[torch.tensor(keep)] if len(keep) < len(full) else full
    if len(full) < 2:
        raise ValueError(f"{source} holds {len(full)} structures; at least 2 are needed")
    test_fraction = job.test_fraction
    if test_fraction is None:
        test_fraction = 0.1 if job.data is not None and not job.test_files else 0.0
    tests = {Path(f).stem: _load(job, f) for f in job.test_files}
    if job.valid_file is not None:
        val = _load(job, job.valid_file)
        test, train_set = _split(full, [test_fraction], job.seed)
    else:
        val, test, train_set = _split(full, [job.val_fraction, test_fraction], job.seed)
    if test_fraction > 0:
        tests = {"test": test} | tests
    if len(train_set) < 1:
        raise ValueError(f"{source}: no structures left for training after the split")
    return _Sets(train_set, val, tests, isolated, from_file)


def _build_model(job: TrainJob, sets: _Sets, energies: bool) -> nn.Module:
    kwargs = dict(job.model_kwargs)
    if job.dtype is not None:
        kwargs["dtype"] = job.dtype
    if job.model == "graph":
        species = sorted({int(z) for z in sets.train._data.z.unique().tolist()})
        kwargs.setdefault("atomic_numbers", species)
        if sets.from_file:  # defaults for molecules and materials, not argon's
            kwargs.setdefault("cutoff", FILE_CUTOFF)
            kwargs.setdefault("pair_term", False)
            kwargs.setdefault("conservative", energies and not job.direct)
        if job.cutoff is not None:
            kwargs["cutoff"] = job.cutoff
        if kwargs.get("conservative") and energies:
            e0s = resolve_e0s(job.e0s, sets.train, kwargs["atomic_numbers"], sets.isolated)
            if e0s is not None:
                kwargs.setdefault("e0s", e0s)
    elif job.cutoff is not None:
        kwargs["cutoff"] = job.cutoff
    torch.manual_seed(job.seed)
    try:
        return MODELS[job.model](**kwargs)
    except TypeError as err:  # a misspelt keyword
        raise ValueError(f"--model-kwargs for the {job.model} model: {err}") from err


def _transform(job: TrainJob, model: nn.Module) -> Any:
    cast = CastFloats(model.dtype)
    if not job.config_type_weights:
        return cast
    return Compose([cast, ConfigTypeWeights(job.config_type_weights)])


def _fit_scales(model: nn.Module, name: str, train_set: Any) -> None:
    if name == "paper":  # the paper's model takes structures of equal size, dense
        pos = torch.stack([d.pos for d in train_set])
        forces = torch.stack([d.forces for d in train_set])
        model.fit_scales(DenseForceData(pos, forces))
    else:
        model.fit_scales(train_set)


def _train_config(job: TrainJob, model: nn.Module, energies: bool) -> TrainConfig:
    with_energy = has_energy(model) and energies
    energy_weight = job.energy_weight
    if energy_weight is None:
        energy_weight = 1.0 if with_energy else 0.0
    if energy_weight > 0 and not with_energy:
        raise ValueError(
            "--energy-weight > 0 needs energies in the data and a model with an energy "
            "(drop --direct)"
        )
    return TrainConfig(
        lr=job.lr,
        batch_size=job.batch_size,
        time_limit=job.time_limit,
        max_epochs=job.max_epochs,
        seed=job.seed,
        eval_batch_size=4 * job.batch_size,
        energy_weight=energy_weight,
        stress_weight=job.stress_weight,
        stage_two=job.stage_two,
        stage_two_energy_weight=job.stage_two_energy_weight,
        progress=job.progress,
    )
