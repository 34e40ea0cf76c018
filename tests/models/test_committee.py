"""A committee of force models: the members' mean, their spread, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Data

from uenn_geo.calculator import UENNCalculator
from uenn_geo.models import Committee, UENNForceField, load_committee, save_model
from uenn_geo.testing import assert_equivariant

SMALL = {
    "cutoff": 4.5,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "dtype": "float64",
}


def member(seed: int, **kwargs) -> UENNForceField:
    torch.manual_seed(seed)
    return UENNForceField(**{**SMALL, **kwargs}).eval()


def crystal() -> Atoms:
    cell = np.array([[7.0, 0.0, 0.0], [0.6, 6.8, 0.0], [0.4, -0.5, 7.2]])
    frac = np.array([[i, j, k] for i in (0, 0.5) for j in (0, 0.5) for k in (0, 0.5)])
    pos = frac @ cell + np.random.default_rng(0).normal(scale=0.15, size=(8, 3))
    return Atoms("Ar8", positions=pos, cell=cell, pbc=True)


def data_of(atoms: Atoms) -> Data:
    return Data(
        pos=torch.tensor(atoms.positions),
        z=torch.tensor(atoms.numbers),
        cell=torch.tensor(atoms.cell.array).unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
    )


def test_the_mean_of_the_members_and_each_members_results():
    members = [member(seed, conservative=True) for seed in range(3)]
    committee = Committee(members)
    data = data_of(crystal())
    out = committee.energy_forces(data, compute_stress=True)
    alone = [m.energy_forces(data, compute_stress=True) for m in members]
    for key in ("energy", "forces", "stress"):
        each = torch.stack([a[key] for a in alone])
        torch.testing.assert_close(out["members"][key], each, rtol=0, atol=0)
        torch.testing.assert_close(out[key], each.mean(dim=0), rtol=0, atol=1e-15)
    # different seeds: the members disagree, so the spread means something
    assert float(out["members"]["forces"].std(dim=0).max()) > 1e-3
    torch.testing.assert_close(committee(data), out["forces"])


def test_direct_members_give_forces_only():
    committee = Committee([member(0), member(1)])
    out = committee.energy_forces(data_of(crystal()))
    assert out["energy"] is None and out["stress"] is None
    assert out["members"]["forces"].shape == (2, 8, 3)


def test_the_committee_is_equivariant():
    """The mean of equivariant models rotates (and reflects) with the positions."""
    committee = Committee([member(0, conservative=True), member(1, conservative=True)])
    pos = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1.6
    z = torch.full((6,), 18)
    assert_equivariant(lambda p: committee(Data(pos=p, z=z)), pos, axis=-1)


def test_members_must_agree_and_be_trained():
    with pytest.raises(ValueError, match="at least one"):
        Committee([])
    with pytest.raises(ValueError, match="cutoff"):
        Committee([member(0), member(1, cutoff=5.0)])
    with pytest.raises(ValueError, match="has_energy"):
        Committee([member(0), member(1, conservative=True)])
    with pytest.raises(TypeError, match="force model"):
        Committee([member(0), torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="trained models"):
        Committee([member(0)]).fit_scales([])
    both = Committee([member(0, atomic_numbers=[1, 18]), member(1, atomic_numbers=[18, 29])])
    assert both.atomic_numbers == [18]


def test_load_committee_of_files(tmp_path):
    paths = []
    for seed in range(2):
        paths.append(tmp_path / f"m{seed}.pt")
        save_model(member(seed, conservative=True), paths[-1])
    one = load_committee(paths[:1])
    assert isinstance(one, UENNForceField)
    two = load_committee(paths)
    assert isinstance(two, Committee) and len(two) == 2 and not two.training
    with pytest.raises(ValueError, match="at least one"):
        load_committee([])


def test_calculator_reports_the_mean_and_the_spread(tmp_path):
    members = [member(seed, conservative=True) for seed in range(2)]
    paths = []
    for k, m in enumerate(members):
        paths.append(tmp_path / f"m{k}.pt")
        save_model(m, paths[-1])
    atoms = crystal()
    atoms.calc = UENNCalculator(paths)  # files, as MACE's calculator takes them
    forces, energy, stress = atoms.get_forces(), atoms.get_potential_energy(), atoms.get_stress()
    alone = []
    for m in members:
        a = atoms.copy()
        a.calc = UENNCalculator(m)
        alone.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    energies = np.array([e for e, _, _ in alone])
    np.testing.assert_allclose(forces, np.mean([f for _, f, _ in alone], axis=0), atol=1e-14)
    assert energy == pytest.approx(energies.mean(), abs=1e-12)
    np.testing.assert_allclose(stress, np.mean([s for _, _, s in alone], axis=0), atol=1e-14)
    results = atoms.calc.results
    np.testing.assert_allclose(results["energy_comm"], energies, atol=1e-12)
    assert results["energy_var"] == pytest.approx(energies.var(), abs=1e-12)
    np.testing.assert_allclose(results["forces_comm"], [f for _, f, _ in alone], atol=1e-14)
    np.testing.assert_allclose(
        results["stress_var"], np.var([s for _, _, s in alone], axis=0), atol=1e-14
    )
    assert results["energy_var"] > 0


def test_the_committee_takes_its_members_mode_and_keeps_it_through_error_tables():
    from uenn_geo.train.metrics import error_table

    committee = Committee([member(0, conservative=True), member(1, conservative=True)])
    assert not committee.training and not any(m.training for m in committee.members)
    frame = data_of(crystal())
    frame.forces = torch.zeros(8, 3, dtype=torch.float64)
    frame.energy = torch.zeros(1, dtype=torch.float64)
    error_table(committee, [frame])
    assert not any(m.training for m in committee.members)
    with pytest.raises(ValueError, match="species in common"):
        Committee([member(0, atomic_numbers=[1]), member(1, atomic_numbers=[29])])


def test_committee_properties_through_get_property():
    atoms = crystal()
    atoms.calc = UENNCalculator([member(0, conservative=True), member(1, conservative=True)])
    assert atoms.calc.get_property("energy_var", atoms) >= 0
    assert atoms.calc.get_property("forces_comm", atoms).shape == (2, 8, 3)
    single = UENNCalculator(member(0))
    assert "forces_comm" not in single.implemented_properties


def test_force_deviation_of_tensors_and_arrays():
    """Two members at +a and -a about their mean deviate by |a| on each atom; tensors and
    arrays give the same; one member, or equal members, deviate by zero."""
    import numpy as np

    from uenn_geo.models.committee import force_deviation

    a = torch.randn(5, 3, dtype=torch.float64)
    mean = torch.randn(5, 3, dtype=torch.float64)
    comm = torch.stack([mean + a, mean - a])
    torch.testing.assert_close(force_deviation(comm), a.norm(dim=-1))
    np.testing.assert_allclose(force_deviation(comm.numpy()), a.norm(dim=-1).numpy())
    assert force_deviation(comm[:1]).abs().max() == 0
    assert force_deviation(torch.stack([mean, mean, mean])).abs().max() < 1e-15  # (3x / 3)


@pytest.mark.parametrize("conservative", [False, True])
def test_per_structure_rows_carry_the_members_deviation(conservative):
    """error_table's per-structure rows: a committee's force deviation, direct members too
    (and energy spreads only where there are energies); a single model has none."""
    from uenn_geo.models.committee import force_deviation
    from uenn_geo.train.metrics import error_table

    members = [member(0, conservative=conservative), member(1, conservative=conservative)]
    with torch.no_grad():
        for m in members:  # forces of a few 0.1 eV/A, different per member
            (m.energy_scale if conservative else m.force_scale).fill_(0.05)
    frame = data_of(crystal())
    frame.forces = torch.zeros(8, 3, dtype=torch.float64)
    rows = []
    error_table(Committee(members), [frame], per_structure=rows)
    comm = torch.stack([m.energy_forces(frame)["forces"].detach() for m in members])
    dev = force_deviation(comm)
    assert rows[0]["force_dev_max"] == pytest.approx(1e3 * float(dev.max()), rel=1e-9)
    assert rows[0]["force_dev_mean"] == pytest.approx(1e3 * float(dev.mean()), rel=1e-9)
    assert rows[0]["force_dev_max"] > 0.1 and "energy_dev_per_atom" not in rows[0]
    alone = []
    error_table(members[0], [frame], per_structure=alone)
    assert "force_dev_max" not in alone[0] and alone[0]["force_rmse"] > 0
