r"""The structures of ``uenn-geo bench``: argon boxes, an EMT copper box and ethanol.

* ``argon``: periodic fcc argon at Rahman's 1.374 g/cm\ :sup:`3`, displaced at random
  (:func:`~uenn_geo.data.structures.argon_fcc`), at the benchmark cutoff (10.2 A), one box per
  size;
* ``copper``: periodic fcc copper (a = 3.61 A, the lattice of ASE's EMT), 6 x 6 x 6
  conventional cells (864 atoms) rattled by 0.05 A, at the cutoff of the copper accuracy
  comparison (6 A, ``docs/accuracy.md``);
* ``ethanol``: the first molecule of ``shared/data/ethanol/test.xyz`` (9 atoms, no cell),
  cutoff 5 A;
* ``ethanol32``: the first 32 molecules of that file as one batch (bare networks only: the
  ASE calculator takes one structure).

Each system carries the temperature at which the calculator rows move its atoms between calls
(:class:`~uenn_geo.experiments.bench.paths.MDMotion`). Units: Angstrom, K.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from uenn_geo.constants import ARGON_Z
from uenn_geo.data.structures import argon_fcc
from uenn_geo.dtypes import resolve_dtype
from uenn_geo.experiments.bench.runners import BenchSystem

__all__ = ["SYSTEMS", "ETHANOL_FILE", "make_system", "system_sizes"]

#: Systems the benchmark knows; only ``argon`` takes the ``sizes`` setting.
SYSTEMS = ("argon", "copper", "ethanol", "ethanol32")

COPPER_Z = 29
COPPER_LATTICE = 3.61
COPPER_CUTOFF = 6.0
ETHANOL_CUTOFF = 5.0
ETHANOL_BATCH = 32

#: The ethanol test set (``UENN_ETHANOL_XYZ`` overrides the path).
ETHANOL_FILE = Path(
    os.environ.get(
        "UENN_ETHANOL_XYZ",
        Path(__file__).resolve().parents[4] / "shared/data/ethanol/test.xyz",
    )
)


def system_sizes(name: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Atoms of each box of system ``name`` (argon: ``sizes``; the others: fixed)."""
    if name == "argon":
        return tuple(sorted(sizes))
    return {"copper": (864,), "ethanol": (9,), "ethanol32": (9 * ETHANOL_BATCH,)}[name]


def _tensors(pos, z, cell, device, dtype, batch=None, **kwargs) -> BenchSystem:
    dt = resolve_dtype(dtype)
    pos = torch.as_tensor(np.asarray(pos), dtype=dt, device=device)
    return BenchSystem(
        pos=pos,
        cell=None
        if cell is None
        else torch.as_tensor(cell, dtype=dt, device=device).reshape(1, 3, 3),
        pbc=None if cell is None else torch.ones(1, 3, dtype=torch.bool, device=device),
        z=torch.as_tensor(np.asarray(z), dtype=torch.long, device=device),
        batch=None if batch is None else torch.as_tensor(batch, device=device),
        **kwargs,
    )


def _ethanol(count: int) -> list:
    from ase.io import read

    if not ETHANOL_FILE.is_file():
        raise FileNotFoundError(f"ethanol needs {ETHANOL_FILE} (or UENN_ETHANOL_XYZ)")
    return read(ETHANOL_FILE, index=f":{count}")


def make_system(
    name: str, num_atoms: int, device: str, dtype: str, cutoff: float, seed: int = 0
) -> BenchSystem:
    """The box ``name`` of ``num_atoms`` atoms on ``device`` in ``dtype`` (argon: at
    ``cutoff``; the others at their own cutoff)."""
    if name == "argon":
        pos, cell = argon_fcc(num_atoms, seed=seed)
        z = np.full(num_atoms, ARGON_Z)
        return _tensors(pos, z, cell, device, dtype, cutoff=cutoff, name=name, temperature=94.4)
    if name == "copper":
        from ase.build import bulk

        atoms = bulk("Cu", "fcc", a=COPPER_LATTICE, cubic=True).repeat((6, 6, 6))
        atoms.rattle(0.05, seed=seed)
        return _tensors(
            atoms.positions, atoms.numbers, atoms.cell.array, device, dtype,
            cutoff=COPPER_CUTOFF, name=name, temperature=300.0,
        )  # fmt: skip
    if name in ("ethanol", "ethanol32"):
        mols = _ethanol(1 if name == "ethanol" else ETHANOL_BATCH)
        pos = np.concatenate([m.positions for m in mols])
        z = np.concatenate([m.numbers for m in mols])
        batch = None if len(mols) == 1 else np.repeat(np.arange(len(mols)), [len(m) for m in mols])
        return _tensors(
            pos, z, None, device, dtype, batch=batch,
            cutoff=ETHANOL_CUTOFF, name=name, temperature=300.0,
        )  # fmt: skip
    raise ValueError(f"system must be one of {SYSTEMS}, got {name!r}")
