"""The steps of ``uenn-geo train`` (:func:`uenn_geo.cli.train.run_training`): data sets, E0s,
the model with defaults that fit the data, training, the energy refit and the error tables.

The output directory is checked to be writable and locked for the run
(:class:`uenn_geo.files.RunLock`), stale temporaries are swept, and the checkpoint records the
run's identity (:func:`_identity`: data hashes, split, settings), which a resume must match."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.transforms import Compose

from uenn_geo.cli import data_stats
from uenn_geo.cli.train_settings import COMPILE_MAX_ATOMS, COMPILE_MIN_SECONDS, TrainJob
from uenn_geo.data.e0s import is_isolated_atom, isolated_atom_energies, resolve_e0s
from uenn_geo.data.extxyz import file_sha1
from uenn_geo.data.hdf5 import SETS, H5Frames, is_prepared
from uenn_geo.data.registry import load_dataset
from uenn_geo.data.transforms import CastFloats, ConfigTypeWeights
from uenn_geo.files import RunLock, atomic_write, check_output_dir, sweep_temporaries, write_json
from uenn_geo.models import MODELS, UENNForceField, save_model
from uenn_geo.models.scales import refit_energy_shift, set_scales_from_statistics
from uenn_geo.neighbors import RadiusGraph
from uenn_geo.train import DenseForceData, TrainConfig, distributed, train
from uenn_geo.train.checkpoint import RESUMABLE_FIELDS
from uenn_geo.train.dense import StackedGraphs
from uenn_geo.train.loss import has_energy
from uenn_geo.train.metrics import format_table
from uenn_geo.train.packing import PackedGraphs, chunk_size

__all__ = [
    "run_job",
    "FILE_CUTOFF",
    "FILE_ENERGY_WEIGHT",
    "FILE_GRAD_CLIP",
    "FILE_MODEL",
    "SMALL_MOLECULE_MODEL",
]

#: The cutoff of models trained on files (Angstrom): the usual one for molecules and
#: materials (MACE, NequIP and Allegro use 4-6 A), where the first neighbour shells lie.
FILE_CUTOFF = 5.0

#: The force field's options for files besides the cutoff and the energy: what measurably
#: lowered the errors on rMD17 ethanol and EMT copper (docs/molecules.md, docs/training.md):
#: weights per species pair, 16 Gaussians, separate scalar weights, no pair term (it
#: extrapolates violently), smooth directions in the biases (eq. 8's turn abruptly). The
#: neighbour sums are divided by the square root of the training set's mean neighbour count
#: (``avg_num_neighbors``, from the data in :func:`_build_model`): on copper (32) 17 % lower
#: test force RMSE at 600 s, on 3BPA (17) level (docs/training.md, twenty-first round).
FILE_MODEL = {
    "pair_term": False,
    "species_pairs": True,
    "num_basis": 16,
    "separate_scalars": True,
    "bias_delta": 0.3,
}

#: On top of :data:`FILE_MODEL` for files of small molecules (at most
#: :data:`~uenn_geo.cli.train_settings.COMPILE_MAX_ATOMS` atoms a structure on average): a
#: third block and the neighbours' vectors coupled to the bond at orders two and three. On
#: rMD17 ethanol the third block with order two lowered the test force errors at 600 s and at
#: two hours (docs/molecules.md, tenth round), order three again in two seeds at each budget
#: (twenty-third and twenty-fourth rounds); on EMT copper (30 atoms) a third block and order
#: two were each worse at 600 s. Eq. 8 and Gaussians from 0: smooth directions and r_min were
#: level at 600 s and worse at two hours (twentieth round). Neighbour sums as they are: over
#: sqrt(8) they were 5 % worse at two hours on ethanol (twenty-second round).
SMALL_MOLECULE_MODEL = {
    "num_blocks": 3,
    "bond_vectors": True,
    "bond_cubes": True,
    "bias_delta": 0.0,
    "r_min": 0.0,
    "avg_num_neighbors": None,
}


#: The weight of the per-atom energy term when the model has an energy and the data
#: energies: both in units of the force scale (eV/A, and eV per atom over 1 A), the ratio of
#: MACE's default loss (energy 1, forces 100, in eV and eV/A). On rMD17 ethanol it lowered the
#: test force and energy errors against a weight of 1 (docs/molecules.md, "Energy weight").
FILE_ENERGY_WEIGHT = 0.01

#: The gradient-norm clip of runs on files (``--grad-clip``; 0 turns it off): the loss is in
#: units of the force scale, so gradient norms are alike across data sets (median about 0.1
#: on EMT copper, 0.2 on rMD17 ethanol, with rare spikes of 10-200 that Adam carries for
#: thousands of steps). On copper it removed the loss spikes of 600-s runs and lowered the
#: test force RMSE (docs/training.md, "Clipping the gradient").
FILE_GRAD_CLIP = 0.3

#: In-memory sets whose neighbour lists hold at most this many edges in all (about 0.5 GB)
#: get them built once, before training, instead of in every step: a frame's positions never
#: change. On rMD17 ethanol the list was 7 % of a compiled training step (docs/training.md).
STORED_EDGES_LIMIT = 20_000_000


@dataclass
class _Sets:
    train: Any
    val: Any
    tests: dict[str, Any] = field(default_factory=dict)
    isolated: dict[int, float] = field(default_factory=dict)
    from_file: bool = True
    stats: dict[str, Any] | None = None  # a prepared (HDF5) training set's statistics


#: Options that may change when a run is resumed (limits, display, where files are), besides
#: the data files, which are identified by their hashes instead of their paths.
_RESUMABLE_OPTIONS = frozenset(
    {"out", "root", "resume", "progress", "time_limit", "max_epochs", "test_files"}
    | {"data", "train_file", "valid_file"}
    | {"device", "num_workers", "compile"}
    | {"committee", "split_seed"}  # the split itself is part of the identity (its hash)
)


def run_job(job: TrainJob) -> dict[str, Any]:
    device = distributed.init_from_env(job.device)  # one of several ranks under torchrun
    try:
        if not distributed.is_main():  # rank 0 owns the directory and writes the files
            metrics = _run_locked(replace(job, progress=False), Path(job.out), device)
        else:
            out = check_output_dir(job.out)
            with RunLock(out, "train"):
                sweep_temporaries(out)
                metrics = _run_locked(job, out, device)
    except BaseException:
        distributed.teardown(wait=False)
        raise
    distributed.teardown()
    return metrics


def _run_locked(job: TrainJob, out: Path, device: Any = "cpu") -> dict[str, Any]:
    with distributed.main_first():  # rank 0 fills the processed-data cache
        sets = _load_sets(job)
    mean_atoms = data_stats.mean_atoms(sets.train)
    started = _started(job, out)  # the checkpoint a resumed run continues, if any
    energies = getattr(sets.train[0], "energy", None) is not None
    compositions = data_stats.compositions(sets.train)
    job = _resolved(job, sets.from_file, started, (mean_atoms, compositions, energies))
    _print_config(job)
    if distributed.is_main():
        atomic_write(out / "config.yaml", lambda f: _dump_yaml(job.as_dict(), f), mode="w")
    model = _build_model(job, sets, energies, mean_atoms)
    if started is not None:
        model = _model_as_started(model, job, started["model"])
    transform = _transform(job, model)
    for data in (sets.train, sets.val, *sets.tests.values()):
        data.transform = transform
    identity = _identity(job, sets)
    if sets.stats is None and job.model != "paper":  # in memory: lists built once
        sets = _with_edges(sets, model.cutoff)
        sets = replace(sets, train=_stacked(sets.train), val=_stacked(sets.val))
    if sets.stats is None:  # a prepared set is not read at start (no pass over the data)
        _warn_no_edges(model, sets.train)
    _fit_scales(model, job.model, sets.train)
    refit = has_energy(model) and energies  # E0s: the shift b_z of atoms with neighbours
    if refit and sets.stats is None:  # least squares, before training (and after it)
        refit_energy_shift(model, sets.train, 4 * job.batch_size)
    model.to(device)
    # lists stored: batches of one shape possible; auto compiles them for our model on files
    # (measured on copper and 3BPA; built-in sets keep their eager steps; SchNet's autograd
    # forces need a double backward, which compiled graphs lack)
    one_shape = sets.from_file and isinstance(model, UENNForceField)
    one_shape = one_shape and PackedGraphs.fits(sets.train)
    cfg = _train_config(job, model, energies, mean_atoms, one_shape, sets.from_file, compositions)
    if started is not None:
        cfg = _settings_as_started(cfg, started["train_config"])
    sets, cfg = _one_shape(sets, cfg, model)
    meta = {"job": job.as_dict()}
    result = train(
        model, sets.train, sets.val, cfg, out, job.resume, metadata=meta, identity=identity
    )
    model.cpu()
    if refit:  # forces do not see constants per atom: put the energies right
        refit_energy_shift(model, sets.train, cfg.eval_batch_size)
    if distributed.is_main():
        save_model(model, out / "model.pt", metadata=meta)
    tables = {"validation": distributed.error_table(model, sets.val, cfg.eval_batch_size)}
    for name, data in sets.tests.items():
        tables[name] = distributed.error_table(model, data, cfg.eval_batch_size)
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
    if distributed.is_main():
        write_json(out / "metrics.json", metrics)  # NaN and inf as null
    metrics["table"] = format_table(tables)
    return metrics


def _resolved(
    job: TrainJob,
    from_file: bool,
    started: dict[str, Any] | None,
    data: tuple[float, int, bool],
) -> TrainJob:
    """``job`` with the defaults that depend on the data (``data``: mean atoms a structure,
    compositions, energies or not) resolved: batch size, clip, optimiser, stage two, as
    they were when a resumed run (``started``) began."""
    mean_atoms, compositions, energies = data
    batch_size = job.resolved_batch_size(from_file, mean_atoms)
    grad_clip = _grad_clip(job, from_file) or 0.0
    if started is not None:  # defaults as they were when the run started
        batch_size = job.batch_size or started["identity"].get("--batch-size", batch_size)
        if job.grad_clip is None:
            grad_clip = started["identity"].get("--grad-clip", grad_clip)
    stage_two = job.resolved_stage_two(from_file, compositions, energies and not job.direct)
    if started is not None:  # stage two as the run started (its defaults may have changed)
        fraction, weight = stage_two
        if job.stage_two is None:
            fraction = started["identity"].get("--stage-two", fraction)
        if job.stage_two_energy_weight is None:
            weight = started["identity"].get("--stage-two-energy-weight", weight)
        stage_two = (fraction, weight)
    optimizer: str | None = _optimizer(job, from_file)
    if started is not None and job.optimizer is None:  # none: a run from before the option
        optimizer = started["identity"].get("--optimizer")
    return replace(  # as resolved, for the record
        job, batch_size=batch_size, grad_clip=grad_clip, optimizer=optimizer,
        stage_two=stage_two[0], stage_two_energy_weight=stage_two[1],
    )  # fmt: skip


def _started(job: TrainJob, out: Path) -> dict[str, Any] | None:
    """The model record, training settings and identity of the checkpoint that a resumed
    run continues; :obj:`None` when there is none to continue (or it cannot be read: the
    training loop then refuses it, saying why)."""
    path = out / "checkpoint.pt"
    if not job.resume or not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        saved = {"model": ckpt["model"], "train_config": ckpt["train_config"]}
        return saved | {"identity": ckpt.get("identity") or {}}
    except Exception:  # any damage: the training loop's check names it
        return None


def _model_as_started(model: nn.Module, job: TrainJob, record: dict[str, Any]) -> nn.Module:
    """A resumed run's model: the checkpoint's configuration where only defaults of
    ``uenn-geo train`` changed since the run started (a changed option is refused by the
    identity check: the options are part of the run's identity)."""
    if not isinstance(record, dict) or record.get("model") != job.model:
        return model
    cls = MODELS[job.model]
    config = {**getattr(cls, "legacy_config", {}), **record["config"]}
    if config == model.config:
        return model
    changed = sorted(
        k for k in config.keys() | model.config.keys() if config.get(k) != model.config.get(k)
    )
    print(
        f"resuming with the model configuration the run started with (today's defaults "
        f"differ in {', '.join(changed)})",
        flush=True,
    )
    torch.manual_seed(job.seed)
    return cls(**config)


def _settings_as_started(cfg: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """A resumed run's training settings: the checkpoint's, but for the limits
    (:data:`~uenn_geo.train.checkpoint.RESUMABLE_FIELDS`)."""
    known = {f for f in TrainConfig.__dataclass_fields__ if f not in RESUMABLE_FIELDS}
    return replace(cfg, **{k: v for k, v in saved.items() if k in known})


def _with_edges(sets: _Sets, cutoff: float, limit: int = STORED_EDGES_LIMIT) -> _Sets:
    """``sets`` as lists of transformed structures carrying their neighbour lists
    (:class:`~uenn_geo.neighbors.RadiusGraph`), or as they are when the lists would hold more
    than ``limit`` edges. Image shifts are kept only where some structure is periodic (so that
    all collate alike)."""
    graph, parts, total = RadiusGraph(cutoff), [], 0
    for part in (sets.train, sets.val, *sets.tests.values()):
        frames = []
        for data in part:
            frames.append(graph(data))
            total += frames[-1].edge_index.shape[1]
            if total > limit:
                return sets
        if not any(_periodic(d) for d in frames):
            for data in frames:
                del data.shifts
        parts.append(frames)
    tests = dict(zip(sets.tests, parts[2:], strict=True))
    return replace(sets, train=parts[0], val=parts[1], tests=tests)


def _one_shape(sets: _Sets, cfg: TrainConfig, model: nn.Module) -> tuple[_Sets, TrainConfig]:
    """For a compiled step, training batches of one shape where the lists are stored: frames
    of one molecule as they are (the short last batch skipped), other structures packed and
    padded (:class:`PackedGraphs`, in the chunked layout of :class:`UENNForceField`)."""
    if not cfg.compile:
        return sets, cfg
    if _uniform(sets.train):
        return sets, replace(cfg, static_shapes=True)
    if PackedGraphs.fits(sets.train):
        chunk = chunk_size(sets.train) if isinstance(model, UENNForceField) else None
        packed = PackedGraphs(sets.train, model.cutoff, chunk)
        return replace(sets, train=packed), replace(cfg, static_shapes=True)
    return sets, cfg


def _stacked(data: Any) -> Any:
    """``data`` as :class:`~uenn_geo.train.dense.StackedGraphs` (batched by indexing) when
    it is a list of graphs of one shape, else as it is."""
    return StackedGraphs(data) if StackedGraphs.fits(data) else data


def _uniform(data: Any) -> bool:
    """Whether ``data`` is a list of structures that all have the same number of atoms and
    of stored edges (frames of one small molecule, every pair within the cutoff), so that
    every full batch has the same shapes."""
    if not isinstance(data, list) or not data:
        return False
    first = data[0]
    if getattr(first, "edge_index", None) is None:
        return False
    shape = (first.num_nodes, first.edge_index.shape[1])
    return all((d.num_nodes, d.edge_index.shape[1]) == shape for d in data)


def _periodic(data: Any) -> bool:
    pbc = getattr(data, "pbc", None)
    return getattr(data, "cell", None) is not None and (pbc is None or bool(pbc.any()))


def _identity(job: TrainJob, sets: _Sets) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: the data (SHA-1 of each file, a
    built-in set's name and size), the split (a hash of the indices) and every option but
    the limits and paths."""
    identity: dict[str, Any] = {}
    for flag, spec in (("--data", job.data), ("--train-file", job.train_file)):
        if spec is not None and Path(spec).is_file():
            identity[f"{flag} (SHA-1 of the file)"] = file_sha1(spec)
        elif spec is not None:
            size = len(sets.train) + len(sets.val) + len(sets.tests.get("test", ()))
            identity[f"{flag} (built-in set, structures)"] = f"{spec}, {size}"
    if job.valid_file is not None:
        identity["--valid-file (SHA-1 of the file)"] = file_sha1(job.valid_file)
    parts = [[int(k) for k in part.indices()] for part in (sets.train, sets.val)]
    split = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]
    # the key of older checkpoints (the split's seed is --split-seed, default --seed)
    identity["split (--val-fraction, --test-fraction, --seed)"] = split
    for name, value in job.as_dict().items():
        if name not in _RESUMABLE_OPTIONS:
            identity["--" + name.replace("_", "-")] = value
    return identity


def _warn_no_edges(model: nn.Module, train_set: Any) -> None:
    """Warn when structures have no pair of atoms within the model's cutoff (such graphs
    have no edges: the model sees isolated atoms and learns nothing from them)."""
    from uenn_geo.neighbors import radius_graph

    cutoff = getattr(model, "cutoff", None)
    if cutoff is None:
        return
    empty = 0
    for data in train_set:
        cell, pbc = getattr(data, "cell", None), getattr(data, "pbc", None)
        if data.pos.shape[0] < 2 and (pbc is None or not bool(pbc.any())):
            continue
        edges = radius_graph(data.pos, cutoff, cell=cell, pbc=pbc, return_shifts=False)
        empty += int(edges.shape[1] == 0)
    if empty:
        warnings.warn(
            f"{empty} of {len(train_set)} training structures have no pair of atoms within the "
            f"cutoff {cutoff:g} A: their graphs have no edges and teach the model nothing; "
            "raise --cutoff",
            UserWarning,
            stacklevel=3,
        )


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
    if is_prepared(source):
        return _prepared_sets(job, source)
    full = _load(job, source)
    from_file = Path(source).is_file()
    keep = [k for k in range(len(full)) if not is_isolated_atom(full[k])]
    isolated = isolated_atom_energies((full[k] for k in range(len(full))), source)
    full = full[torch.tensor(keep)] if len(keep) < len(full) else full
    if len(full) < 2:
        raise ValueError(f"{source} holds {len(full)} structures; at least 2 are needed")
    test_fraction, seed = job.test_fraction, job.resolved_split_seed
    if test_fraction is None:
        test_fraction = 0.1 if job.data is not None and not job.test_files else 0.0
    tests = {Path(f).stem: _load(job, f) for f in job.test_files}
    if job.valid_file is not None:
        val = _load(job, job.valid_file)
        test, train_set = _split(full, [test_fraction], seed)
    else:
        val, test, train_set = _split(full, [job.val_fraction, test_fraction], seed)
    if test_fraction > 0:
        tests = {"test": test} | tests
    if len(train_set) < 1:
        raise ValueError(f"{source}: no structures left for training after the split")
    return _Sets(train_set, val, tests, isolated, from_file)


def _prepared_sets(job: TrainJob, source: str) -> _Sets:
    """The sets of a ``uenn-geo prepare`` directory, read lazily, with their statistics."""
    parts = {name: H5Frames(source, name, num_workers=job.num_workers) for name in SETS}
    val = _load(job, job.valid_file) if job.valid_file is not None else parts["val"]
    if len(val) == 0:
        raise ValueError(f"{source} has no validation frames: prepare with --val-fraction > 0")
    tests = {"test": parts["test"]} if len(parts["test"]) else {}
    tests |= {Path(f).stem: _load(job, f) for f in job.test_files}
    isolated = {int(z): e for z, e in parts["train"].meta["isolated_e0s"].items()}
    return _Sets(parts["train"], val, tests, isolated, True, parts["train"].stats)


def _build_model(job: TrainJob, sets: _Sets, energies: bool, mean_atoms: float) -> nn.Module:
    kwargs = dict(job.model_kwargs)
    if job.dtype is not None:
        kwargs["dtype"] = job.dtype
    if job.model == "graph":
        if sets.stats is not None:
            species = list(sets.stats["species"])
        else:
            species = sorted({int(z) for z in sets.train._data.z.unique().tolist()})
        kwargs.setdefault("atomic_numbers", species)
        missing = sorted(set(species) - {int(z) for z in kwargs["atomic_numbers"]})
        if missing:  # checked here, before any step: compiled steps skip the check
            raise ValueError(
                f"the training set has atomic numbers {missing} that --model-kwargs "
                f"atomic_numbers {list(kwargs['atomic_numbers'])} leaves out; add them or "
                "drop atomic_numbers (the species of the data are the default)"
            )
        if sets.from_file:  # defaults for molecules and materials, not argon's
            small = SMALL_MOLECULE_MODEL if mean_atoms <= COMPILE_MAX_ATOMS else {}
            one = job.one_element_model(species, bool(small), kwargs)
            kwargs = FILE_MODEL | small | one | kwargs
            kwargs.setdefault("cutoff", FILE_CUTOFF)
            cutoff = job.cutoff or kwargs["cutoff"]
            if "r_min" not in kwargs:
                kwargs["r_min"] = data_stats.gaussians_start(sets.train, cutoff)
            if "avg_num_neighbors" not in kwargs:
                kwargs["avg_num_neighbors"] = data_stats.mean_neighbours(sets.train, cutoff)
            kwargs.setdefault("conservative", energies and not job.direct)
        if job.cutoff is not None:
            kwargs["cutoff"] = job.cutoff
        if kwargs.get("conservative") and energies:
            if sets.stats is not None and job.e0s == "average":  # stored least squares
                e0s = {int(z): e for z, e in sets.stats["e0s_lstsq"].items()}
            else:
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
    stats = getattr(train_set, "stats", None)  # a prepared set: from its stored statistics
    if stats is not None:
        shifts = stats["e0s_lstsq"]
        shifts = None if shifts is None else {int(z): e for z, e in shifts.items()}
        set_scales_from_statistics(model, stats["force_rms"], shifts)
        return
    if name == "paper":  # the paper's model takes structures of equal size, dense
        pos = torch.stack([d.pos for d in train_set])
        forces = torch.stack([d.forces for d in train_set])
        model.fit_scales(DenseForceData(pos, forces))
    else:
        model.fit_scales(train_set)


def _train_config(
    job: TrainJob,
    model: nn.Module,
    energies: bool,
    mean_atoms: float = 0.0,
    one_shape: bool = False,
    from_file: bool = False,
    compositions: int = 1,
) -> TrainConfig:
    with_energy = has_energy(model) and energies
    energy_weight = job.energy_weight
    if energy_weight is None:
        energy_weight = FILE_ENERGY_WEIGHT if with_energy else 0.0
    if energy_weight > 0 and not with_energy:
        raise ValueError(
            "--energy-weight > 0 needs energies in the data and a model with an energy "
            "(drop --direct)"
        )
    batch = job.resolved_batch_size(True, mean_atoms)
    stage_two, stage_weight = job.resolved_stage_two(from_file, compositions, with_energy)
    return TrainConfig(
        optimizer=_optimizer(job, from_file),
        muon_nd_as=job.resolved_muon_nd_as(from_file, getattr(model, "num_species", 0)),
        lr=job.lr,
        lr_final=job.lr_final,
        weight_decay=job.weight_decay,
        ema_decay=job.ema_decay or None,
        grad_clip=_grad_clip(job, from_file),
        amsgrad=job.amsgrad,
        batch_size=batch,
        time_limit=job.time_limit,
        max_epochs=job.max_epochs,
        seed=job.seed,
        eval_batch_size=4 * batch,
        energy_weight=energy_weight,
        stress_weight=job.stress_weight,
        stage_two=stage_two or None,  # 0: one stage
        stage_two_energy_weight=stage_weight,
        progress=job.progress,
        compile=_compile(job, mean_atoms, one_shape),
    )


def _optimizer(job: TrainJob, from_file: bool) -> str:
    """``job.optimizer``, by default Muon for the default model on files (measured on rMD17
    ethanol and EMT copper, docs/training.md, "Muon") and Adam otherwise: built-in sets and
    the other models were measured with it, and ``--amsgrad`` is Adam's."""
    muon = from_file and job.model == "graph" and not job.amsgrad
    return job.optimizer or ("muon" if muon else "adam")


def _grad_clip(job: TrainJob, from_file: bool) -> float | None:
    """The gradient-norm clip: ``job.grad_clip`` (0: none), by default
    :data:`FILE_GRAD_CLIP` for files and none for built-in sets (measured without it)."""
    if job.grad_clip is None:
        return FILE_GRAD_CLIP if from_file else None
    return job.grad_clip or None


def _compile(job: TrainJob, mean_atoms: float, one_shape: bool = False) -> bool:
    """Whether the training step runs through :func:`torch.compile` (``job.compile``), for
    structures of ``mean_atoms`` atoms on average; ``one_shape``: their neighbour lists are
    stored, so that the batches can all have one shape (:class:`PackedGraphs`)."""
    if job.compile == "auto":
        by_time = job.time_limit is not None and job.max_epochs is None
        long = by_time and job.time_limit >= COMPILE_MIN_SECONDS
        return long and (mean_atoms <= COMPILE_MAX_ATOMS or one_shape)
    return job.compile in (True, "yes")
