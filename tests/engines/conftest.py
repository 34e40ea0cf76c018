"""Shared structures and small random models of the engine tests (equality, not accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from uenn_geo.constants import ARGON_MASS
from uenn_geo.models import UENNForceField

SMALL = {
    "cutoff": 4.5,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "dtype": "float64",
    "conservative": True,
}


def make_model(**kwargs) -> UENNForceField:
    model = UENNForceField(**{**SMALL, **kwargs}).eval()
    # forces of a few 0.1 eV/A: NVE stays tame
    (model.energy_scale if model.conservative else model.force_scale).fill_(0.05)
    return model


def liquid(seed: int = 0, velocities: float = 0.0) -> Atoms:
    """8 argon atoms, triclinic periodic cell in LAMMPS' and OpenMM's reduced form."""
    cell = np.array([[7.0, 0.0, 0.0], [0.6, 6.8, 0.0], [0.4, -0.5, 7.2]])
    frac = np.array([[i, j, k] for i in (0, 0.5) for j in (0, 0.5) for k in (0, 0.5)])
    rng = np.random.default_rng(seed)
    atoms = Atoms("Ar8", positions=frac @ cell + rng.normal(scale=0.15, size=(8, 3)))
    atoms.set_cell(cell)
    atoms.pbc = True
    atoms.set_masses([ARGON_MASS] * 8)
    if velocities:
        atoms.set_velocities(rng.normal(scale=velocities, size=(8, 3)))
    return atoms


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture(scope="session")
def model_factory():
    return make_model


@pytest.fixture(scope="module")
def argon_model() -> UENNForceField:
    return make_model()


@pytest.fixture(scope="module")
def organic_model() -> UENNForceField:
    return make_model(atomic_numbers=[1, 6, 8], cutoff=4.0)


@pytest.fixture
def liquid_atoms() -> Atoms:
    return liquid(velocities=0.01)


@pytest.fixture
def ethanol_atoms() -> Atoms:
    return ethanol()


def ase_nve_run(
    model: UENNForceField, atoms: Atoms, steps: int, dt_fs: float
) -> tuple[Atoms, list]:
    """ASE's VelocityVerlet with the model from a copy of ``atoms``: the moved copy and the
    total energy (eV) at every step, the reference the engines' NVE runs are held to."""
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from uenn_geo.calculator import UENNCalculator

    atoms = atoms.copy()
    atoms.calc = UENNCalculator(model, compile=False)
    total: list = []
    dyn = VelocityVerlet(atoms, timestep=dt_fs * fs)
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    return atoms, total


@pytest.fixture
def ase_nve():
    """:func:`ase_nve_run`, for the engine tests."""
    return ase_nve_run
