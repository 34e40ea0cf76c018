import pytest
import torch
from torch_geometric.data import Batch, Data

from uenn_geo.neighbors import RadiusGraph
from uenn_geo.train.dense import StackedGraphs, batches


def _frames(n, atoms=5, seed=0):
    """Frames of one periodic 5-atom structure with their lists (full, equal length)."""
    gen = torch.Generator().manual_seed(seed)
    graph = RadiusGraph(10.0)  # every pair, no image (the cell is large)
    frames = []
    for k in range(n):
        data = Data(
            pos=torch.rand(atoms, 3, generator=gen, dtype=torch.float64) * 3,
            z=torch.arange(atoms),
            forces=torch.randn(atoms, 3, generator=gen, dtype=torch.float64),
            energy=torch.tensor([float(k)], dtype=torch.float64),
            cell=50 * torch.eye(3, dtype=torch.float64).unsqueeze(0),
            pbc=torch.ones(1, 3, dtype=torch.bool),
            config_type=f"frame{k}",
        )
        frames.append(graph(data))
    return frames


def _assert_same_batch(got, want):
    assert set(got.keys()) == set(want.keys())
    for key in want.keys():
        if isinstance(want[key], torch.Tensor):
            assert torch.equal(got[key], want[key]), key
        else:
            assert got[key] == want[key], key
    assert got.num_graphs == want.num_graphs


def test_stacked_batches_equal_pyg_collation():
    frames = _frames(7)
    assert "edge_index" in frames[0] and "shifts" in frames[0]
    stacked = StackedGraphs(frames)
    for index in ([3, 1, 6], [0], list(range(7))):
        _assert_same_batch(
            stacked._make(torch.tensor(index)), Batch.from_data_list([frames[k] for k in index])
        )
    assert stacked[2] is frames[2] and len(stacked) == 7  # still the list of graphs


def test_stacked_batches_cover_every_graph_once_per_epoch():
    stacked = StackedGraphs(_frames(10))
    gen = torch.Generator().manual_seed(0)
    seen = [c for b in batches(stacked, 4, True, gen) for c in b.config_type]
    assert sorted(seen) == sorted(f"frame{k}" for k in range(10))
    assert [b.num_graphs for b in batches(stacked, 4)] == [4, 4, 2]


def test_only_graphs_of_one_shape_stack():
    frames = _frames(3)
    assert StackedGraphs.fits(frames)
    assert not StackedGraphs.fits(frames[:2] + _frames(1, atoms=4))  # another size
    other = frames[:2] + [frames[2].clone()]
    other[2].weight = torch.ones(1)
    assert not StackedGraphs.fits(other)  # other attributes
    assert not StackedGraphs.fits([]) and not StackedGraphs.fits(tuple(frames))
    with pytest.raises(ValueError, match="same attributes and tensor shapes"):
        StackedGraphs(frames[:2] + _frames(1, atoms=4))
