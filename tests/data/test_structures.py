import math

import pytest
import torch

import uenn_geo.data.clusters as clusters
from uenn_geo.constants import ARGON_MASS, AVOGADRO, RAHMAN_DENSITY
from uenn_geo.data import structures
from uenn_geo.data.structures import argon_fcc, box_cells, fcc_box, fcc_sites
from uenn_geo.edges import build_edges


def _fcc_sites_as_first_released(num_atoms, nn_distance, center, dtype=torch.float64):
    """The fcc_sites that LJClusters' cached data were generated with, frozen verbatim."""
    a = math.sqrt(2.0) * nn_distance
    center = torch.as_tensor(center, dtype=dtype)
    offset = torch.floor(center / a) * a
    local = (center - offset).unsqueeze(-2)
    basis = torch.tensor(
        ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)), dtype=dtype
    )
    k = math.ceil(0.5 * num_atoms ** (1.0 / 3.0)) + 1
    while True:
        r = torch.arange(-k, k + 1, dtype=dtype)
        cells = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 1, 3)
        sites = ((cells + basis) * a).reshape(-1, 3)
        dist = (sites - local).norm(dim=-1)
        order = torch.argsort(dist, dim=-1, stable=True)[..., :num_atoms]
        if bool((dist.gather(-1, order[..., -1:]) < k * a).all()):
            break
        k += 1
    return sites[order] + offset.unsqueeze(-2)


def test_one_fcc_sites():
    assert clusters.fcc_sites is structures.fcc_sites


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fcc_sites_bit_identical_to_the_first_release(dtype):
    g = torch.Generator().manual_seed(7)
    centers = torch.rand(8, 3, generator=g, dtype=torch.float64) * 20 - 10
    for n in (1, 4, 13, 55, 79):
        for center in (torch.zeros(3), centers):
            new = fcc_sites(n, 3.8, center=center, dtype=dtype)
            assert torch.equal(new, _fcc_sites_as_first_released(n, 3.8, center, dtype))


def test_lj_cluster_data_bit_identical(monkeypatch):
    def sample():
        g = torch.Generator().manual_seed(3)
        return clusters.sample_lj_clusters(10, min_atoms=3, max_atoms=30, steps=20, generator=g)

    new = sample()

    def frozen(n, nn_distance=clusters.ARGON_NN_DISTANCE, center=None, dtype=torch.float64):
        return _fcc_sites_as_first_released(n, nn_distance, center, dtype)

    monkeypatch.setattr(clusters, "fcc_sites", frozen)
    old = sample()
    assert len(new.pos) == len(old.pos) == 10
    assert all(torch.equal(a, b) for a, b in zip(new.pos, old.pos, strict=True))
    assert torch.equal(new.temperature, old.temperature)


def test_fcc_box():
    pos, cell = fcc_box((2, 3, 4), 5.0)
    assert pos.shape == (4 * 24, 3) and pos.dtype == torch.float64
    assert torch.equal(cell, torch.diag(torch.tensor([10.0, 15.0, 20.0], dtype=torch.float64)))
    assert torch.equal(pos[:4], torch.tensor(structures.FCC_BASIS, dtype=torch.float64) * 5.0)
    assert bool((pos >= 0).all()) and bool((pos < cell.diagonal()).all())
    # every site has 12 nearest neighbours at a / sqrt(2), none closer
    edges = build_edges(pos, 3.6, cell=cell.unsqueeze(0))
    assert edges.num_edges == 12 * pos.shape[0]
    r = edges.vectors(pos).norm(dim=-1)
    torch.testing.assert_close(r, torch.full_like(r, 5.0 / math.sqrt(2)))
    with pytest.raises(ValueError, match="three integers"):
        fcc_box((2, 2), 5.0)
    with pytest.raises(ValueError, match="lattice_constant"):
        fcc_box((2, 2, 2), 0.0)


def test_box_cells():
    assert box_cells(216) == (6, 6, 6)
    assert box_cells(2592) == (12, 12, 18)  # 10,368 atoms
    assert box_cells(7) == (1, 1, 7)
    for n in range(1, 60):
        a, b, c = box_cells(n)
        assert a * b * c == n and a <= b <= c


def test_argon_fcc_density_and_spacing():
    pos, cell = argon_fcc(864, displacement=0.0)
    assert pos.shape == (864, 3) and cell.shape == (3, 3)
    volume = float(torch.linalg.det(cell))  # Angstrom^3
    density = 864 * ARGON_MASS / AVOGADRO / (volume * 1e-24)  # g/cm^3
    assert density == pytest.approx(RAHMAN_DENSITY, rel=1e-12)
    a = float(cell[0, 0]) / 6
    edges = build_edges(pos, 4.5, cell=cell.unsqueeze(0))
    assert edges.num_edges == 12 * 864
    assert edges.vectors(pos).norm(dim=-1).min().item() == pytest.approx(a / math.sqrt(2))
    # 10,368 = 4 * 12 * 12 * 18 is not a cube: the most cubic box is used
    _, cell = argon_fcc(10368)
    assert sorted(round(float(x) / a) for x in cell.diagonal()) == [12, 12, 18]
    # displaced: seeded, of the requested spread
    moved, _ = argon_fcc(864, displacement=0.05, seed=1)
    assert torch.equal(moved, argon_fcc(864, displacement=0.05, seed=1)[0])
    assert (moved - pos).std().item() == pytest.approx(0.05, rel=0.05)


def test_argon_fcc_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 4"):
        argon_fcc(30)
    with pytest.raises(ValueError, match="int >= 4"):
        argon_fcc(2)
    with pytest.raises(ValueError, match="density"):
        argon_fcc(32, density=0.0)
    with pytest.raises(ValueError, match="displacement"):
        argon_fcc(32, displacement=-1.0)
