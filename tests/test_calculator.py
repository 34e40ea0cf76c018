import ase
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Data

from uenn_geo.calculator import UENNCalculator
from uenn_geo.data.lj import ARGON_MASS
from uenn_geo.data.paper import paper_md_initial_positions
from uenn_geo.dynamics import maxwell_boltzmann, velocity_verlet
from uenn_geo.models import UENNForceField, save_model

F64 = torch.float64
SMALL = {
    "cutoff": 5.0,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "dtype": "float64",
}


def make_model(**kwargs) -> UENNForceField:
    return UENNForceField(**{**SMALL, **kwargs}).eval()


def crystal(rattle: float = 0.1) -> Atoms:
    """8 argon atoms in a triclinic periodic cell a little smaller than twice the cutoff."""
    cell = np.array([[7.0, 0.0, 0.0], [0.6, 6.8, 0.0], [0.4, -0.5, 7.2]])
    frac = np.array([[i, j, k] for i in (0, 0.5) for j in (0, 0.5) for k in (0, 0.5)])
    rng = np.random.default_rng(0)
    pos = frac @ cell + rng.normal(scale=rattle, size=(8, 3))
    return Atoms("Ar8", positions=pos, cell=cell, pbc=True)


def paper_atoms() -> Atoms:
    pos = paper_md_initial_positions().numpy()
    return Atoms("Ar4", positions=pos, masses=[ARGON_MASS] * 4)


def test_forces_match_model_exactly():
    for conservative in (False, True):
        model = make_model(conservative=conservative, atomic_numbers=[1, 18])
        atoms = Atoms("ArHArHAr", positions=np.random.default_rng(1).normal(size=(5, 3)) * 2)
        atoms.calc = UENNCalculator(model)
        data = Data(pos=torch.tensor(atoms.positions), z=torch.tensor(atoms.numbers))
        expected = model.energy_forces(data)
        np.testing.assert_array_equal(atoms.get_forces(), expected["forces"].detach().numpy())
        assert np.abs(atoms.get_forces()).max() > 1e-3
        if conservative:
            assert atoms.get_potential_energy() == expected["energy"].item()
            assert atoms.get_potential_energy(force_consistent=True) == expected["energy"].item()
        else:
            with pytest.raises(PropertyNotImplementedError, match="conservative=True"):
                atoms.get_potential_energy()
            with pytest.raises(PropertyNotImplementedError, match="conservative=True"):
                atoms.calc.get_property("stress", atoms)


def test_periodic_energy_and_stress(tmp_path):
    model = make_model(conservative=True, cutoff=4.5)
    save_model(model, tmp_path / "model.pt")
    atoms = crystal()
    atoms.calc = UENNCalculator(tmp_path / "model.pt")  # from a file
    data = Data(
        pos=torch.tensor(atoms.positions),
        z=torch.tensor(atoms.numbers),
        cell=torch.tensor(atoms.cell.array).unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
    )
    expected = model.energy_forces(data, compute_stress=True)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].numpy(), atol=1e-14)
    assert atoms.get_potential_energy() == pytest.approx(expected["energy"].item(), abs=1e-12)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    np.testing.assert_allclose(
        voigt_6_to_full_3x3_stress(stress), expected["stress"][0].numpy(), atol=1e-14
    )
    # ASE's own finite-difference stress agrees (same sign convention and units).
    from ase.calculators.fd import calculate_numerical_stress

    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numerical, atol=1e-9)
    assert np.abs(stress).max() > 1e-4
    cluster = paper_atoms()
    cluster.calc = UENNCalculator(model)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        cluster.get_stress()


