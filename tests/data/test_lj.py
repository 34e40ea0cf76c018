import itertools

import numpy as np
import pytest
import torch

from uenn_geo.data.lj import (
    ARGON_EPSILON,
    ARGON_MASS,
    ARGON_SIGMA,
    lennard_jones,
    lennard_jones_pairs,
)
from uenn_geo.data.paper import sample_paper_configurations


def random_clusters(num, num_atoms, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sample_paper_configurations(num, num_atoms=num_atoms, sigma=4.0, r_min=2.5, generator=g)


def ase_lj(pos, cell=None, rc=1e3):
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    atoms = Atoms(
        "Ar" * len(pos),
        positions=np.asarray(pos),
        cell=None if cell is None else np.asarray(cell),
        pbc=cell is not None,
    )
    atoms.calc = LennardJones(epsilon=ARGON_EPSILON, sigma=ARGON_SIGMA, rc=rc, smooth=False)
    return atoms.get_potential_energy(), atoms.get_forces()


def test_constants():
    assert ARGON_EPSILON == pytest.approx(120 * 8.617333262e-5, rel=1e-15)
    assert ARGON_SIGMA == 3.4
    assert ARGON_MASS == 39.948


def test_dimer_minimum():
    r_min = 2 ** (1 / 6) * ARGON_SIGMA
    pos = torch.tensor([[[0.0, 0.0, 0.0], [r_min, 0.0, 0.0]]], dtype=torch.float64)
    energy, forces = lennard_jones(pos)
    assert energy.item() == pytest.approx(-ARGON_EPSILON, rel=1e-14)
    assert forces.abs().max().item() < 1e-14
    pos[0, 1, 0] = ARGON_SIGMA
    energy, forces = lennard_jones(pos)
    assert abs(energy.item()) < 1e-16
    # U'(sigma) = -24 eps / sigma: repulsive, atom 1 pushed to +x
    assert forces[0, 1, 0].item() == pytest.approx(24 * ARGON_EPSILON / ARGON_SIGMA, rel=1e-14)


@pytest.mark.parametrize("num_atoms", [4, 13])
def test_matches_ase(num_atoms):
    pos = random_clusters(5, num_atoms, seed=num_atoms)
    energy, forces = lennard_jones(pos)
    assert energy.shape == (5,) and forces.shape == (5, num_atoms, 3)
    for b in range(5):
        e_ref, f_ref = ase_lj(pos[b])
        assert energy[b].item() == pytest.approx(e_ref, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(forces[b].numpy(), f_ref, rtol=1e-12, atol=1e-14)


def test_computes_in_dtype_of_pos():
    pos = random_clusters(3, 4)
    e64, f64 = lennard_jones(pos)
    e32, f32 = lennard_jones(pos.float())
    assert e32.dtype == f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), f64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(e32.double(), e64, rtol=1e-4, atol=1e-7)


def test_dense_and_flat_batch_agree():
    sizes = [4, 13, 1, 7]
    clusters = [random_clusters(1, n, seed=s)[0] for s, n in enumerate(sizes)]
    pos = torch.cat(clusters)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    energy, forces = lennard_jones(pos, batch=batch)
    assert energy.shape == (4,) and forces.shape == pos.shape
    offset = 0
    for g, (n, c) in enumerate(zip(sizes, clusters)):
        e_ref, f_ref = lennard_jones(c.unsqueeze(0))
        torch.testing.assert_close(energy[g : g + 1], e_ref, rtol=1e-13, atol=0)
        torch.testing.assert_close(forces[offset : offset + n], f_ref[0], rtol=1e-13, atol=1e-16)
        offset += n
    assert energy[2].item() == 0.0  # single atom
    # flat without batch is one graph
    e1, f1 = lennard_jones(clusters[1])
    torch.testing.assert_close(e1, energy[1:2], rtol=1e-13, atol=0)


@pytest.mark.parametrize("cutoff", [None, 8.5])
def test_forces_are_minus_gradient(cutoff):
    pos = random_clusters(3, 6).requires_grad_()
    energy, forces = lennard_jones(pos, cutoff=cutoff)
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    torch.testing.assert_close(forces, -grad, rtol=1e-10, atol=1e-14)


def test_newtons_third_law():
    pos = random_clusters(4, 13)
    _, forces = lennard_jones(pos)
    assert forces.abs().max().item() > 1e-3  # not trivially zero
    assert forces.sum(-2).abs().max().item() < 1e-14


def test_shifted_force_cutoff_is_continuous():
    rc = 2.5 * ARGON_SIGMA
    r = torch.tensor([rc - 1e-7, rc, rc + 1e-7, 3.0 * ARGON_SIGMA], dtype=torch.float64)
    pos = torch.zeros(4, 2, 3, dtype=torch.float64)
    pos[:, 1, 0] = r
    energy, forces = lennard_jones(pos, cutoff=rc)
    assert energy.abs().max().item() < 1e-12
    assert forces.abs().max().item() < 1e-10
    assert energy[2:].abs().max().item() == 0.0 and forces[2:].abs().max().item() == 0.0
    # well inside, shifted-force energy differs from bare LJ by U(rc) + (r - rc) U'(rc)
    pos[0, 1, 0] = 4.0
    e_sf, f_sf = lennard_jones(pos[:1], cutoff=rc)
    e, f = lennard_jones(pos[:1])
    s6 = (ARGON_SIGMA / rc) ** 6
    u_c = 4 * ARGON_EPSILON * (s6 * s6 - s6)
    du_c = -24 * ARGON_EPSILON * (2 * s6 * s6 - s6) / rc
    assert e_sf.item() == pytest.approx(e.item() - u_c - (4.0 - rc) * du_c, rel=1e-13)
    assert f_sf[0, 1, 0].item() == pytest.approx(f[0, 1, 0].item() + du_c, rel=1e-13)


def test_overlap_raises():
    pos = random_clusters(3, 4)
    pos[1, 3] = pos[1, 1]
    with pytest.raises(ValueError, match="atoms 1 and 3 of configuration 1"):
        lennard_jones(pos)
    flat = pos.reshape(-1, 3)
    batch = torch.arange(3).repeat_interleave(4)
    with pytest.raises(ValueError, match="atoms 5 and 7 of graph 1"):
        lennard_jones(flat, batch=batch)


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        lennard_jones(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(B, N, 3\)"):
        lennard_jones(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        lennard_jones(random_clusters(1, 4), sigma=0.0)
    with pytest.raises(ValueError, match="sorted"):
        lennard_jones(random_clusters(1, 4)[0], batch=torch.tensor([1, 0, 0, 1]))


# ---------------------------------------------------------------- pair-list (periodic) form


def fcc_argon(reps=2, a=5.26, rattle=0.15, seed=0):
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(reps)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def pair_list(atoms, rc):
    from ase.neighborlist import neighbor_list

    i, j, S = neighbor_list("ijS", atoms, rc)
    return torch.from_numpy(np.stack([i, j])).long(), torch.from_numpy(S).double()


def brute_force_images(pos, cell, rc):
    """Truncated (unshifted) LJ summed over explicit periodic images, with numpy loops."""
    n = len(pos)
    energy, forces = 0.0, np.zeros((n, 3))
    rng = range(-2, 3)
    for i, j in itertools.product(range(n), range(n)):
        for s in itertools.product(rng, rng, rng):
            if i == j and s == (0, 0, 0):
                continue
            d = pos[j] - pos[i] + np.asarray(s) @ cell
            r2 = d @ d
            if r2 >= rc * rc:
                continue
            c6 = (ARGON_SIGMA**2 / r2) ** 3
            energy += 0.5 * 4 * ARGON_EPSILON * (c6 * c6 - c6)
            forces[i] += -24 * ARGON_EPSILON * (2 * c6 * c6 - c6) / r2 * d
    return energy, forces


def test_pairs_periodic_matches_ase_and_brute_force():
    rc = 2.5 * ARGON_SIGMA  # 8.5 A > half the 10.52 A box: several images of a neighbour
    atoms = fcc_argon()
    edge_index, S = pair_list(atoms, rc)
    pos = torch.from_numpy(atoms.positions)
    cell = torch.from_numpy(atoms.cell.array)
    energy, forces = lennard_jones_pairs(pos, edge_index, S, cell=cell)
    assert energy.shape == (1,) and forces.shape == pos.shape

    e_bf, f_bf = brute_force_images(atoms.positions, atoms.cell.array, rc)
    assert energy.item() == pytest.approx(e_bf, rel=1e-12)
    np.testing.assert_allclose(forces.numpy(), f_bf, rtol=1e-10, atol=1e-13)

    # ASE shifts every pair energy by U(rc) (smooth=False); its forces are the truncated ones
    e_ase, f_ase = ase_lj(atoms.positions, atoms.cell.array, rc=rc)
    s6 = (ARGON_SIGMA / rc) ** 6
    num_pairs = edge_index.shape[1] // 2
    e_shift = num_pairs * 4 * ARGON_EPSILON * (s6 * s6 - s6)
    assert energy.item() - e_shift == pytest.approx(e_ase, rel=1e-12)
    np.testing.assert_allclose(forces.numpy(), f_ase, rtol=1e-10, atol=1e-13)
    assert forces.sum(0).abs().max().item() < 1e-12


def test_pairs_half_list_cartesian_shifts_and_batch():
    rc = 8.5
    atoms_a, atoms_b = fcc_argon(seed=1), fcc_argon(seed=2, a=5.4)
    pos, edges, shifts, batch, ref = [], [], [], [], []
    offset = 0
    for g, atoms in enumerate([atoms_a, atoms_b]):
        edge_index, S = pair_list(atoms, rc)
        cell = torch.from_numpy(atoms.cell.array)
        ref.append(lennard_jones_pairs(torch.from_numpy(atoms.positions), edge_index, S, cell))
        keep = edge_index[0] < edge_index[1]  # half list: i < j, plus self-images once
        self_img = edge_index[0] == edge_index[1]
        first = self_img & (S[:, 0] * 9 + S[:, 1] * 3 + S[:, 2] > 0)
        keep = keep | first
        pos.append(torch.from_numpy(atoms.positions))
        edges.append(edge_index[:, keep] + offset)
        shifts.append(S[keep] @ cell)
        batch.append(torch.full((len(atoms),), g))
        offset += len(atoms)
    pos, edges, shifts, batch = (
        torch.cat(x, dim=-1 if x is edges else 0) for x in (pos, edges, shifts, batch)
    )
    energy, forces = lennard_jones_pairs(pos, edges, shifts, batch=batch, symmetric=False)
    torch.testing.assert_close(energy, torch.cat([r[0] for r in ref]), rtol=1e-12, atol=0)
    torch.testing.assert_close(forces, torch.cat([r[1] for r in ref]), rtol=1e-10, atol=1e-13)


def test_pairs_cutoff_gradient_and_per_graph_cell():
    rc = 8.0
    atoms = fcc_argon(seed=3)
    edge_index, S = pair_list(atoms, 8.5)
    pos = torch.from_numpy(atoms.positions).requires_grad_()
    cell = torch.from_numpy(atoms.cell.array)
    batch = torch.zeros(len(atoms), dtype=torch.long)
    energy, forces = lennard_jones_pairs(
        pos, edge_index, S, cell=cell.unsqueeze(0), batch=batch, cutoff=rc
    )
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    torch.testing.assert_close(forces, -grad, rtol=1e-10, atol=1e-14)
    # edges between rc and 8.5 A contribute nothing: same as the list built at rc
    edge_rc, S_rc = pair_list(atoms, rc)
    e_rc, f_rc = lennard_jones_pairs(pos.detach(), edge_rc, S_rc, cell=cell, cutoff=rc)
    torch.testing.assert_close(energy.detach(), e_rc, rtol=1e-12, atol=0)
    torch.testing.assert_close(forces, f_rc, rtol=1e-10, atol=1e-14)


def test_pairs_overlap_and_bad_input():
    pos = random_clusters(1, 3)[0]
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 2]])
    with pytest.raises(ValueError, match="edge 2 between atoms 2 and 2"):
        lennard_jones_pairs(pos, edge_index)
    with pytest.raises(ValueError, match=r"edge_index of shape \(2, E\)"):
        lennard_jones_pairs(pos, edge_index.T)
    with pytest.raises(ValueError, match=r"shifts of shape \(3, 3\)"):
        lennard_jones_pairs(pos, edge_index, torch.zeros(2, 3))
