import itertools
import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from uenn_geo.neighbors import RadiusGraph, edge_vectors, radius_graph


def reference_pairs(pos, r_cut, cell=None, pbc=None, offset=0):
    """Plain loop over atom pairs and enough periodic images: a set of (i, j, S) tuples."""
    pos = pos.to(torch.float64)
    if cell is None:
        ranges = [range(1)] * 3
        cell = torch.zeros(3, 3, dtype=torch.float64)
    else:
        cell = cell.to(torch.float64)
        recip = torch.linalg.inv(cell).T  # rows b_k with a_i . b_k = delta_ik
        frac = pos @ torch.linalg.inv(cell)
        ranges = []
        for k in range(3):
            if not pbc[k]:
                ranges.append(range(1))
                continue
            width = 1.0 / recip[k].norm().item()  # distance between lattice planes k
            span = (frac[:, k].max() - frac[:, k].min()).item()
            n = math.ceil(r_cut / width + span)
            ranges.append(range(-n, n + 1))
    pairs = set()
    for S in itertools.product(*ranges):
        # r[i, j] = pos[j] - pos[i] + S @ cell for every pair at once
        r = pos[None, :, :] - pos[:, None, :] + torch.tensor(S, dtype=torch.float64) @ cell
        for i, j in (r.norm(dim=-1) < r_cut).nonzero().tolist():
            if i == j and S == (0, 0, 0):
                continue
            pairs.add((i + offset, j + offset, S))
    return pairs


def as_set(edge_index, shifts, cell=None, graph_of_atom=None):
    """(i, j, S) tuples of radius_graph's output, recovering integer S from Cartesian shifts."""
    out = set()
    for e in range(edge_index.shape[1]):
        i, j = edge_index[:, e].tolist()
        if cell is None:
            assert torch.all(shifts[e] == 0)
            S = (0, 0, 0)
        else:
            c = cell if cell.dim() == 2 else cell[graph_of_atom[i]]
            frac = torch.linalg.solve(c.to(torch.float64).T, shifts[e].to(torch.float64))
            S = tuple(int(round(x)) for x in frac.tolist())
            assert torch.allclose(frac, torch.tensor(S, dtype=torch.float64), atol=1e-8)
        out.add((i, j, S))
    assert len(out) == edge_index.shape[1], "duplicate edges"
    return out


def random_cell_positions(n, cell, wrap=True):
    frac = torch.rand(n, 3, dtype=torch.float64)
    if not wrap:
        frac = frac + torch.randint(-2, 3, (n, 3))
    return frac @ cell


def test_free_cluster():
    pos = torch.randn(30, 3, dtype=torch.float64) * 3.0
    edge_index, shifts = radius_graph(pos, 4.0)
    assert edge_index.dtype == torch.long and shifts.shape == (edge_index.shape[1], 3)
    ref = reference_pairs(pos, 4.0)
    assert len(ref) > 50
    assert as_set(edge_index, shifts) == ref
    # full list: both directions
    assert {(i, j) for i, j, _ in ref} == {(j, i) for i, j, _ in ref}


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_free_cluster_other_dimensions(dim):
    pos = torch.randn(25, dim, dtype=torch.float64) * 2.0
    edge_index, shifts = radius_graph(pos, 2.5)
    assert shifts.shape == (edge_index.shape[1], dim)
    d = torch.cdist(pos, pos)
    expected = {(i, j) for i in range(25) for j in range(25) if i != j and d[i, j] < 2.5}
    got = {tuple(e) for e in edge_index.T.tolist()}
    assert len(got) == edge_index.shape[1]
    assert got == expected and len(expected) > 10


def test_orthorhombic_box():
    cell = torch.diag(torch.tensor([9.0, 10.0, 11.0], dtype=torch.float64))
    pos = random_cell_positions(40, cell)
    edge_index, shifts = radius_graph(pos, 4.0, cell=cell)
    ref = reference_pairs(pos, 4.0, cell, [True] * 3)
    assert any(S != (0, 0, 0) for *_, S in ref)
    assert as_set(edge_index, shifts, cell) == ref


def test_triclinic_cell_unwrapped_positions():
    cell = torch.tensor([[7.0, 0.0, 0.0], [2.5, 6.5, 0.0], [-1.5, 2.0, 6.0]], dtype=torch.float64)
    pos = random_cell_positions(20, cell, wrap=False)
    edge_index, shifts = radius_graph(pos, 4.5, cell=cell)
    assert as_set(edge_index, shifts, cell) == reference_pairs(pos, 4.5, cell, [True] * 3)
    # the edge vectors are the short ones, whatever cell the atoms sit in
    r = edge_vectors(pos, edge_index, shifts).norm(dim=-1)
    assert r.max() < 4.5


