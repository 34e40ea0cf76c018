"""OpenMM through openmm-ml: MLPotential("uenn-geo") equals the ASE calculator."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

openmm = pytest.importorskip("openmm", reason="OpenMM is not installed (pip install openmm)")
pytest.importorskip("openmmml", reason="openmm-ml is not installed (pip install openmmml)")
if not hasattr(openmm, "PythonForce"):
    pytest.skip("OpenMM >= 8.6 is needed (openmm.PythonForce)", allow_module_level=True)

import openmm.app as app  # noqa: E402
from ase.units import fs  # noqa: E402
from openmm import unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402

from uenn_geo import save_model  # noqa: E402
from uenn_geo.calculator import UENNCalculator  # noqa: E402
from uenn_geo.engines.openmm import EV_TO_KJ_PER_MOL  # noqa: E402

KJ = unit.kilojoule_per_mole
NM = unit.nanometer


def topology_of(atoms, copies: int = 1) -> app.Topology:
    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(copies):
        residue = topology.addResidue("MOL", chain)
        for z in atoms.numbers:
            topology.addAtom(str(z), app.Element.getByAtomicNumber(int(z)), residue)
    if atoms.pbc.any():
        topology.setPeriodicBoxVectors(atoms.cell.array / 10.0 * NM)
    return topology


def context_of(system: openmm.System, positions: np.ndarray, dt_fs: float = 1.0):
    integrator = openmm.VerletIntegrator(dt_fs * 1e-3)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions / 10.0)
    return context, integrator


def energy_forces(context) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A) of an OpenMM context."""
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(KJ) / EV_TO_KJ_PER_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(KJ / NM) / (10.0 * EV_TO_KJ_PER_MOL)
    return energy, forces


@pytest.mark.parametrize("structure", ["liquid", "molecule"])
def test_forces_and_energy_equal_ase(
    structure, argon_model, organic_model, liquid_atoms, ethanol_atoms, tmp_path
):
    atoms, model = (
        (liquid_atoms, argon_model) if structure == "liquid" else (ethanol_atoms, organic_model)
    )
    save_model(model, tmp_path / "model.pt")
    system = MLPotential("uenn-geo", model=str(tmp_path / "model.pt"), compile=False).createSystem(
        topology_of(atoms)
    )
    context, _ = context_of(system, atoms.positions)
    energy, forces = energy_forces(context)
    atoms.calc = UENNCalculator(model, compile=False)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=1e-12)
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-13, abs=1e-12)
    assert np.abs(forces).max() > 1e-3


def test_subset_of_atoms(organic_model, ethanol_atoms):
    """createMixedSystem: the model acts on one of two molecules, the other feels nothing."""
    ml, other = ethanol_atoms, ethanol_atoms.copy()
    other.translate([20.0, 0.0, 0.0])
    topology = topology_of(ml, copies=2)
    mm_system = openmm.System()
    for atom in topology.atoms():
        mm_system.addParticle(atom.element.mass)
    potential = MLPotential("uenn-geo", model=organic_model, compile=False)
    subset = list(range(len(ml)))
    system = potential.createMixedSystem(topology, mm_system, subset)
    context, _ = context_of(system, np.concatenate([ml.positions, other.positions]))
    _, forces = energy_forces(context)
    ml.calc = UENNCalculator(organic_model, compile=False)
    np.testing.assert_allclose(forces[: len(ml)], ml.get_forces(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(forces[len(ml) :], 0.0)


def nve_fluctuation(energies: list[float]) -> float:
    return float(np.std(energies))


def test_nve_conserves_energy_as_ase(argon_model, liquid_atoms, ase_nve):
    steps, dt = 200, 4.0
    atoms, ase_total = ase_nve(argon_model, liquid_atoms, steps, dt)

    system = MLPotential("uenn-geo", model=argon_model, compile=False).createSystem(
        topology_of(liquid_atoms), removeCMMotion=False
    )
    context, integrator = context_of(system, liquid_atoms.positions, dt)
    context.setVelocities(liquid_atoms.get_velocities() * fs * 1e3 / 10.0 * NM / unit.picosecond)
    total = []
    for _ in range(steps):
        integrator.step(1)
        state = context.getState(getEnergy=True)
        e = state.getPotentialEnergy() + state.getKineticEnergy()
        total.append(e.value_in_unit(KJ) / EV_TO_KJ_PER_MOL)
    kinetic = state.getKineticEnergy().value_in_unit(KJ)
    assert kinetic > 0.0
    assert (
        np.abs(
            np.asarray(context.getState(getPositions=True).getPositions(asNumpy=True)._value) * 10.0
            - liquid_atoms.positions
        ).max()
        > 0.1
    )  # the atoms moved
    assert nve_fluctuation(ase_total) > 0.0
    assert nve_fluctuation(total) < 2.0 * nve_fluctuation(ase_total)
    assert abs(total[-1] - total[0]) < 2.0 * np.ptp(ase_total)


def test_entry_point_is_declared():
    names = {ep.name for ep in importlib.metadata.entry_points(group="openmmml.potentials")}
    if "uenn-geo" not in names:
        pytest.skip(
            "the openmmml.potentials entry point of uenn-geo is not installed "
            "(pip install -e . after pyproject declares it)"
        )
    (ep,) = [
        ep
        for ep in importlib.metadata.entry_points(group="openmmml.potentials")
        if ep.name == "uenn-geo"
    ]
    from uenn_geo.engines.openmm_plugin import UENNPotentialImplFactory

    assert ep.load() is UENNPotentialImplFactory


def test_bad_options(argon_model):
    from uenn_geo.engines.openmm_plugin import register

    register()  # as without the entry point

    with pytest.raises(ValueError, match="model="):
        MLPotential("uenn-geo")
    with pytest.raises(TypeError, match="unknown options"):
        MLPotential("uenn-geo", model=argon_model, skn=1.0)


def test_committee_equals_ase(model_factory, liquid_atoms, tmp_path):
    """model=[a, b]: the committee's mean energy and forces, as the ASE calculator's."""
    members = [model_factory(), model_factory()]
    paths = [str(tmp_path / f"m{k}.pt") for k in range(2)]
    for model, path in zip(members, paths, strict=True):
        save_model(model, path)
    system = MLPotential("uenn-geo", model=paths, compile=False).createSystem(
        topology_of(liquid_atoms)
    )
    context, _ = context_of(system, liquid_atoms.positions)
    energy, forces = energy_forces(context)
    liquid_atoms.calc = UENNCalculator(members, compile=False)
    np.testing.assert_allclose(forces, liquid_atoms.get_forces(), rtol=0, atol=1e-12)
    assert energy == pytest.approx(liquid_atoms.get_potential_energy(), rel=1e-13, abs=1e-12)
    one = UENNCalculator(members[0], compile=False).get_forces(liquid_atoms.copy())
    assert np.abs(forces - one).max() > 1e-6  # the mean, not the first member
