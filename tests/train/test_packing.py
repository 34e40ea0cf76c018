import pytest
import torch
from torch_geometric.data import Batch, Data

from uenn_geo.edges import CHUNK_SIZES, edges_of
from uenn_geo.models import UENNForceField
from uenn_geo.neighbors import RadiusGraph
from uenn_geo.train import TrainConfig, force_loss, train
from uenn_geo.train.packing import PackedGraphs, chunk_size

CUTOFF = 3.0


def _structures(n, seed=0, weights=False, cutoff=CUTOFF):
    """Periodic structures of 2 to 9 atoms of H and C in a 5-A cell (image pairs included),
    with their neighbour lists: lists of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    graph = RadiusGraph(cutoff)
    frames = []
    for k in range(n):
        atoms = int(torch.randint(2, 10, (1,), generator=gen))
        data = Data(
            pos=torch.rand(atoms, 3, generator=gen, dtype=torch.float64) * 5,
            z=torch.tensor([1, 6])[torch.randint(0, 2, (atoms,), generator=gen)],
            forces=torch.randn(atoms, 3, generator=gen, dtype=torch.float64),
            energy=torch.randn(1, generator=gen, dtype=torch.float64),
            cell=5 * torch.eye(3, dtype=torch.float64).unsqueeze(0),
            pbc=torch.ones(1, 3, dtype=torch.bool),
            config_type=f"frame{k}",
        )
        if weights:
            data.weight = torch.tensor([0.5 + k % 3], dtype=torch.float64)
        frames.append(graph(data))
    return frames


def _model(conservative=True):
    torch.manual_seed(0)
    return UENNForceField(
        cutoff=CUTOFF,
        num_basis=8,
        hidden_channels=8,
        mlp_channels=[16],
        atomic_numbers=[1, 6],
        conservative=conservative,
        species_pairs=True,
        dtype=torch.float64,
    )


def test_every_batch_has_the_budget_shape_and_every_structure_comes_once():
    frames = _structures(40)
    packed = PackedGraphs(frames, CUTOFF)
    room = packed.budget(4)
    assert room.atoms >= 4 * packed.atoms.double().mean() + 2
    epoch = packed.batches(4, True, torch.Generator().manual_seed(1))
    seen = []
    for batch in epoch:
        assert batch.num_nodes == room.atoms
        assert batch.edge_index.shape[1] == room.edges
        assert batch.num_graphs == room.graphs
        real = batch.weight > 0
        seen += [c for c, keep in zip(batch.config_type, real.tolist(), strict=True) if keep]
    assert sorted(seen) == sorted(f"frame{k}" for k in range(40))
    assert len(epoch) == len(epoch.groups) >= 10  # about 40 / 4, a few more for the gaps


def test_ranks_take_disjoint_shards_of_one_packing_as_many_each():
    packed = PackedGraphs(_structures(40), CUTOFF)
    epoch = packed.batches(4, True, torch.Generator().manual_seed(1))
    shards = [epoch.shard(r, 3) for r in range(3)]
    assert len({len(shard) for shard in shards}) == 1  # every rank takes as many steps
    assert 3 * len(shards[0]) > len(epoch) - 3
    taken = [g for shard in shards for group in shard.groups for g in group]
    assert len(taken) == len(set(taken))  # no structure on two ranks
    assert set(taken) <= set(range(40))
    first = next(iter(shards[1]))
    assert first.num_nodes == packed.budget(4).atoms  # the shape of every batch


def test_padding_never_touches_the_real_structures():
    frames = _structures(12)
    packed = PackedGraphs(frames, CUTOFF)
    epoch = packed.batches(4, True, torch.Generator().manual_seed(0))
    batch = next(iter(epoch))
    real = batch.weight[batch.batch] > 0
    i, j = batch.edge_index
    assert torch.equal(real[i], real[j])  # no edge joins a padding atom and a real one
    length = (batch.pos[j] - batch.pos[i] + batch.shifts).norm(dim=1)
    assert (length[~real[i]] > 2 * CUTOFF).all()  # padding edges: beyond the cutoff
    assert (length[real[i]] < CUTOFF).all()
    assert (batch.energy[batch.weight == 0] == 0).all()


@pytest.mark.parametrize(("conservative", "chunk"), [(True, None), (False, None), (True, 8)])
def test_padded_batch_gives_the_loss_and_gradients_of_the_unpadded_one(conservative, chunk):
    frames = _structures(12)
    packed = PackedGraphs(frames, CUTOFF, chunk)
    model = _model(conservative)
    model.fit_scales(frames)
    weight = 0.1 if conservative else 0.0
    group = packed.groups(4, torch.randperm(12, generator=torch.Generator().manual_seed(2)))[0]
    plain = Batch.from_data_list([frames[i] for i in group])
    padded = packed.make(group, packed.budget(4))
    grads = []
    for batch in (plain, padded):
        model.zero_grad()
        loss = force_loss(model, batch, weight)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-14)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_padding_structures_weigh_nothing_beside_config_type_weights():
    frames = _structures(12, weights=True)
    packed = PackedGraphs(frames, CUTOFF)
    model = _model()
    model.fit_scales(frames)
    group = packed.groups(4, torch.arange(12))[0]
    padded = packed.make(group, packed.budget(4))
    n = len(group)
    assert torch.equal(padded.weight[:n], torch.cat([frames[i].weight for i in group]))
    assert (padded.weight[n:] == 0).all()
    plain = Batch.from_data_list([frames[i] for i in group])
    torch.testing.assert_close(force_loss(model, padded, 0.1), force_loss(model, plain, 0.1))


def test_a_structure_larger_than_the_average_batch_still_fits():
    frames = _structures(6)
    packed = PackedGraphs(frames, CUTOFF)
    groups = packed.groups(1, torch.arange(6))  # budget: about one average structure
    assert sorted(i for g in groups for i in g) == list(range(6))
    room = packed.budget(1)
    assert room.atoms - 2 >= int(packed.atoms.max()) and room.edges >= int(packed.edges.max())


def test_only_lists_of_graphs_with_stored_edges_pack():
    frames = _structures(3)
    assert PackedGraphs.fits(frames)
    bare = [Data(pos=f.pos, z=f.z) for f in frames]
    assert not PackedGraphs.fits(bare)
    assert not PackedGraphs.fits([])
    assert not PackedGraphs.fits(tuple(frames))
    with pytest.raises(ValueError, match="stored neighbour lists"):
        PackedGraphs(bare, CUTOFF)


def test_training_on_packed_structures_takes_one_step_per_padded_batch():
    frames = _structures(20)
    packed = PackedGraphs(frames, CUTOFF)
    model = _model()
    model.fit_scales(frames)
    cfg = TrainConfig(batch_size=4, max_epochs=2, energy_weight=0.01, progress=False)
    result = train(model, packed, frames[:4], cfg)
    gen = torch.Generator().manual_seed(cfg.seed)  # the loop's shuffle, replayed
    expected = sum(len(packed.batches(4, True, gen)) for _ in range(2))
    assert result.steps == expected
    assert result.epochs == 2


def test_chunked_lists_are_laid_out_once_and_read_as_chunks():
    frames = _structures(20)
    packed = PackedGraphs(frames, CUTOFF, chunk=8)
    assert (packed.edges % 8 == 0).all()
    assert packed[0] is not frames[0] and frames[0].edge_index.shape[1] <= packed.edges[0]
    room = packed.budget(4)
    assert room.edges % 8 == 0
    batch = next(iter(packed.batches(4, True, torch.Generator().manual_seed(0))))
    edges = edges_of(batch, CUTOFF)
    assert edges.chunk == 8
    edges.check(batch.num_nodes, CUTOFF)  # every chunk of one centre, the layout checked
    assert edges_of(frames[0], CUTOFF).chunk == 0  # plain lists stay plain


def test_chunk_size_is_the_largest_that_pads_little():
    assert chunk_size(_structures(20)) is None  # 0 to 8 neighbours: every layout pads more
    frames = _structures(20, cutoff=6.0)  # tens of neighbours
    size = chunk_size(frames)
    assert size in CHUNK_SIZES
    counts = [torch.bincount(f.edge_index[0], minlength=f.num_nodes) for f in frames]
    total = sum(int(c.sum()) for c in counts)
    padded = sum(int(((c + size - 1) // size).sum()) for c in counts) * size
    assert padded <= 1.5 * total
    larger = [s for s in CHUNK_SIZES if s > size]
    for s in larger:
        assert sum(int(((c + s - 1) // s).sum()) for c in counts) * s > 1.5 * total


def test_a_batch_is_pygs_collation_of_its_structures_followed_by_the_padding():
    frames = _structures(12)
    for f in frames:  # as the readers store it
        f.num_atoms = torch.tensor([f.num_nodes])
    packed = PackedGraphs(frames, CUTOFF, chunk=8)
    room = packed.budget(4)
    group = packed.groups(4, torch.randperm(12, generator=torch.Generator().manual_seed(3)))[1]
    batch = packed.make(group, room)
    plain = Batch.from_data_list([packed[i] for i in group])
    atoms, edges, n = plain.num_nodes, plain.edge_index.shape[1], len(group)
    for key in ("pos", "z", "forces", "batch"):
        assert torch.equal(batch[key][:atoms], plain[key]), key
    assert torch.equal(batch.edge_index[:, :edges], plain.edge_index)
    assert torch.equal(batch.shifts[:edges], plain.shifts)
    for key in ("energy", "cell", "pbc", "num_atoms", "ptr"):
        assert torch.equal(batch[key][: plain[key].shape[0]], plain[key]), key
    assert batch.config_type[:n] == plain.config_type
    assert len(batch.config_type) == batch.num_graphs == room.graphs
    # the padding: one structure of the remaining atoms (far apart), whose edges join its
    # first two atoms; the others empty; all of weight 0 and zero energy
    assert torch.equal(
        batch.edge_index[:, edges:],
        torch.tensor([[atoms], [atoms + 1]]).expand(2, room.edges - edges),
    )
    assert batch.num_atoms[-1] == room.atoms - atoms and (batch.num_atoms[n:-1] == 0).all()
    assert (batch.batch[atoms:] == room.graphs - 1).all()
    assert (batch.weight[n:] == 0).all() and (batch.energy[n:] == 0).all()
    assert batch.edge_chunk == 8
    assert batch.edge_index.is_contiguous()  # as PyG's (a compiled step guards on strides)
