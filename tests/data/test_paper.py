import os

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

import uenn_geo.data.paper as paper
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import (
    PaperArgon,
    paper_md_initial_positions,
    sample_paper_configurations,
    split_indices,
)

N = 500


def min_distance(pos):
    i, j = torch.triu_indices(pos.shape[-2], pos.shape[-2], 1)
    return (pos[..., j, :] - pos[..., i, :]).norm(dim=-1).amin(-1)


def test_sampler_shape_rejection_and_determinism():
    g = torch.Generator().manual_seed(1)
    pos = sample_paper_configurations(2000, generator=g)
    assert pos.shape == (2000, 4, 3) and pos.dtype == torch.float64
    assert min_distance(pos).min().item() >= 2.8
    # rejection actually bites: plain Gaussians have ~1/3 of configurations with a close pair
    raw = torch.randn(2000, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert (min_distance(3.0 * raw) < 2.8).double().mean().item() > 0.25
    # coordinates are spread like N(0, 3) (a little wider: close pairs were rejected)
    assert 2.9 < pos.std().item() < 3.6
    again = sample_paper_configurations(2000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pos, again)
    other = sample_paper_configurations(2000, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(pos, other)


def test_sampler_options_and_errors():
    pos = sample_paper_configurations(10, num_atoms=6, sigma=5.0, r_min=3.0, dtype=torch.float32)
    assert pos.shape == (10, 6, 3) and pos.dtype == torch.float32
    assert min_distance(pos).min().item() >= 3.0
    assert sample_paper_configurations(0).shape == (0, 4, 3)
    with pytest.raises(ValueError, match="too large"):
        sample_paper_configurations(10, sigma=0.1, r_min=5.0, max_rounds=3)
    with pytest.raises(ValueError, match="sigma"):
        sample_paper_configurations(10, sigma=-1.0)


def test_split_indices():
    idx = split_indices(1000, seed=3)
    assert [len(idx[k]) for k in ("train", "val", "test")] == [600, 200, 200]
    assert torch.equal(torch.cat(list(idx.values())).sort().values, torch.arange(1000))
    again = split_indices(1000, seed=3)
    assert all(torch.equal(idx[k], again[k]) for k in idx)
    assert not torch.equal(idx["train"], split_indices(1000, seed=4)["train"])
    odd = split_indices(7)
    assert sum(len(v) for v in odd.values()) == 7
    assert torch.cat(list(odd.values())).unique().numel() == 7


@pytest.fixture
def dataset(tmp_path):
    return PaperArgon(str(tmp_path), num_configs=N, seed=0, log=False)


def test_dataset_content(dataset):
    assert len(dataset) == N
    data = dataset[7]
    assert isinstance(data, Data)
    assert data.pos.shape == (4, 3) and data.pos.dtype == torch.float64
    assert data.forces.shape == (4, 3) and data.forces.dtype == torch.float64
    assert data.energy.shape == (1,)
    assert data.z.tolist() == [18] * 4
    pos, forces, energy = dataset.dense_tensors(with_energy=True)
    assert pos.shape == forces.shape == (N, 4, 3) and energy.shape == (N,)
    assert torch.equal(pos[7], data.pos) and torch.equal(forces[7], data.forces)
    assert min_distance(pos).min().item() >= 2.8
    e_ref, f_ref = lennard_jones(pos)
    torch.testing.assert_close(forces, f_ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(energy, e_ref, rtol=1e-14, atol=0)
    # same configurations as the sampler seeded with the data set's seed
    ref = sample_paper_configurations(N, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pos, ref)
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    assert batch.pos.shape == (32, 3) and batch.energy.shape == (8,)


def test_split_and_dense_subsets(dataset):
    train, val, test = dataset.split()
    assert (len(train), len(val), len(test)) == (300, 100, 100)
    idx = split_indices(N, seed=0)
    pos, forces = dataset.dense_tensors()
    for subset, key in zip((train, val, test), ("train", "val", "test")):
        p, f = subset.dense_tensors()
        assert torch.equal(p, pos[idx[key]]) and torch.equal(f, forces[idx[key]])
        assert torch.equal(subset[3].pos, pos[idx[key][3]])
    all_pos = torch.cat([s.dense_tensors()[0] for s in (train, val, test)])
    assert torch.unique(all_pos.reshape(N, -1), dim=0).shape[0] == N  # disjoint, complete
    again = dataset.split()
    assert torch.equal(again[0].dense_tensors()[0], train.dense_tensors()[0])
    assert not torch.equal(dataset.split(seed=1)[0].dense_tensors()[0], train.dense_tensors()[0])


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    root = str(tmp_path)
    first = PaperArgon(root, num_configs=N, log=False)
    name = "paper_n500_seed0_rmin2.8_sigma3.0.pt"
    assert first.processed_file_names == name
    assert os.path.exists(os.path.join(root, "processed", name))

    def boom(*args, **kwargs):
        raise RuntimeError("sampler called although the cache exists")

    monkeypatch.setattr(paper, "sample_paper_configurations", boom)
    second = PaperArgon(root, num_configs=N, log=False)
    assert torch.equal(second.dense_tensors()[0], first.dense_tensors()[0])
    # any changed parameter means another file, hence processing again
    for kwargs in ({"num_configs": N + 1}, {"seed": 1}, {"r_min": 2.7}, {"sigma": 3.5}):
        with pytest.raises(RuntimeError, match="sampler called"):
            PaperArgon(root, **{"num_configs": N, **kwargs}, log=False)
    monkeypatch.undo()
    other = PaperArgon(root, num_configs=N, seed=1, log=False)
    assert other.processed_file_names == "paper_n500_seed1_rmin2.8_sigma3.0.pt"
    assert not torch.equal(other.dense_tensors()[0], first.dense_tensors()[0])


def test_atomic_write(tmp_path, monkeypatch):
    root = str(tmp_path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")  # leave a partial file behind, as a crash would
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        PaperArgon(root, num_configs=N, log=False)
    processed = os.path.join(root, "processed")
    assert os.listdir(processed) == []  # neither the final file nor a temporary one
    monkeypatch.undo()
    ds = PaperArgon(root, num_configs=N, log=False)
    assert len(ds) == N


def test_pre_transform_path(tmp_path):
    def add_norm(data):
        data.force_norm = data.forces.norm(dim=-1)
        return data

    ds = PaperArgon(str(tmp_path), num_configs=50, pre_transform=add_norm, log=False)
    plain = PaperArgon(str(tmp_path / "plain"), num_configs=50, log=False)
    assert torch.equal(ds.dense_tensors()[1], plain.dense_tensors()[1])
    torch.testing.assert_close(ds[3].force_norm, plain[3].forces.norm(dim=-1))


def test_repr_and_errors(dataset, tmp_path):
    assert repr(dataset) == "PaperArgon(500, seed=0, r_min=2.8, sigma=3.0)"
    with pytest.raises(ValueError, match="num_configs"):
        PaperArgon(str(tmp_path), num_configs=1)


def test_paper_md_initial_positions():
    pos = paper_md_initial_positions()
    assert pos.shape == (4, 3) and pos.dtype == torch.float64
    assert pos.tolist() == [[3.0, 0.0, 0.1], [-3.0, -0.1, 0.0], [0.1, 2.5, 0.0], [0.0, -2.5, -0.1]]
    assert paper_md_initial_positions(dtype=torch.float32).dtype == torch.float32
