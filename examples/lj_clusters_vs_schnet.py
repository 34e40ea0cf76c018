r"""Our graph force field against PyG's SchNet on argon clusters, at equal training time.

Both models train for ``--budget`` seconds each (validation included, as
:func:`uenn_geo.train.train` counts it) on the same 1,800 thermal Lennard-Jones argon clusters
of 3-55 atoms (:class:`~uenn_geo.data.LJClusters` with its default parameters, split 60/20/20
by :meth:`~uenn_geo.data.LJClusters.split`), through the same loop with the same settings:

* :class:`~uenn_geo.models.UENNForceField` with its defaults (two blocks, cutoff 10.2 A,
  forces predicted directly);
* :class:`~uenn_geo.models.schnet.SchNetForceField`: PyG's SchNet with 3 interactions, width
  64, 64 filters, 50 Gaussians, cutoff 10.2 A and every neighbour within it, forces
  :math:`-\partial E / \partial \mathbf{r}`.

Training: AdamW (no weight decay) at lr 2e-3 with a cosine schedule over the budget, EMA of
the weights (0.999), the best epoch by validation force RMSE kept: the defaults of
:class:`~uenn_geo.train.TrainConfig`, untuned for either model. Batch size: 16 clusters for
both (the ``uenn-geo train`` default); on one thread both models process about the same
atoms per second at 16 and at 64 clusters per step, so the smaller batch gives 4x the steps
for the same time. Float32 for both (:class:`~uenn_geo.data.CastFloats`).

The table gives the force RMSE (eV/A) on the held-out test clusters and on larger clusters of
56-79 atoms that no model saw (``LJClusters(min_atoms=56, max_atoms=79, seed=1,
num_configs=300)``), the force spread (RMS force component) of each set, steps, epochs,
seconds and training atoms per second. Run::

    python examples/lj_clusters_vs_schnet.py --budget 600 --out runs/lj_vs_schnet

It writes ``results.json`` (with learning curves and load averages) and ``results.md`` to
``--out`` and the trained models to ``--out/<model>/model.pt``.

Units: Angstrom, eV, eV/A; times in seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uenn_geo.data import CastFloats, LJClusters
from uenn_geo.files import atomic_write
from uenn_geo.models import SchNetForceField, UENNForceField
from uenn_geo.train import TrainConfig, evaluate, train

DTYPE = torch.float32


@dataclass(frozen=True)
class ModelSpec:
    """A model to compare: how to build it and its batch size (structures per step)."""

    build: Callable[[], nn.Module]
    batch_size: int = 16
    lr: float = 2e-3


#: The models of this comparison, by name.
MODELS: dict[str, ModelSpec] = {
    "uenn": ModelSpec(lambda: UENNForceField(dtype="float32")),
    "schnet": ModelSpec(
        lambda: SchNetForceField(
            cutoff=10.2, hidden_channels=64, num_filters=64, num_interactions=3, num_gaussians=50
        )
    ),
}


@dataclass(frozen=True)
class Config:
    """Settings of :func:`run`."""

    budget: float = 600.0
    models: tuple[str, ...] = tuple(MODELS)
    root: str = "datasets"
    out: str = "runs/lj_vs_schnet"
    threads: int = 1
    seed: int = 0
    #: Keyword arguments that replace UENNForceField's defaults (diagnostics, e.g. num_basis).
    uenn_kwargs: dict[str, Any] = field(default_factory=dict)


def force_spread(data: Any) -> float:
    """RMS force component of a data set (eV/A)."""
    f = torch.cat([d.forces.reshape(-1).double() for d in data])
    return float(f.square().mean().sqrt())


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def train_and_test(
    name: str,
    spec: ModelSpec,
    train_set: Any,
    val_set: Any,
    tests: dict[str, Any],
    budget: float,
    out: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Build, fit scales, train for ``budget`` seconds, evaluate on every set of ``tests``."""
    torch.manual_seed(seed)
    model = spec.build()
    model.fit_scales(train_set)
    cfg = TrainConfig(
        lr=spec.lr,
        batch_size=spec.batch_size,
        time_limit=budget,
        seed=seed,
        eval_batch_size=8 * spec.batch_size,
        progress=False,
    )
    load_start = load_average()
    start = time.perf_counter()
    result = train(model, train_set, val_set, cfg, out / name, resume=False)
    wall = time.perf_counter() - start
    row: dict[str, Any] = {
        "model": name,
        "config": model.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "steps": result.steps,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "seconds": round(result.elapsed, 1),
        "wall_seconds": round(wall, 1),
        "load_average_start": load_start,
        "load_average_end": load_average(),
    }
    train_seconds = sum(r["epoch_time_s"] for r in result.history)
    atoms = sum(int(d.num_nodes) for d in train_set)
    batches = math.ceil(len(train_set) / spec.batch_size)
    row["train_seconds"] = round(train_seconds, 1)
    row["train_atoms_per_s"] = round(result.steps * atoms / batches / max(train_seconds, 1e-9))
    row["best_val_force_rmse"] = result.best_val_rmse
    for key, data in tests.items():
        row[f"{key}_force_rmse"] = evaluate(model, data, cfg.eval_batch_size)["force_rmse"]
    row["history"] = [
        {"epoch": r["epoch"], "elapsed_s": r["elapsed_s"], "val_force_rmse": r["val_force_rmse"]}
        for r in result.history
    ]
    return row