def test_cell_smaller_than_twice_cutoff():
    cell = torch.tensor([[3.0, 0.0, 0.0], [1.0, 3.2, 0.0], [0.5, 0.7, 2.9]], dtype=torch.float64)
    pos = random_cell_positions(3, cell)
    edge_index, shifts = radius_graph(pos, 7.0, cell=cell)
    ref = reference_pairs(pos, 7.0, cell, [True] * 3)
    assert as_set(edge_index, shifts, cell) == ref
    self_images = [S for i, j, S in ref if i == j]
    assert len(self_images) > 20 and (0, 0, 0) not in self_images
    # a single atom in a small cell sees only its own images
    edge_index, shifts = radius_graph(pos[:1], 7.0, cell=cell)
    assert edge_index.shape[1] > 0 and torch.all(edge_index == 0)
    assert as_set(edge_index, shifts, cell) == reference_pairs(pos[:1], 7.0, cell, [True] * 3)


@pytest.mark.parametrize("pbc", [[True, True, False], [False, True, False], [False] * 3])
def test_mixed_pbc(pbc):
    cell = torch.tensor([[4.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.5, -0.8, 5.0]], dtype=torch.float64)
    pos = random_cell_positions(8, cell)
    pos[:, 2] *= 2.0  # atoms beyond the cell along a non-periodic direction
    edge_index, shifts = radius_graph(pos, 5.0, cell=cell, pbc=torch.tensor(pbc))
    got = as_set(edge_index, shifts, cell)
    assert got == reference_pairs(pos, 5.0, cell, pbc)
    for k in range(3):
        if not pbc[k]:
            assert all(S[k] == 0 for *_, S in got)


def test_batch_of_three_graphs():
    cells = torch.stack(
        [
            torch.diag(torch.tensor([6.0, 7.0, 8.0])),
            torch.tensor([[5.0, 0.0, 0.0], [2.0, 5.0, 0.0], [1.0, 1.0, 4.0]]),
            torch.zeros(3, 3),
        ]
    ).double()
    pbc = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    sizes = [7, 3, 12]
    pos_list = [
        random_cell_positions(sizes[0], cells[0]),
        random_cell_positions(sizes[1], cells[1]),
        torch.randn(sizes[2], 3, dtype=torch.float64) * 2.5,
    ]
    # interleave the graphs: batch need not be sorted
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    perm = torch.randperm(batch.numel())
    pos, batch = torch.cat(pos_list)[perm], batch[perm]

    edge_index, shifts = radius_graph(pos, 4.0, batch=batch, cell=cells, pbc=pbc)
    assert torch.all(batch[edge_index[0]] == batch[edge_index[1]])
    ref = set()
    for g in range(3):
        atoms = (batch == g).nonzero().flatten()
        local = reference_pairs(pos[atoms], 4.0, cells[g] if g < 2 else None, pbc[g])
        ref |= {(atoms[i].item(), atoms[j].item(), S) for i, j, S in local}
    got = set()
    for e in range(edge_index.shape[1]):
        i, j = edge_index[:, e].tolist()
        g = batch[i].item()
        if g == 2:
            assert torch.all(shifts[e] == 0)
            got.add((i, j, (0, 0, 0)))
        else:
            frac = torch.linalg.solve(cells[g].T, shifts[e])
            got.add((i, j, tuple(int(round(x)) for x in frac.tolist())))
    assert got == ref and len(got) == edge_index.shape[1]
    assert all(len([p for p in ref if batch[p[0]] == g]) > 0 for g in range(3))


def test_empty_graph_in_batch_and_no_edges():
    cells = torch.eye(3).expand(3, 3, 3) * 10.0
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = torch.tensor([0, 0, 2])  # graph 1 is empty
    edge_index, shifts = radius_graph(pos, 1.5, batch=batch, cell=cells)
    assert sorted(map(tuple, edge_index.T.tolist())) == [(0, 1), (1, 0)]
    edge_index, shifts = radius_graph(torch.zeros(0, 3), 1.5)
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)


def test_cutoff_is_strict_and_dtypes_follow_pos(real_dtype):
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=real_dtype)
    edge_index, shifts = radius_graph(pos, 1.0)
    assert sorted(map(tuple, edge_index.T.tolist())) == [(0, 2), (2, 0)]
    assert shifts.dtype == real_dtype
    assert radius_graph(pos, 1.0, return_shifts=False).equal(edge_index)


