import json

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn.models import SchNet

import uenn_geo.models
from uenn_geo.edges import Edges, build_edges, edges_of, nearest_edges
from uenn_geo.models import load_model, save_model
from uenn_geo.models.schnet import SchNetForceField
from uenn_geo.testing import apply_group, random_orthogonal, random_permutation, relative_error
from uenn_geo.train import evaluate, force_loss

F64 = torch.float64
SMALL = {
    "cutoff": 5.0,
    "hidden_channels": 16,
    "num_filters": 16,
    "num_interactions": 2,
    "num_gaussians": 12,
    "dtype": "float64",
}


def make_model(**kwargs) -> SchNetForceField:
    return SchNetForceField(**{**SMALL, **kwargs}).eval()


def cluster(num: int, z: list[int] | None = None, spread: float = 1.5) -> Data:
    z = [18] * num if z is None else z
    return Data(pos=torch.randn(num, 3, dtype=F64) * spread, z=torch.tensor(z))


def periodic(num: int = 4, length: float = 4.0) -> Data:
    cell = torch.tensor([[length, 0.0, 0.0], [0.6, length, 0.0], [0.0, -0.4, length]], dtype=F64)
    frac = torch.rand(num, 3, dtype=F64)
    return Data(
        pos=frac @ cell,
        z=torch.full((num,), 29),
        cell=cell.unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
    )


def energy_of(model: SchNetForceField, data: Data) -> torch.Tensor:
    return model.energy_forces(data)["energy"]


def finite_difference_forces(model: SchNetForceField, data: Data, h: float = 1e-5) -> torch.Tensor:
    forces = torch.empty_like(data.pos)
    for i in range(data.pos.shape[0]):
        for a in range(3):
            energies = []
            for sign in (1.0, -1.0):
                moved = data.clone()
                moved.pos = data.pos.clone()
                moved.pos[i, a] += sign * h
                energies.append(energy_of(model, moved).sum().item())
            forces[i, a] = -(energies[0] - energies[1]) / (2 * h)
    return forces


def test_repr_config_and_defaults():
    model = SchNetForceField()
    assert repr(model) == (
        "SchNetForceField(cutoff=10.2, hidden_channels=64, num_interactions=3, float32)"
    )
    assert model.config == {
        "cutoff": 10.2,
        "hidden_channels": 64,
        "num_filters": 64,
        "num_interactions": 3,
        "num_gaussians": 50,
        "max_num_neighbors": None,
        "dtype": "float32",
    }
    assert json.loads(json.dumps(model.config)) == model.config
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {"force_scale", "energy_scale", "energy_shift"} <= set(model.state_dict())


@pytest.mark.parametrize("make_data", [lambda: cluster(6), lambda: periodic(4)])
def test_forces_are_minus_energy_gradient(make_data):
    model = make_model()
    with torch.no_grad():
        model.energy_scale.fill_(0.7)
    data = make_data()
    forces = model(data)
    assert forces.abs().max() > 1e-3
    expected = finite_difference_forces(model, data)
    assert relative_error(forces, expected) < 1e-7
    # Energy gradients conserve momentum: the forces of a structure sum to zero.
    assert forces.sum(0).abs().max() < 1e-12


