r"""Many-body copper (ASE's EMT): one graph block against stacked blocks against SchNet.

The effective-medium theory potential of copper (:class:`ase.calculators.emt.EMT`) is not a
sum over pairs: the energy of an atom depends on the electron density its neighbours embed it
in. A single vector graph layer sees each atom's neighbourhood through pair terms only, so
the comparison asks whether stacked blocks beat one block, and how our model's force RMSE
compares with SchNet's at equal training time.

**Data** (cached under ``--root``, default ``datasets/emt_copper/``): Langevin MD with EMT at
300, 600, 900, 1200 and 1500 K (4 fs steps, friction 0.02/fs, 50 steps of equilibration,
then a frame every 5 steps) from rattled (0.05 A) starting structures:

* free clusters: icosahedra of 13 and 55 atoms, a 19-atom octahedron, a 38-atom truncated
  octahedron;
* periodic fcc cells: 32 atoms (2x2x2 cubic), 31 (the same with a vacancy), 27 (3x3x3
  primitive, a triclinic cell smaller than twice the cutoff), 27 atoms strained by +3% and
  -3%.

That is 45 trajectories, whose frames (``--frames``, 3,000 by default, in equal shares) are
written with :func:`uenn_geo.data.write_extxyz` and read back with
:class:`~uenn_geo.data.ExtXYZDataset`, then split 60/20/20 at random
(:func:`~uenn_geo.data.paper.split_indices`). Generation takes a few minutes on one core.

**Models**, each trained for ``--budget`` seconds (validation included) by the same loop
with the same settings as ``lj_clusters_vs_schnet.py`` (AdamW lr 2e-3, cosine schedule over
the budget, EMA 0.999, 16 structures per step, float32), cutoff 6 A for all:

* ``uenn1``, ``uenn2``, ``uenn3``: :class:`~uenn_geo.models.UENNForceField` with 1, 2 and 3
  blocks, otherwise its defaults (direct forces);
* ``schnet``: :class:`~uenn_geo.models.schnet.SchNetForceField`, 3 interactions, width 64,
  50 Gaussians, every neighbour within 6 A.

Run::

    python examples/emt_copper.py --budget 600 --out runs/emt_copper

It prints and writes (``results.json``, ``results.md`` in ``--out``) the test force RMSE
(eV/A), the force spread, steps, epochs, seconds and training atoms per second.

Units: Angstrom, eV, eV/A, K, fs; times in seconds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lj_clusters_vs_schnet import (  # noqa: E402
    ModelSpec,
    force_spread,
    machine,
    train_and_test,
    write_report,
)

from uenn_geo.data import CastFloats, ExtXYZDataset, write_extxyz  # noqa: E402
from uenn_geo.data.paper import split_indices  # noqa: E402
from uenn_geo.models import UENNForceField  # noqa: E402
from uenn_geo.models.schnet import SchNetForceField  # noqa: E402

COPPER_Z = 29
#: EMT's fcc lattice constant of copper is about 3.59 A; ASE's reference value is 3.61.
COPPER_A = 3.61
TEMPERATURES = (300.0, 600.0, 900.0, 1200.0, 1500.0)
CUTOFF = 6.0

MODELS: dict[str, ModelSpec] = {
    **{
        f"uenn{k}": ModelSpec(
            lambda k=k: UENNForceField(
                cutoff=CUTOFF, num_blocks=k, atomic_numbers=[COPPER_Z], dtype="float32"
            )
        )
        for k in (1, 2, 3)
    },
    "schnet": ModelSpec(
        lambda: SchNetForceField(
            cutoff=CUTOFF, hidden_channels=64, num_filters=64, num_interactions=3, num_gaussians=50
        )
    ),
}


def starting_structures() -> dict[str, Any]:
    """The clusters and periodic cells the MD starts from, by name (ASE ``Atoms``)."""
    from ase.build import bulk
    from ase.cluster import Icosahedron, Octahedron

    cubic = bulk("Cu", "fcc", a=COPPER_A, cubic=True).repeat((2, 2, 2))
    vacancy = cubic.copy()
    del vacancy[0]
    structures = {
        "ico13": Icosahedron("Cu", 2),
        "ico55": Icosahedron("Cu", 3),
        "oct19": Octahedron("Cu", 3),
        "toct38": Octahedron("Cu", 4, cutoff=1),
        "fcc32": cubic,
        "vac31": vacancy,
        "prim27": bulk("Cu", "fcc", a=COPPER_A).repeat((3, 3, 3)),
        "prim27+3%": bulk("Cu", "fcc", a=COPPER_A * 1.03).repeat((3, 3, 3)),
        "prim27-3%": bulk("Cu", "fcc", a=COPPER_A * 0.97).repeat((3, 3, 3)),
    }
    for atoms in structures.values():
        if not atoms.pbc.any():
            atoms.center(vacuum=8.0)
            atoms.pbc = False
    return structures


def emt_frames(
    num_frames: int = 3000,
    temperatures: tuple[float, ...] = TEMPERATURES,
    seed: int = 0,
    timestep: float = 4.0,
    equilibrate: int = 50,
    every: int = 5,
    rattle: float = 0.05,
) -> list[Data]:
    r"""Frames of Langevin MD with EMT copper: positions, forces, energy, cell, pbc.

    Args:
        num_frames (int): frames in all, shared equally by the trajectories (default: 3000).
        temperatures (tuple of float): MD temperatures in K.
        seed (int): seed of the rattling, the velocities and the Langevin noise.
        timestep (float): MD time step in fs (default: 4).
        equilibrate (int): steps before the first frame (default: 50).
        every (int): steps between frames (default: 5).
        rattle (float): standard deviation of the initial displacements in A (default: 0.05).
    """
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    runs = [(s, t) for s in starting_structures().values() for t in temperatures]
    per_run = -(-num_frames // len(runs))
    frames: list[Data] = []
    for start, temp in runs:
        atoms = start.copy()
        atoms.calc = EMT()
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
        md = Langevin(
            atoms,
            timestep * units.fs,
            temperature_K=temp,
            friction=0.02 / units.fs,
            fixcm=False,
            rng=rng,
        )
        md.run(equilibrate)
        for _ in range(min(per_run, num_frames - len(frames))):
            md.run(every)
            periodic = bool(atoms.pbc.any())
            data = Data(
                pos=torch.tensor(atoms.positions),
                z=torch.tensor(atoms.numbers),
                forces=torch.tensor(atoms.get_forces()),
                energy=torch.tensor([atoms.get_potential_energy()]),
                pbc=torch.tensor(atoms.pbc).reshape(1, 3),
            )
            if periodic:
                data.cell = torch.tensor(atoms.cell.array).reshape(1, 3, 3)
            frames.append(data)
    return frames


def emt_dataset(root: str | Path, num_frames: int = 3000, seed: int = 0) -> ExtXYZDataset:
    """The cached frames as a data set (generated and written on first use)."""
    root = Path(root)
    path = root / f"emt_copper_n{num_frames}_seed{seed}.extxyz"
    if not path.is_file():
        write_extxyz(path, emt_frames(num_frames, seed=seed))
    return ExtXYZDataset(str(path), root=str(root / path.stem), log=False)


@dataclass(frozen=True)
class Config:
    """Settings of :func:`run`."""

    budget: float = 600.0
    models: tuple[str, ...] = tuple(MODELS)
    frames: int = 3000
    root: str = "datasets/emt_copper"
    out: str = "runs/emt_copper"
    threads: int = 1
    seed: int = 0


def run(cfg: Config) -> dict[str, Any]:
    """Train every model of ``cfg.models`` for ``cfg.budget`` s on the EMT frames."""
    unknown = sorted(set(cfg.models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(MODELS)}")
    torch.set_num_threads(cfg.threads)
    data = emt_dataset(cfg.root, cfg.frames, cfg.seed)
    data.transform = CastFloats(torch.float32)
    idx = split_indices(len(data), cfg.seed)
    train_set, val_set, test_set = data[idx["train"]], data[idx["val"]], data[idx["test"]]
    tests = {"test": test_set}
    out = Path(cfg.out)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": machine(cfg.threads),
        "structures": {"train": len(train_set), "val": len(val_set)},
        "test_sets": {
            "test": {"structures": len(test_set), "force_spread": force_spread(test_set)}
        },
        "rows": [],
    }
    for name in cfg.models:
        row = train_and_test(
            name, MODELS[name], train_set, val_set, tests, cfg.budget, out, cfg.seed
        )
        report["rows"].append(row)
        print(f"{name}: test {row['test_force_rmse']:.3e} eV/A after {row['steps']} steps")
    return report


def parse_args(argv: list[str] | None = None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=d.budget, help="seconds per model")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(d.models))
    p.add_argument("--frames", type=int, default=d.frames, help="MD frames to generate")
    p.add_argument("--root", default=d.root, help="data directory")
    p.add_argument("--out", default=d.out, help="output directory")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    return Config(a.budget, tuple(a.models), a.frames, a.root, a.out, a.threads, a.seed)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    report = run(cfg)
    print(write_report(report, Path(cfg.out)))


if __name__ == "__main__":
    main()