def test_shifts_differentiable_in_cell_and_edge_vectors_in_pos():
    cell = (torch.eye(3, dtype=torch.float64) * 3.0).requires_grad_()
    pos = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    edge_index, shifts = radius_graph(pos, 3.5, cell=cell)
    assert shifts.requires_grad and not edge_index.requires_grad
    r = edge_vectors(pos, edge_index, shifts)
    r.norm(dim=-1).sum().backward()
    assert pos.grad is not None and cell.grad is not None and cell.grad.abs().sum() > 0
    # with a full list the pair forces cancel: sum_i d(sum r_ij)/dpos_i = 0
    assert torch.allclose(pos.grad.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_cell_shapes_accepted():
    cell = torch.diag(torch.tensor([5.0, 6.0, 7.0]))
    pos = random_cell_positions(6, cell.double()).float()
    a = radius_graph(pos, 3.0, cell=cell)
    b = radius_graph(pos, 3.0, cell=cell[None], pbc=torch.ones(1, 3, dtype=torch.bool))
    c = radius_graph(pos, 3.0, cell=cell, pbc=torch.tensor([True, True, True]))
    for x, y in [(a, b), (a, c)]:
        assert x[0].equal(y[0]) and x[1].equal(y[1])


def test_transform_and_pyg_batch():
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    transform = RadiusGraph(3.0)
    assert repr(transform) == "RadiusGraph(r_cut=3.0)"
    graphs = []
    for n in (3, 5):
        data = Data(pos=torch.rand(n, 3) * 4.0, cell=cell[None], pbc=torch.ones(1, 3, dtype=bool))
        graphs.append(transform(data))
    for data in graphs:
        e, s = radius_graph(data.pos, 3.0, cell=cell)
        assert data.edge_index.equal(e) and data.shifts.equal(s)
    # PyG collation offsets edge_index and stacks the shifts; same as one batched call
    batch = Batch.from_data_list(graphs)
    e, s = radius_graph(batch.pos, 3.0, batch=batch.batch, cell=batch.cell, pbc=batch.pbc)
    assert batch.edge_index.equal(e) and batch.shifts.equal(s)
    free = transform(Data(pos=torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])))
    assert free.edge_index.tolist() == [[0, 1], [1, 0]] and torch.all(free.shifts == 0)


def test_invalid_inputs():
    pos = torch.rand(4, 3)
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(torch.tensor([[0.0, 0.0, float("nan")]]), 1.0)
    with pytest.raises(ValueError, match="r_cut"):
        radius_graph(pos, 0.0)
    with pytest.raises(ValueError, match="r_cut"):
        radius_graph(pos, float("inf"))
    with pytest.raises(ValueError, match=r"shape \(N, n\)"):
        radius_graph(torch.rand(4), 1.0)
    with pytest.raises(TypeError, match="floating"):
        radius_graph(torch.ones(4, 3, dtype=torch.long), 1.0)
    with pytest.raises(TypeError, match="floating"):
        radius_graph(torch.ones(4, 3, dtype=torch.complex64), 1.0)
    with pytest.raises(ValueError, match=r"batch must have shape \(4,\)"):
        radius_graph(pos, 1.0, batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        radius_graph(pos, 1.0, batch=torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        radius_graph(pos, 1.0, batch=torch.tensor([0, 0, -1, 0]))
    with pytest.raises(ValueError, match="cell must have shape"):
        radius_graph(pos, 1.0, cell=torch.eye(2))
    with pytest.raises(ValueError, match="cell has 1 cells"):
        radius_graph(pos, 1.0, batch=torch.tensor([0, 0, 1, 1]), cell=torch.eye(3))
    with pytest.raises(ValueError, match="3-dimensional"):
        radius_graph(torch.rand(4, 2), 1.0, cell=torch.eye(3))
    with pytest.raises(ValueError, match="pbc must have shape"):
        radius_graph(pos, 1.0, cell=torch.eye(3), pbc=torch.tensor([True, False]))
    with pytest.raises(TypeError, match="bool"):
        radius_graph(pos, 1.0, cell=torch.eye(3), pbc=torch.ones(3))
    with pytest.raises(ValueError, match="no cell"):
        radius_graph(pos, 1.0, pbc=torch.tensor([True, False, False]))
    with pytest.raises(ValueError, match="linearly dependent"):
        singular = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
        radius_graph(pos, 1.0, cell=singular, pbc=torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match="NaN"):
        radius_graph(pos, 1.0, cell=torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="edge_index"):
        edge_vectors(pos, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="shifts"):
        edge_vectors(pos, torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="r_cut"):
        RadiusGraph(-1.0)


def test_dense_path_matches_vesin_path(monkeypatch):
    import uenn_geo.neighbors as nb

    sizes = [3, 17, 1, 40, 8]
    batch = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    batch = batch[torch.randperm(batch.numel())]  # unsorted batch vector
    pos = torch.randn(batch.numel(), 3, dtype=torch.float64) * 4
    dense = nb.radius_graph(pos, 5.0, batch=batch)
    monkeypatch.setattr(nb, "DENSE_PAIR_LIMIT", 0)
    sparse = nb.radius_graph(pos, 5.0, batch=batch)

    def canonical(edge_index):
        key = edge_index[0] * batch.numel() + edge_index[1]
        return edge_index[:, torch.argsort(key)]

    assert torch.equal(canonical(dense[0]), canonical(sparse[0]))
    assert torch.equal(dense[0][0], sparse[0][0])  # both grouped by graph, sorted by centre
    assert torch.count_nonzero(dense[1]) == 0
    assert dense[0].shape[1] > 50