def test_matches_schnet_with_a_brute_force_graph():
    """Same weights, PyG's SchNet called with an O(N^2) graph of all pairs within the cutoff."""
    model = make_model()
    data = cluster(7, spread=2.5)
    cutoff = SMALL["cutoff"]

    def dense_graph(pos, batch):
        i, j = torch.triu_indices(pos.shape[0], pos.shape[0], 1)
        dist = (pos[i] - pos[j]).norm(dim=-1)
        keep = dist < cutoff
        edge_index = torch.cat([torch.stack([i, j])[:, keep], torch.stack([j, i])[:, keep]], 1)
        return edge_index, dist[keep].repeat(2)

    reference = SchNet(
        hidden_channels=16,
        num_filters=16,
        num_interactions=2,
        num_gaussians=12,
        cutoff=cutoff,
        interaction_graph=dense_graph,
    ).to(F64)
    reference.load_state_dict(
        {
            k.removeprefix("schnet."): v
            for k, v in model.state_dict().items()
            if k.startswith("schnet.")
        }
    )
    expected = reference(data.z, data.pos).reshape(-1)
    assert torch.allclose(energy_of(model, data), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reflection", [False, True])
def test_rotation_reflection_translation(reflection):
    model = make_model()
    Q = random_orthogonal(3, reflection=reflection)
    shift = torch.tensor([1.5, -4.0, 2.0], dtype=F64)
    for data in (cluster(7, [1, 8, 1, 1, 8, 8, 1]), periodic(5)):
        forces = model(data)
        energy = energy_of(model, data)
        moved = data.clone()
        moved.pos = data.pos @ Q.T + shift
        if "cell" in data:
            moved.cell = data.cell @ Q.T
        assert relative_error(model(moved), apply_group(Q, forces, axis=-1)) < 1e-10
        assert torch.allclose(energy_of(model, moved), energy, rtol=1e-12)


def test_periodic_supercell_and_batch():
    model = make_model()
    data = periodic(4)
    energy, forces = energy_of(model, data), model(data)
    # A 2x1x1 supercell holds two copies: twice the energy, the same forces on each copy.
    cell = data.cell[0]
    big = Data(
        pos=torch.cat([data.pos, data.pos + cell[0]]),
        z=data.z.repeat(2),
        cell=torch.stack([2 * cell[0], cell[1], cell[2]]).unsqueeze(0),
        pbc=data.pbc,
    )
    assert torch.allclose(energy_of(model, big), 2 * energy, rtol=1e-10)
    assert torch.allclose(model(big), forces.repeat(2, 1), atol=1e-10)
    # A batch of structures gives each structure's own energy and forces.
    other = cluster(5, [29] * 5)
    batch = Batch.from_data_list([Data(pos=other.pos, z=other.z), data])
    batch.cell = torch.cat([torch.zeros(1, 3, 3, dtype=F64), data.cell])
    batch.pbc = torch.tensor([[False] * 3, [True] * 3])
    assert torch.allclose(energy_of(model, batch), torch.cat([energy_of(model, other), energy]))
    assert torch.allclose(model(batch), torch.cat([model(other), forces]), atol=1e-12)
    perm = random_permutation(batch.num_nodes, batch=batch.batch)
    permuted = batch.clone()
    permuted.pos, permuted.z, permuted.batch = batch.pos[perm], batch.z[perm], batch.batch[perm]
    assert relative_error(model(permuted), model(batch)[perm]) < 1e-12


def test_given_edges_are_used_and_truncation():
    model = make_model()
    data = cluster(6, spread=1.0)
    full = model(data)
    empty = Edges(torch.empty(2, 0, dtype=torch.long), None, model.cutoff)
    assert torch.equal(model(data, empty), torch.zeros_like(data.pos))
    listed = build_edges(data.pos, SMALL["cutoff"])
    assert torch.allclose(model(data, listed), full, atol=1e-13)
    # max_num_neighbors keeps the k nearest neighbours of each centre.
    kept = nearest_edges(build_edges(data.pos, 10.0), data.pos, 2).index
    assert torch.equal(torch.bincount(kept[0], minlength=6), torch.full((6,), 2))
    dist = torch.cdist(data.pos, data.pos) + torch.eye(6, dtype=F64) * 1e9
    nearest = dist.argsort(dim=1)[:, :2]
    for i in range(6):
        assert set(kept[1, kept[0] == i].tolist()) == set(nearest[i].tolist())
    truncated = make_model(max_num_neighbors=2)
    truncated.load_state_dict(model.state_dict())
    assert relative_error(truncated(data), full) > 1e-3


@pytest.mark.parametrize("periodic_cell", [False, True], ids=["cluster", "periodic"])
def test_engine_lists_chunked_or_with_a_skin_change_nothing(periodic_cell):
    # The engines (uenn_geo.engines.Evaluator, UENNCalculator) hand a model its list laid out
    # in chunks, padded with self-loops at r = 0, and from a Verlet cache; SchNet's filters
    # do not vanish at r = 0 nor beyond r_c, so it must read neither padding nor skin pairs.
    from ase import Atoms

    from uenn_geo.calculator import UENNCalculator

    torch.manual_seed(3)
    model = make_model()
    data = periodic(6, length=4.5) if periodic_cell else cluster(10, spread=1.2)
    ref = model.energy_forces(data)
    edges = edges_of(data, model.cutoff)
    chunked = edges.chunked(data.pos.shape[0], size=8, max_padding=100.0)
    assert chunked.num_edges > edges.num_edges
    out = model.energy_forces(data, chunked)
    assert torch.allclose(out["forces"], ref["forces"], atol=1e-12)
    assert torch.allclose(out["energy"], ref["energy"], atol=1e-12)
    wide = edges_of(data, model.cutoff + 1.0)  # pairs up to 1 A past the cutoff
    assert wide.num_edges > edges.num_edges
    skin = Edges(wide.index, wide.shifts, model.cutoff)
    assert torch.allclose(model.energy_forces(data, skin)["forces"], ref["forces"], atol=1e-12)
    atoms = Atoms(numbers=data.z.numpy(), positions=data.pos.numpy())
    if periodic_cell:
        atoms.set_cell(data.cell[0].numpy())
        atoms.pbc = True
    atoms.calc = UENNCalculator(model, skin=1.0)
    assert torch.allclose(torch.from_numpy(atoms.get_forces()), ref["forces"], atol=1e-10)


def test_fit_scales_and_training_gradients():
    model = make_model()
    graphs = [cluster(n) for n in (3, 5, 4)]
    for k, g in enumerate(graphs):
        g.forces = torch.randn(g.num_nodes, 3, dtype=F64) * 0.1
        g.energy = torch.tensor([-0.3 * g.num_nodes + 0.01 * k], dtype=F64)
    scale = model.fit_scales(graphs)
    expected = torch.cat([g.forces.flatten() for g in graphs]).square().mean().sqrt().item()
    assert scale == pytest.approx(expected)
    assert model.force_scale.item() == pytest.approx(expected)
    assert model.energy_scale.item() == pytest.approx(expected)
    assert model.energy_shift[18].item() == pytest.approx(-0.3, abs=0.01)
    assert model.energy_shift[1].item() == 0.0
    with pytest.raises(ValueError, match="empty"):
        model.fit_scales(torch.empty(0, 3))
    # Training mode keeps the graph through the forces, so a force loss trains SchNet;
    # evaluation (under no_grad) still differentiates the energy.
    batch = Batch.from_data_list(graphs)
    model.train()
    force_loss(model, batch).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) > 0
    result = evaluate(model, graphs)
    assert result["force_rmse"] > 0 and result["components"] == 36
    assert model.training


