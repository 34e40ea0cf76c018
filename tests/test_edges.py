import pytest
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch_geometric.data import Batch, Data

from uenn_geo.edges import Edges, build_edges, edge_chunks, edges_of, nearest_edges
from uenn_geo.neighbors import RadiusGraph, radius_graph

F64 = torch.float64


def box(num: int = 12, side: float = 4.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num, 3, dtype=F64, generator=gen) * side, torch.eye(3, dtype=F64) * side


def test_build_edges_periodic_and_free():
    pos, cell = box()
    edges = build_edges(pos, 3.0, cell=cell.unsqueeze(0))
    index, shifts = radius_graph(pos, 3.0, cell=cell.unsqueeze(0))
    assert torch.equal(edges.index, index) and torch.equal(edges.shifts, shifts)
    assert edges.cutoff == 3.0 and edges.chunk == 0
    r = edges.vectors(pos).norm(dim=1)
    assert bool((r < 3.0).all()) and bool((r > 0).all())
    free = build_edges(pos, 3.0)
    assert free.shifts is None  # a free cluster has no shifts
    assert torch.equal(free.index, radius_graph(pos, 3.0)[0])
    off = build_edges(pos, 3.0, cell=cell.unsqueeze(0), pbc=torch.zeros(1, 3, dtype=bool))
    assert off.shifts is None and torch.equal(off.index, free.index)


