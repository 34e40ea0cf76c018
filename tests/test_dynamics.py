import math
from functools import partial

import numpy as np
import pytest
import torch

from uenn_geo.data.lj import ARGON_EPSILON, ARGON_MASS, ARGON_SIGMA, lennard_jones
from uenn_geo.data.paper import paper_md_initial_positions
from uenn_geo.dynamics import (
    AMU_A2_PER_FS2,
    BOLTZMANN,
    Trajectory,
    kinetic_energy,
    maxwell_boltzmann,
    temperature,
    velocity_verlet,
)

MASSES = torch.full((4,), ARGON_MASS, dtype=torch.float64)


def test_unit_constants():
    from ase.units import create_units

    units = create_units("2018")  # same CODATA values as the library
    assert AMU_A2_PER_FS2 == pytest.approx(1 / units.fs**2, rel=1e-14)
    assert AMU_A2_PER_FS2 == pytest.approx(103.6426965, rel=1e-9)
    assert BOLTZMANN == pytest.approx(units.kB, rel=1e-14)


def test_kinetic_energy_and_temperature():
    vel = torch.tensor([[0.01, 0.0, 0.0], [-0.01, 0.0, 0.0]], dtype=torch.float64)
    ke = kinetic_energy(vel, ARGON_MASS)
    assert ke.item() == pytest.approx(ARGON_MASS * 1e-4 * AMU_A2_PER_FS2, rel=1e-14)
    # 2 atoms: 3 dof after removing the centre of mass, 6 without
    assert temperature(vel, ARGON_MASS).item() == pytest.approx(2 * ke.item() / (3 * BOLTZMANN))
    assert temperature(vel, ARGON_MASS, remove_com_dof=False).item() == pytest.approx(
        2 * ke.item() / (6 * BOLTZMANN)
    )
    batched = kinetic_energy(torch.stack([vel, 2 * vel]), [ARGON_MASS, ARGON_MASS])
    torch.testing.assert_close(batched, torch.stack([ke, 4 * ke]))
    with pytest.raises(ValueError, match=r"masses of shape \(\.\.\., 2\)"):
        kinetic_energy(vel, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="masses > 0"):
        kinetic_energy(vel, [1.0, -2.0])


def test_maxwell_boltzmann_statistics():
    masses = torch.tensor([39.948, 39.948, 4.0, 131.3], dtype=torch.float64)
    target, num = 10.0, 20000
    vel = maxwell_boltzmann(
        masses, target, num_samples=num, generator=torch.Generator().manual_seed(0)
    )
    assert vel.shape == (num, 4, 3) and vel.dtype == torch.float64
    momentum = (masses[:, None] * vel).sum(-2)
    assert momentum.abs().max().item() < 1e-15
    t = temperature(vel, masses)  # 3N - 3 = 9 dof: T * chi2_9 / 9
    dof = 9
    stderr = target * math.sqrt(2 / dof) / math.sqrt(num)
    assert abs(t.mean().item() - target) < 5 * stderr
    assert t.std().item() == pytest.approx(target * math.sqrt(2 / dof), rel=0.05)
    # lighter atoms move faster: <v^2> per component = kT/m (1 - m/M) after removing the COM
    v2 = (vel**2).mean(dim=(0, 2))
    expected = BOLTZMANN * target / (masses * AMU_A2_PER_FS2) * (1 - masses / masses.sum())
    torch.testing.assert_close(v2, expected, rtol=0.05, atol=0)


def test_maxwell_boltzmann_options():
    g = torch.Generator().manual_seed(0)
    vel = maxwell_boltzmann(MASSES, 10.0, num_samples=5, generator=g, exact=True)
    torch.testing.assert_close(
        temperature(vel, MASSES), torch.full((5,), 10.0, dtype=torch.float64)
    )
    one = maxwell_boltzmann(MASSES, 10.0, generator=torch.Generator().manual_seed(0))
    assert one.shape == (4, 3)
    raw = maxwell_boltzmann(
        MASSES, 10.0, generator=torch.Generator().manual_seed(0), remove_com=False
    )
    assert raw.sum(0).abs().max().item() > 1e-6
    torch.testing.assert_close(one, raw - raw.mean(0))  # equal masses: subtract the mean
    assert maxwell_boltzmann([1.0, 2.0], 0.0).abs().max().item() == 0.0
    f32 = maxwell_boltzmann(MASSES.float(), 10.0)
    assert f32.dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        maxwell_boltzmann(MASSES, -1.0)
    with pytest.raises(ValueError, match="exact"):
        maxwell_boltzmann([ARGON_MASS], 10.0, exact=True)


def lj_forces(pos):
    return lennard_jones(pos)[1]