def test_neighbour_list_reuse_gives_fresh_build_results():
    model = make_model(conservative=True, cutoff=4.5)
    atoms = crystal(rattle=0.05)
    atoms.set_masses([ARGON_MASS] * len(atoms))
    atoms.set_velocities(np.random.default_rng(2).normal(scale=0.05, size=(8, 3)))
    skinned = UENNCalculator(model, skin=1.0)
    fresh = UENNCalculator(model, skin=0.0)
    steps = 40
    from ase.md.verlet import VelocityVerlet

    atoms.calc = skinned
    start = atoms.positions.copy()
    dyn = VelocityVerlet(atoms, timestep=4.0 * ase.units.fs)

    def compare():
        copy = atoms.copy()
        copy.calc = fresh
        np.testing.assert_array_equal(atoms.get_forces(), copy.get_forces())
        assert atoms.get_potential_energy() == copy.get_potential_energy()

    dyn.attach(compare, interval=1)
    dyn.run(steps)
    assert np.abs(atoms.positions - start).max() > 0.5  # atoms moved past the half skin
    assert 1 < skinned.num_builds < steps / 2
    assert fresh.num_builds >= steps
    # A changed cell forces a rebuild.
    builds = skinned.num_builds
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    atoms.get_forces()
    assert skinned.num_builds == builds + 1


def test_ase_velocity_verlet_reproduces_library_md():
    from ase.md.verlet import VelocityVerlet
    from ase.units import create_units

    units = create_units("2018")  # ASE's time unit with the library's CODATA values
    model = make_model(cutoff=10.2)
    model.force_scale.fill_(0.05)
    masses = torch.full((4,), ARGON_MASS, dtype=F64)
    pos0 = paper_md_initial_positions()
    vel0 = maxwell_boltzmann(masses, 10.0, generator=torch.Generator().manual_seed(0))
    z = torch.full((4,), 18)
    steps = 100

    def forces(pos):
        return model(Data(pos=pos, z=z))

    traj = velocity_verlet(pos0, vel0, masses, forces, dt=1.0, steps=steps)
    atoms = paper_atoms()
    atoms.calc = UENNCalculator(model)
    atoms.set_velocities(vel0.numpy() / units.fs)  # A/fs -> A per ASE time unit
    VelocityVerlet(atoms, timestep=1.0 * units.fs).run(steps)
    assert (traj.positions[-1] - pos0).norm(dim=-1).max() > 0.05  # the atoms moved
    np.testing.assert_allclose(atoms.positions, traj.positions[-1].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        atoms.get_velocities() * units.fs, traj.velocities[-1].numpy(), rtol=0, atol=1e-12
    )


def test_bfgs_and_langevin():
    from ase.md.langevin import Langevin
    from ase.optimize import BFGS

    model = make_model(conservative=True, cutoff=10.2)
    atoms = paper_atoms()
    atoms.calc = UENNCalculator(model)
    e0 = atoms.get_potential_energy()
    f0 = np.abs(atoms.get_forces()).max()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=15)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.get_forces()).max() < f0
    atoms.set_velocities(np.zeros((4, 3)))
    dyn = Langevin(
        atoms,
        fixcm=False,
        timestep=2.0 * ase.units.fs,
        temperature_K=50.0,
        friction=0.02,
        rng=np.random.default_rng(0),
    )
    dyn.run(10)
    assert np.isfinite(atoms.positions).all()
    assert atoms.get_kinetic_energy() > 0  # the thermostat heated the atoms


def test_bad_inputs():
    with pytest.raises(TypeError, match="model_or_path"):
        UENNCalculator(3)
    with pytest.raises(ValueError, match="skin"):
        UENNCalculator(make_model(), skin=-1.0)


def test_compile_option_and_wrapped_atoms():
    """The calculator is the shared evaluator's: compile policy, and a list that follows atoms
    wrapped back into the box (as OpenMM and LAMMPS do) instead of rebuilding."""
    model = make_model(conservative=True, cutoff=4.5)
    calc = UENNCalculator(model)
    assert calc.evaluator.compile == "auto"
    assert not calc.evaluator._use_compiled(8)  # small structures stay eager
    with pytest.raises(ValueError, match="compile"):
        UENNCalculator(model, compile="always")
    atoms = crystal()
    atoms.positions[0] += atoms.cell.array[0] - atoms.cell.array[2]  # outside the cell
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    before = atoms.positions.copy()
    atoms.wrap()
    assert np.abs(atoms.positions - before).max() > 5.0  # wrapping moved atom 0 by a cell
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), stress, rtol=0, atol=1e-12)
    assert calc.num_builds == 1