def test_save_load_round_trip(tmp_path):
    assert uenn_geo.models.MODELS["schnet"] is SchNetForceField
    model = make_model(max_num_neighbors=8)
    model.fit_scales(torch.randn(10, 3, dtype=F64))
    save_model(model, tmp_path / "schnet.pt")
    loaded = load_model(tmp_path / "schnet.pt")
    assert isinstance(loaded, SchNetForceField) and not loaded.training
    assert loaded.config == model.config
    assert torch.equal(loaded.force_scale, model.force_scale)
    data = periodic(4)
    assert torch.equal(loaded(data), model(data))


def test_bad_input():
    model = make_model()
    with pytest.raises(TypeError, match="float32"):
        model(Data(pos=torch.randn(3, 3), z=torch.full((3,), 18)))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        model(Data(pos=torch.randn(3, 2, dtype=F64), z=torch.full((3,), 18)))
    with pytest.raises(ValueError, match="data.z"):
        model(Data(pos=torch.randn(3, 3, dtype=F64)))
    with pytest.raises(ValueError, match="1..99"):
        model(Data(pos=torch.randn(3, 3, dtype=F64), z=torch.tensor([1, 0, 5])))
    with pytest.raises(ValueError, match="max_num_neighbors"):
        SchNetForceField(max_num_neighbors=0)
    with pytest.raises(ValueError, match="hidden_channels"):
        SchNetForceField(hidden_channels=1)