def test_velocity_verlet_matches_ase():
    from ase import Atoms
    from ase.calculators.lj import LennardJones
    from ase.md.verlet import VelocityVerlet
    from ase.units import create_units

    units = create_units("2018")  # ASE's time unit in fs with the library's CODATA values
    pos0 = paper_md_initial_positions()
    vel0 = maxwell_boltzmann(MASSES, 10.0, generator=torch.Generator().manual_seed(0))
    steps = 200

    traj = velocity_verlet(pos0, vel0, MASSES, lj_forces, dt=1.0, steps=steps)

    atoms = Atoms("Ar4", positions=pos0.numpy(), masses=[ARGON_MASS] * 4)
    atoms.calc = LennardJones(epsilon=ARGON_EPSILON, sigma=ARGON_SIGMA, rc=1e3, smooth=False)
    atoms.set_velocities(vel0.numpy() / units.fs)  # A/fs -> A per ASE time unit
    ase_pos = [atoms.get_positions()]
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(lambda: ase_pos.append(atoms.get_positions()), interval=1)
    dyn.run(steps)
    ase_pos = np.stack(ase_pos[1:])  # attach also fires before the first step

    assert traj.positions.shape == (steps + 1, 4, 3)
    displacement = (traj.positions[-1] - pos0).norm(dim=-1).max().item()
    assert displacement > 0.05  # the atoms really moved
    np.testing.assert_allclose(traj.positions.numpy(), ase_pos, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        traj.velocities[-1].numpy(), atoms.get_velocities() * units.fs, rtol=0, atol=1e-13
    )


def test_energy_conservation_nve():
    num = 10
    pos0 = paper_md_initial_positions().expand(num, 4, 3)
    vel0 = maxwell_boltzmann(
        MASSES, 10.0, num_samples=num, generator=torch.Generator().manual_seed(1)
    )
    traj = velocity_verlet(pos0, vel0, MASSES, partial(lennard_jones), dt=1.0, steps=2000)
    assert isinstance(traj, Trajectory)
    assert traj.potential_energy.shape == traj.kinetic_energy.shape == (2001, num)
    total = traj.total_energy
    drift = (total - total[0]).abs().max().item()
    # the kinetic energy swings by far more than the total energy drifts
    swing = (traj.kinetic_energy - traj.kinetic_energy[0]).abs().max().item()
    assert swing > 1e-3
    assert drift < 1e-6  # eV; measured 7e-8 (the paper's network: energy RMSD ~4e-4 eV)
    assert drift / total[0].abs().min().item() < 1e-5
    # momentum is conserved, and the records are consistent
    momentum = (MASSES[:, None] * traj.velocities).sum(-2)
    assert momentum.abs().max().item() < 1e-14
    torch.testing.assert_close(traj.forces[5], lennard_jones(traj.positions[5])[1])
    torch.testing.assert_close(traj.time[-1], torch.tensor(2000.0, dtype=torch.float64))
    torch.testing.assert_close(traj.temperature()[0], temperature(vel0, MASSES))


def test_velocity_verlet_record_every_and_callback():
    pos0 = paper_md_initial_positions()
    vel0 = maxwell_boltzmann(MASSES, 10.0)
    seen = []
    full = velocity_verlet(pos0, vel0, MASSES, lj_forces, dt=1.0, steps=10)
    sparse = velocity_verlet(
        pos0,
        vel0,
        MASSES,
        lj_forces,
        dt=1.0,
        steps=10,
        record_every=4,
        callback=lambda step, pos, vel, forces: seen.append(step),
    )
    assert seen == list(range(1, 11))
    assert sparse.step.tolist() == [0, 4, 8] and len(sparse) == 3
    torch.testing.assert_close(sparse.positions, full.positions[[0, 4, 8]], rtol=0, atol=0)
    assert full.potential_energy is None and full.total_energy is None


def test_velocity_verlet_uniform_motion_and_autograd_forces():
    # free particles move in straight lines
    vel0 = torch.randn(2, 3, 3, dtype=torch.float64) * 0.01
    pos0 = torch.randn(2, 3, 3, dtype=torch.float64)
    traj = velocity_verlet(pos0, vel0, 1.0, torch.zeros_like, dt=0.5, steps=4)
    torch.testing.assert_close(traj.positions[-1], pos0 + 2.0 * vel0)

    # forces from autograd of an energy work inside the integrator
    def autograd_forces(pos):
        with torch.enable_grad():
            pos = pos.requires_grad_()
            energy = lennard_jones(pos)[0]
            return -torch.autograd.grad(energy.sum(), pos)[0]

    pos0 = paper_md_initial_positions().unsqueeze(0)
    vel0 = maxwell_boltzmann(MASSES, 10.0).unsqueeze(0)
    a = velocity_verlet(pos0, vel0, MASSES, autograd_forces, dt=1.0, steps=20)
    b = velocity_verlet(pos0, vel0, MASSES, lj_forces, dt=1.0, steps=20)
    torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=1e-12)
    assert not a.positions.requires_grad


def test_velocity_verlet_bad_input():
    pos = paper_md_initial_positions()
    with pytest.raises(ValueError, match="vel of the shape of pos"):
        velocity_verlet(pos, torch.zeros(3, 3, dtype=torch.float64), MASSES, lj_forces, 1.0, 1)
    with pytest.raises(TypeError, match="dtype"):
        velocity_verlet(pos, torch.zeros(4, 3), MASSES, lj_forces, 1.0, 1)
    with pytest.raises(ValueError, match="forces of shape"):
        velocity_verlet(pos, torch.zeros_like(pos), MASSES, lambda p: p[:2], 1.0, 1)
    with pytest.raises(ValueError, match="steps"):
        velocity_verlet(pos, torch.zeros_like(pos), MASSES, lj_forces, 1.0, -1)