def learning_curve(history: list[dict[str, float]], points: int = 6) -> str:
    """Validation RMSE at a few epochs: ``t=12s 1.2e-03, ...``."""
    if not history:
        return ""
    idx = sorted({round(k * (len(history) - 1) / (points - 1)) for k in range(points)})
    return ", ".join(
        f"{history[k]['elapsed_s']:.0f}s {history[k]['val_force_rmse']:.2e}" for k in idx
    )


def format_markdown(report: dict[str, Any]) -> str:
    """The rows of ``report`` as a markdown table, with the sets' force spreads."""
    sets = report["test_sets"]
    head = ["model", "params", "batch", "steps", "epochs", "seconds", "train atoms/s"]
    head += [f"{k} RMSE (eV/A)" for k in sets] + [f"{k} RMSE / spread" for k in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [
            r["model"],
            f"{r['parameters']:,}",
            str(r["batch_size"]),
            str(r["steps"]),
            str(r["epochs"]),
            f"{r['seconds']:.0f}",
            f"{r['train_atoms_per_s']:,}",
        ]
        cells += [f"{r[f'{k}_force_rmse']:.3e}" for k in sets]
        cells += [f"{r[f'{k}_force_rmse'] / s['force_spread']:.2%}" for k, s in sets.items()]
        lines.append("| " + " | ".join(cells) + " |")
    spreads = ", ".join(
        f"{k}: {s['structures']} structures, force spread {s['force_spread']:.4f} eV/A"
        for k, s in sets.items()
    )
    lines.append("")
    lines.append(f"Sets: {spreads}.")
    lines.append("")
    lines.append("Validation force RMSE (eV/A) along training (elapsed s, RMSE):")
    lines.append("")
    for r in report["rows"]:
        lines.append(f"- {r['model']}: {learning_curve(r['history'])}")
    m = report["machine"]
    lines.append("")
    lines.append(
        f"Budget {report['config']['budget']:.0f} s per model, {m['threads']} torch thread(s), "
        f"{m['cpus']} CPUs, load average at start {m['load_average_start']} "
        f"(1/5/15 min), at end {m['load_average_end']}; torch {m['torch']}."
    )
    return "\n".join(lines)


def machine(threads: int) -> dict[str, Any]:
    return {
        "threads": threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": load_average(),
    }


def write_report(report: dict[str, Any], out: Path) -> str:
    """Write ``results.json`` and ``results.md`` atomically; return the markdown."""
    report["machine"]["load_average_end"] = load_average()
    text = format_markdown(report)
    atomic_write(out / "results.json", lambda f: json.dump(report, f, indent=1), mode="w")
    atomic_write(out / "results.md", lambda f: f.write(text + "\n"), mode="w")
    return text


def run(cfg: Config) -> dict[str, Any]:
    """Train every model of ``cfg.models`` for ``cfg.budget`` s; return the report."""
    unknown = sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(MODELS)}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    root = str(Path(cfg.root) / "lj_clusters")
    cast = CastFloats(DTYPE)
    data = LJClusters(root, transform=cast, log=False)
    train_set, val_set, test_set = data.split()
    larger = LJClusters(
        root, min_atoms=56, max_atoms=79, seed=1, num_configs=300, transform=cast, log=False
    )
    tests = {"test": test_set, "larger": larger}
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": machine(cfg.threads),
        "structures": {"train": len(train_set), "val": len(val_set)},
        "test_sets": {
            k: {"structures": len(v), "force_spread": force_spread(v)} for k, v in tests.items()
        },
        "rows": [],
    }
    for name in cfg.models:
        spec = MODELS[name]
        if name == "uenn" and cfg.uenn_kwargs:
            kwargs = {"dtype": "float32", **cfg.uenn_kwargs}
            spec = ModelSpec(partial(UENNForceField, **kwargs), spec.batch_size, spec.lr)
        row = train_and_test(name, spec, train_set, val_set, tests, cfg.budget, out, cfg.seed)
        report["rows"].append(row)
        print(f"{name}: test {row['test_force_rmse']:.3e} eV/A after {row['steps']} steps")
    return report


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=d.budget, help="seconds per model")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(d.models))
    p.add_argument("--root", default=d.root, help="data sets directory")
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--uenn-kwargs",
        type=json.loads,
        default={},
        help="JSON replacing UENNForceField defaults, e.g. '{\"num_basis\": 50}' (diagnostics)",
    )
    a = p.parse_args(argv)
    return Config(a.budget, tuple(a.models), a.root, a.out, a.threads, a.seed, a.uenn_kwargs)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    report = run(cfg)
    print(write_report(report, Path(cfg.out)))


if __name__ == "__main__":
    main()