def test_chunked_layout_holds_every_edge_once():
    pos, cell = box(num=10, side=3.5)
    edges = build_edges(pos, 4.0, cell=cell.unsqueeze(0))
    perm = torch.randperm(edges.num_edges)  # any order
    shuffled = Edges(edges.index[:, perm], edges.shifts[perm], edges.cutoff)
    laid = shuffled.chunked(10, size=8, max_padding=float("inf"))
    assert laid.chunk == 8 and laid.num_edges % 8 == 0
    laid.check(10, cutoff=4.0)
    pad = (laid.index[0] == laid.index[1]) & (laid.shifts == 0).all(dim=1)
    real = sorted(
        zip(*laid.index[:, ~pad].tolist(), map(tuple, laid.shifts[~pad].tolist()), strict=True)
    )
    want = sorted(zip(*edges.index.tolist(), map(tuple, edges.shifts.tolist()), strict=True))
    assert real == want
    # plain() removes the padding and keeps the atoms' own periodic images (i, i, s != 0)
    assert bool((edges.index[0] == edges.index[1]).any())
    plain = laid.plain()
    assert plain.chunk == 0 and edges.plain() is edges
    # zero-shift self-loops in a plain list (the evaluator's padding) go too
    loop = torch.tensor([[3], [3]])
    padded = Edges(
        torch.cat([edges.index, loop], 1),
        torch.cat([edges.shifts, torch.zeros(1, 3, dtype=F64)]),
        4.0,
    )
    assert torch.equal(padded.plain().index, edges.index)
    assert (
        sorted(zip(*plain.index.tolist(), map(tuple, plain.shifts.tolist()), strict=True)) == want
    )
    assert laid.chunked(10) is laid  # laid out once
    assert shuffled.chunked(10, size=8, max_padding=1.0).chunk == 0  # padding would not pay
    # without a size: the largest that pads by at most max_padding
    ring = Edges(torch.stack([torch.arange(40) // 8, torch.arange(40) % 5]), None, 3.0)
    assert ring.chunked(5).chunk == 8  # 8 neighbours each: chunks of 8, no padding


@pytest.mark.parametrize("sort", [True, False])
def test_chunked_subset_equals_selecting_first(sort):
    pos, cell = box(num=10, side=3.5)
    edges = build_edges(pos, 4.0, cell=cell.unsqueeze(0))
    if not sort:  # the layout also holds for lists not sorted by centre
        perm = torch.randperm(edges.num_edges)
        edges = Edges(edges.index[:, perm], edges.shifts[perm], edges.cutoff)
    keep = torch.nonzero(edges.vectors(pos).norm(dim=1) < 3.0).squeeze(1)
    assert 0 < keep.numel() < edges.num_edges
    plain = Edges(edges.index[:, keep], edges.shifts[keep], edges.cutoff)
    for size, padding in ((8, float("inf")), (None, 1.5), (8, 1.0)):
        want = plain.chunked(10, size=size, max_padding=padding)
        got = edges.chunked(10, size=size, max_padding=padding, subset=keep)
        assert got.chunk == want.chunk
        assert torch.equal(got.index, want.index) and torch.equal(got.shifts, want.shifts)
    assert edges.chunked(10, subset=keep[:0]).num_edges == 0
    with pytest.raises(ValueError, match="plain"):
        plain.chunked(10, size=8, max_padding=float("inf")).chunked(10, subset=keep)


def test_check_names_the_problem():
    pos, cell = box()
    edges = build_edges(pos, 3.0, cell=cell.unsqueeze(0))
    with pytest.raises(ValueError, match="one row per edge"):
        Edges(edges.index, edges.shifts[:-1], 3.0).check(12)
    with pytest.raises(ValueError, match="outside 0..11"):
        Edges(edges.index + 1, edges.shifts, 3.0).check(12)
    with pytest.raises(ValueError, match="shape \\(2, E\\)"):
        Edges(edges.index[0], None, 3.0).check(12)
    with pytest.raises(TypeError, match="torch.long"):
        Edges(edges.index.int(), None, 3.0).check(12)
    with pytest.raises(ValueError, match="cutoff of 3.0 A but the model's cutoff is 5.0 A"):
        edges.check(12, cutoff=5.0)
    edges.check(12, cutoff=3.0)


def test_edges_of_refuses_stale_stored_lists():
    pos, cell = box()
    data = Data(pos=pos, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=bool))
    built = edges_of(data, 3.0)
    assert torch.equal(built.index, build_edges(pos, 3.0, cell=cell.unsqueeze(0)).index)
    stored = RadiusGraph(3.0)(data.clone())
    assert stored.edge_cutoff.tolist() == [3.0]
    assert torch.equal(edges_of(stored, 3.0).index, built.index)
    with pytest.raises(ValueError, match="built for a cutoff of \\[3.0\\] A"):
        edges_of(stored, 4.0)
    del stored.edge_cutoff
    with pytest.raises(ValueError, match="no data.edge_cutoff"):
        edges_of(stored, 3.0)
    # Stored per graph, the cutoffs collate with the batch.
    graphs = [RadiusGraph(3.0)(Data(pos=box(seed=s)[0])) for s in (1, 2)]
    batch = Batch.from_data_list(graphs)
    assert batch.edge_cutoff.tolist() == [3.0, 3.0]
    assert edges_of(batch, 3.0).num_edges == sum(g.edge_index.shape[1] for g in graphs)


def test_nearest_edges_keeps_the_k_nearest():
    pos, _ = box(num=8, side=3.0)
    kept = nearest_edges(build_edges(pos, 10.0), pos, 3)
    assert torch.equal(torch.bincount(kept.index[0], minlength=8), torch.full((8,), 3))
    dist = torch.cdist(pos, pos) + torch.eye(8, dtype=F64) * 1e9
    for i in range(8):
        assert set(kept.index[1, kept.index[0] == i].tolist()) == set(
            dist[i].argsort()[:3].tolist()
        )
    with pytest.raises(ValueError, match="k must be >= 1"):
        nearest_edges(kept, pos, 0)


def test_edges_are_a_pytree():
    # torch.compile and torch.export see the tensors of an Edges, and keep cutoff and layout.
    pos, cell = box()
    edges = build_edges(pos, 3.0, cell=cell.unsqueeze(0)).chunked(12, max_padding=float("inf"))
    leaves, spec = tree_flatten(edges)
    assert len(leaves) == 2 and leaves[0] is edges.index
    again = tree_unflatten(leaves, spec)
    assert again.cutoff == 3.0 and again.chunk == edges.chunk and again.shifts is edges.shifts
    moved = edges.to(dtype=torch.float32)
    assert moved.shifts.dtype == torch.float32 and moved.index.dtype == torch.long


def test_edge_chunks_place_each_edge_once():
    index = torch.tensor([3, 0, 3, 3, 1, 3, 0, 3, 3])  # atom 2 has no edge, atom 3 has six
    chunk, slot, chunk_node = edge_chunks(index, num_nodes=5, size=4)
    assert chunk_node.shape == (4,)  # eagerly: the chunks in use (atoms 0, 1, 3, 3)
    assert torch.equal(chunk_node[chunk], index)  # a chunk holds edges of one atom
    assert bool((slot >= 0).all()) and bool((slot < 4).all())
    assert len(set(zip(chunk.tolist(), slot.tolist(), strict=True))) == 9  # no collisions
    assert torch.bincount(chunk, minlength=4).tolist() == [2, 1, 4, 2]  # 3 -> 4 + 2
    # Nothing to place: no edges, no atoms.
    chunk, slot, chunk_node = edge_chunks(torch.empty(0, dtype=torch.long), 0, 32)
    assert chunk.numel() == slot.numel() == chunk_node.numel() == 0
