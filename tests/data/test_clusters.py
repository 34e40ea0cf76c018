import math
import os

import pytest
import torch
from torch_geometric.loader import DataLoader

import uenn_geo.data.clusters as clusters
from uenn_geo.data.clusters import (
    ARGON_NN_DISTANCE,
    LJClusters,
    _lj_forces_gram,
    fcc_sites,
    sample_lj_clusters,
)
from uenn_geo.data.lj import ARGON_EPSILON, ARGON_MASS, lennard_jones
from uenn_geo.dynamics import maxwell_boltzmann, velocity_verlet
from uenn_geo.neighbors import RadiusGraph

SMALL = dict(num_configs=40, min_atoms=3, max_atoms=20, log=False)


def pair_stats(pos):
    d = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(math.inf)
    nearest = d.amin(-1)
    return nearest.min().item(), nearest.max().item()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return LJClusters(str(tmp_path_factory.mktemp("clusters")), **SMALL)


def test_fcc_sites():
    sites = fcc_sites(13)
    assert sites.shape == (13, 3) and sites.dtype == torch.float64
    assert torch.equal(sites[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(
        sites[1:].norm(dim=-1), torch.full((12,), ARGON_NN_DISTANCE, dtype=torch.float64)
    )
    # against a brute force over a large block of the lattice, for random centres
    a = math.sqrt(2) * ARGON_NN_DISTANCE
    r = torch.arange(-8, 9, dtype=torch.float64)
    cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 1, 3)
    basis = torch.tensor([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    lattice = ((cells + basis.double()) * a).reshape(-1, 3)
    centers = torch.rand(6, 3, dtype=torch.float64) * 20 - 10
    for n in (1, 7, 55, 140):
        batch = fcc_sites(n, center=centers)
        assert batch.shape == (6, n, 3)
        for c, got in zip(centers, batch):
            d = (lattice - c).norm(dim=-1)
            expected = lattice[d.argsort()[:n]]
            assert torch.allclose(got, expected, atol=1e-9)  # same sites, same order
    with pytest.raises(ValueError, match="num_atoms"):
        fcc_sites(0)
    with pytest.raises(ValueError, match="center"):
        fcc_sites(4, center=torch.zeros(2))


@pytest.mark.parametrize("cutoff", [None, 7.0])
def test_md_forces_match_lennard_jones(cutoff):
    pos = fcc_sites(30, center=torch.rand(4, 3, dtype=torch.float64) * 5)
    pos = pos + 0.3 * torch.randn_like(pos)
    ref = lennard_jones(pos, cutoff=cutoff)[1]
    torch.testing.assert_close(_lj_forces_gram(pos, cutoff), ref, rtol=1e-10, atol=1e-12)
    if cutoff is not None:  # the cutoff does change the forces
        assert (lennard_jones(pos)[1] - ref).abs().max() > 1e-3


def test_dataset_content(small):
    assert len(small) == 40
    sizes = torch.tensor([d.num_atoms.item() for d in small])
    assert sizes.min() >= 3 and sizes.max() <= 20 and sizes.unique().numel() >= 10
    temps = set()
    for data in small:
        n = data.num_atoms.item()
        assert data.pos.shape == data.forces.shape == (n, 3)
        assert data.pos.dtype == data.forces.dtype == data.energy.dtype == torch.float64
        assert data.energy.shape == (1,) and data.z.tolist() == [18] * n
        assert data.edge_index is None  # the force models build their own lists
        energy, forces = lennard_jones(data.pos)
        torch.testing.assert_close(data.forces, forces, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(data.energy, energy, rtol=1e-13, atol=0.0)
        closest, farthest = pair_stats(data.pos)
        assert closest >= 2.5 and farthest <= 8.0
        assert data.pos.mean(0).abs().max() < 1e-12  # centre of mass at the origin
        # bound, compact clusters: well below zero energy, not a dilute gas
        assert data.energy.item() < 0
        temps.add(data.temperature.item())
    assert temps == {20.0, 40.0, 60.0}
    # thermal motion: not the bare lattice, and net force ~ 0 (Newton's third law)
    assert small._data.forces.abs().max() > 1e-3
    net = torch.stack([d.forces.sum(0) for d in small])
    assert net.abs().max() < 1e-12


def test_cutoff(tmp_path):
    ds = LJClusters(str(tmp_path), num_configs=4, min_atoms=20, max_atoms=30, cutoff=7.5, log=False)
    assert "cut7.5" in ds.processed_file_names
    for data in ds:
        energy, forces = lennard_jones(data.pos, cutoff=7.5)
        torch.testing.assert_close(data.forces, forces, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(data.energy, energy, rtol=1e-13, atol=0.0)
        assert (lennard_jones(data.pos)[1] - data.forces).abs().max() > 1e-4


def test_deterministic_and_seeded(tmp_path):
    kwargs = dict(num_configs=8, max_atoms=12, steps=40, log=False)
    a = LJClusters(str(tmp_path / "a"), **kwargs)
    b = LJClusters(str(tmp_path / "b"), **kwargs)
    c = LJClusters(str(tmp_path / "c"), seed=1, **kwargs)
    assert all(torch.equal(x.pos, y.pos) for x, y in zip(a, b))
    assert torch.equal(a._data.forces, b._data.forces)
    assert not all(x.pos.shape == y.pos.shape and torch.equal(x.pos, y.pos) for x, y in zip(a, c))
    # the sampler gives the same configurations for the same seed
    sample = sample_lj_clusters(
        8, max_atoms=12, steps=40, generator=torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(p, d.pos) for p, d in zip(sample.pos, a))


def test_file_name_and_cache(tmp_path, monkeypatch):
    root = str(tmp_path)
    base = dict(num_configs=5, max_atoms=8, steps=20, log=False)
    first = LJClusters(root, **base)
    name = (
        "ljclusters_n5_atoms3-8_T20.0-40.0-60.0_steps20_dt10.0_disp0.1_rmin2.5_nnmax8.0"
        "_cutNone_seed0.pt"
    )
    assert first.processed_file_names == name
    assert os.path.exists(os.path.join(root, "processed", name))

    def boom(*args, **kwargs):
        raise RuntimeError("sampler called although the cache exists")

    monkeypatch.setattr(clusters, "sample_lj_clusters", boom)
    again = LJClusters(root, **base)
    assert torch.equal(again._data.pos, first._data.pos)
    changes = [
        {"num_configs": 6},
        {"min_atoms": 4},
        {"max_atoms": 9},
        {"temperatures": (30.0,)},
        {"steps": 21},
        {"dt": 5.0},
        {"displacement": 0.2},
        {"r_min": 2.6},
        {"max_neighbor_distance": 7.0},
        {"cutoff": 8.0},
        {"seed": 1},
    ]
    for change in changes:  # each changed parameter means another file: processed anew
        with pytest.raises(RuntimeError, match="sampler called"):
            LJClusters(root, **{**base, **change})


def test_dataloader_batches_variable_sizes(small):
    loader = DataLoader(small, batch_size=7, shuffle=False)
    batch = next(iter(loader))
    sizes = batch.num_atoms
    assert sizes.shape == (7,) and sizes.unique().numel() > 1
    assert batch.pos.shape == (int(sizes.sum()), 3) and batch.energy.shape == (7,)
    assert torch.equal(torch.bincount(batch.batch), sizes)
    energy, forces = lennard_jones(batch.pos, batch=batch.batch)
    torch.testing.assert_close(batch.forces, forces, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(batch.energy, energy, rtol=1e-13, atol=0.0)
    # neighbour lists on access, through the documented transform
    with_edges = LJClusters(small.root, **SMALL, transform=RadiusGraph(5.0))
    data = with_edges[0]
    assert data.edge_index.shape[0] == 2 and data.edge_index.shape[1] > 0
    d = (data.pos[data.edge_index[1]] - data.pos[data.edge_index[0]]).norm(dim=-1)
    assert d.max() < 5.0


def test_energy_conservation_of_the_md():
    # the documented claim: NVE at dt = 10 fs from thermalised clusters at 60 K keeps the
    # total energy within 1e-3 eps per atom of its start (as in the second half of a run)
    for n in (13, 40):
        g = torch.Generator().manual_seed(n)
        sample = sample_lj_clusters(6, n, n, temperatures=(60.0,), steps=100, generator=g)
        pos = torch.stack(sample.pos)
        masses = torch.full((n,), ARGON_MASS, dtype=torch.float64)
        vel = maxwell_boltzmann(masses, 60.0, num_samples=6, generator=g)

        def force_fn(p):
            return lennard_jones(p, check=False)[0], _lj_forces_gram(p, None)

        traj = velocity_verlet(pos, vel, masses, force_fn, dt=10.0, steps=100, record_every=5)
        total = traj.total_energy
        drift = (total - total[0]).abs().max() / (ARGON_EPSILON * n)
        assert drift < 1e-3
        # and the kinetic energy does change: the check is not vacuous
        kinetic_change = (traj.kinetic_energy - traj.kinetic_energy[0]).abs().max()
        assert kinetic_change / (ARGON_EPSILON * n) > 30 * drift


def test_rejection_redraws():
    # a strict neighbour criterion rejects some runs; the accepted ones all satisfy it
    g = torch.Generator().manual_seed(3)
    sample = sample_lj_clusters(
        30, max_atoms=6, temperatures=(60.0,), max_neighbor_distance=4.4, generator=g
    )
    assert sample.num_rejected > 0
    assert len(sample.pos) == 30
    for p in sample.pos:
        closest, farthest = pair_stats(p)
        assert closest >= 2.5 and farthest <= 4.4
    with pytest.raises(ValueError, match="still rejected"):
        sample_lj_clusters(10, max_atoms=6, max_neighbor_distance=3.0, max_rounds=2)


def test_larger_held_out_clusters(tmp_path):
    ds = LJClusters(
        str(tmp_path), num_configs=2, min_atoms=56, max_atoms=79, steps=20, seed=1, log=False
    )
    sizes = [d.num_atoms.item() for d in ds]
    assert all(56 <= n <= 79 for n in sizes)
    assert all(d.pos.shape == (n, 3) for d, n in zip(ds, sizes))


def test_split_repr_and_errors(small, tmp_path):
    train, val, test = small.split()
    assert (len(train), len(val), len(test)) == (24, 8, 8)
    assert repr(small) == "LJClusters(40, atoms=3-20, T=(20, 40, 60) K, cutoff=None, seed=0)"
    root = str(tmp_path)
    for kwargs, match in [
        ({"num_configs": 0}, "num_configs"),
        ({"min_atoms": 1}, "min_atoms"),
        ({"min_atoms": 10, "max_atoms": 9}, "min_atoms"),
        ({"temperatures": ()}, "temperatures"),
        ({"temperatures": (-5.0,)}, "temperatures"),
        ({"dt": 0.0}, "dt"),
        ({"cutoff": -1.0}, "cutoff"),
    ]:
        with pytest.raises(ValueError, match=match):
            LJClusters(root, log=False, **kwargs)
    with pytest.raises(ValueError, match="r_min"):
        sample_lj_clusters(2, r_min=9.0)
