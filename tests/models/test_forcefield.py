import json

import pytest
import torch
from torch_geometric.data import Batch, Data

from uenn_geo.edges import Edges, build_edges
from uenn_geo.models.forcefield import UENNForceField
from uenn_geo.nn import EquivariantLinear
from uenn_geo.testing import apply_group, random_orthogonal, random_permutation, relative_error

F64 = torch.float64
SMALL = {
    "cutoff": 5.0,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "dtype": "float64",
}


def make_model(**kwargs) -> UENNForceField:
    model = UENNForceField(**{**SMALL, **kwargs})
    if model.pair_weight is not None:  # a nonzero pair term, so that every test covers it
        with torch.no_grad():
            model.pair_weight.normal_(0.0, 0.3)
    return model


def cluster(num: int, z: list[int] | None = None, spread: float = 2.0) -> Data:
    z = [18] * num if z is None else z
    return Data(pos=torch.randn(num, 3, dtype=F64) * spread, z=torch.tensor(z))


def test_repr_and_config_round_trip():
    model = make_model(atomic_numbers=[1, 8], num_blocks=3, interaction_basis=4)
    assert [conv.num_basis for conv in model.convs] == [6, 4, 4]
    assert repr(model) == (
        "UENNForceField(cutoff=5.0, num_blocks=3, hidden_channels=8, species=[1, 8], float64)"
    )
    config = json.loads(json.dumps(model.config))
    rebuilt = UENNForceField(**config)
    rebuilt.load_state_dict(model.state_dict())
    assert "force_scale" in model.state_dict()
    data = cluster(5, [1, 8, 8, 1, 1])
    assert torch.equal(rebuilt(data), model(data))
    assert UENNForceField().config["dtype"] == str(torch.get_default_dtype()).removeprefix("torch.")


@pytest.mark.parametrize("num_blocks", [1, 2, 3])
@pytest.mark.parametrize("reflection", [False, True])
def test_rotation_reflection_translation(num_blocks, reflection):
    model = make_model(num_blocks=num_blocks, atomic_numbers=[1, 8])
    data = cluster(7, [1, 8, 1, 1, 8, 8, 1])
    forces = model(data)
    assert forces.abs().max() > 1e-3
    Q = random_orthogonal(3, reflection=reflection)
    moved = Data(pos=data.pos @ Q.T + torch.tensor([1.5, -4.0, 2.0], dtype=F64), z=data.z)
    err = relative_error(model(moved), apply_group(Q, forces, axis=-1))
    assert err < 1e-12


def test_translation_invariance():
    model = make_model()
    data = cluster(6)
    shifted = Data(pos=data.pos + torch.tensor([10.0, -3.0, 7.0], dtype=F64), z=data.z)
    assert torch.allclose(model(shifted), model(data), atol=1e-13)


def test_permutation_within_species_and_graphs():
    model = make_model(atomic_numbers=[1, 8])
    graphs = [cluster(5, [1, 8, 1, 8, 1]), cluster(4, [8, 8, 1, 1])]
    batch = Batch.from_data_list(graphs)
    forces = model(batch)
    perm = random_permutation(batch.num_nodes, batch=batch.batch, groups=batch.z)
    assert not torch.equal(perm, torch.arange(batch.num_nodes))
    permuted = Data(pos=batch.pos[perm], z=batch.z[perm], batch=batch.batch[perm])
    assert relative_error(model(permuted), forces[perm]) < 1e-12
    # Swapping two atoms of different species changes the forces: the species matter.
    swapped = batch.z.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    other = Data(pos=batch.pos, z=swapped, batch=batch.batch)
    assert relative_error(model(other), forces) > 1e-3


def test_graph_alone_equals_graph_in_batch():
    model = make_model(num_blocks=2)
    graphs = [cluster(3), cluster(6), cluster(4)]
    batched = model(Batch.from_data_list(graphs))
    alone = torch.cat([model(g) for g in graphs])
    assert torch.allclose(batched, alone, atol=1e-13)


def test_remove_net_force():
    graphs = Batch.from_data_list([cluster(4), cluster(5)])
    with_projection = make_model()
    forces = with_projection(graphs)
    net = torch.zeros(2, 3, dtype=F64).index_add_(0, graphs.batch, forces)
    assert net.abs().max() < 1e-13
    raw = make_model(remove_net_force=False)
    raw.load_state_dict(with_projection.state_dict())
    raw_forces = raw(graphs)
    raw_net = torch.zeros(2, 3, dtype=F64).index_add_(0, graphs.batch, raw_forces)
    assert raw_net.abs().max() > 1e-4  # the projection did something
    mean = raw_net / torch.tensor([4.0, 5.0], dtype=F64).unsqueeze(1)
    assert torch.allclose(forces, raw_forces - mean[graphs.batch], atol=1e-13)


def test_isolated_atoms_get_zero_force_not_nan():
    model = make_model(remove_net_force=False)
    far = cluster(4, spread=1.0)
    far.pos[3] = torch.tensor([30.0, 0.0, 0.0], dtype=F64)  # beyond the cutoff of all others
    single = Data(pos=torch.zeros(1, 3, dtype=F64), z=torch.tensor([18]))
    batch = Batch.from_data_list([far, single])
    batch.pos.requires_grad_(True)
    forces = model(batch)
    assert torch.equal(forces[3], torch.zeros(3, dtype=F64))
    assert torch.equal(forces[4], torch.zeros(3, dtype=F64))
    assert forces[:3].abs().max() > 1e-4
    forces.square().sum().backward()
    assert torch.isfinite(batch.pos.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    projected = make_model()
    assert torch.equal(projected(single), torch.zeros(1, 3, dtype=F64))


def test_given_edges_must_match_the_cutoff():
    model = make_model(num_blocks=2)
    data = cluster(8)
    forces = model(data)
    edges = build_edges(data.pos, model.cutoff)
    assert torch.allclose(model(data, edges), forces, atol=1e-13)
    # A list from another cutoff is refused, given or stored on the data (stale lists).
    wide = build_edges(data.pos, 2 * model.cutoff)
    with pytest.raises(ValueError, match="cutoff of .* the model's cutoff"):
        model(data, wide)
    stored = Data(pos=data.pos, z=data.z, edge_index=wide.index)
    with pytest.raises(ValueError, match="edge_cutoff"):
        model(stored)
    stored.edge_cutoff = torch.tensor([2 * model.cutoff])
    with pytest.raises(ValueError, match="rebuild it with"):
        model(stored)
    stored.edge_index = edges.index
    stored.edge_cutoff = torch.tensor([model.cutoff])
    assert torch.allclose(model(stored), forces, atol=1e-13)


def _supercell(pos, z, cell, reps=(2, 2, 2)):
    offsets = torch.cartesian_prod(*[torch.arange(r, dtype=F64) for r in reps]) @ cell
    big_pos = (offsets.unsqueeze(1) + pos.unsqueeze(0)).reshape(-1, 3)
    big_cell = cell * torch.tensor(reps, dtype=F64).unsqueeze(1)
    return big_pos, z.repeat(len(offsets)), big_cell


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_periodic_cell_and_supercell_forces_tile(num_blocks):
    model = make_model(num_blocks=num_blocks, atomic_numbers=[1, 8], cutoff=4.5)
    # A triclinic cell smaller than the cutoff in places: atoms see their own images.
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.8, 3.8, 0.0], [0.5, -0.6, 4.2]], dtype=F64)
    pos = torch.rand(3, 3, dtype=F64) @ cell
    z = torch.tensor([1, 8, 8])
    small = Data(pos=pos, z=z, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=torch.bool))
    forces = model(small)
    assert forces.abs().max() > 1e-3
    big_pos, big_z, big_cell = _supercell(pos, z, cell)
    big = Data(pos=big_pos, z=big_z, cell=big_cell.unsqueeze(0))
    big_forces = model(big).reshape(8, 3, 3)
    assert torch.allclose(big_forces, forces.expand(8, 3, 3), atol=1e-12)
    # Wrapping an atom back into a neighbouring image changes nothing.
    moved = Data(pos=pos + torch.stack([cell[0], -cell[2], cell[1]]), z=z, cell=small.cell)
    assert torch.allclose(model(moved), forces, atol=1e-12)


def test_periodic_cell_matches_finite_replica():
    # One block sees r_c: atoms of the central cell of a 3x3x3 free replica have the full
    # periodic environment when r_c is smaller than the cell.
    model = make_model(num_blocks=1, cutoff=3.0, remove_net_force=False)
    cell = torch.eye(3, dtype=F64) * 4.0
    pos = torch.rand(4, 3, dtype=F64) * 4.0
    z = torch.full((4,), 18)
    periodic = model(Data(pos=pos, z=z, cell=cell.unsqueeze(0)))
    big_pos, big_z, _ = _supercell(pos - 4.0, z, cell, (3, 3, 3))
    centre = 13 * 4  # the (1, 1, 1) block of the 3x3x3 replica sits at the original cell
    replica = model(Data(pos=big_pos, z=big_z))[centre : centre + 4]
    assert periodic.abs().max() > 1e-3
    assert torch.allclose(replica, periodic, atol=1e-12)


def test_compile_has_no_graph_breaks():
    model = make_model(atomic_numbers=[1, 8], num_blocks=2)
    batch = Batch.from_data_list([cluster(4, [1, 8, 8, 1]), cluster(5, [8, 1, 1, 1, 8])])
    edges = build_edges(batch.pos, model.cutoff, batch.batch)  # outside
    species = model.species_index(batch.z, batch.num_nodes)
    args = (batch.pos, species, edges, batch.batch, batch.num_graphs)
    explanation = torch._dynamo.explain(model.compute_forces)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(model.compute_forces, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(*args), model(batch), atol=1e-13)
    # The same with the edges laid out in chunks (Edges.chunked, outside the graph).
    edges = edges.chunked(batch.num_nodes, max_padding=float("inf"))
    assert edges.chunk
    args = (batch.pos, species, edges, batch.batch, batch.num_graphs)
    explanation = torch._dynamo.explain(model.compute_forces)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert torch.allclose(compiled(*args), model(batch), atol=1e-13)


@pytest.mark.parametrize("conservative", [False, True])
def test_chunked_edges_change_nothing(conservative):
    # the model lays dense neighbour lists out in chunks once for all layers
    # (Edges.chunked); forces, energy and stress must equal those of the plain list.
    model = make_model(atomic_numbers=[1, 8], num_blocks=2, conservative=conservative)
    cell = torch.tensor([[4.6, 0.0, 0.0], [0.8, 4.3, 0.0], [0.5, -0.6, 4.9]], dtype=F64)
    pos = torch.rand(10, 3, dtype=F64) @ cell
    z = torch.tensor([1, 8, 8, 1, 8, 1, 1, 8, 8, 1])
    data = Data(pos=pos, z=z, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=torch.bool))
    edges = build_edges(pos, model.cutoff, cell=cell.unsqueeze(0))
    assert edges.chunked(10).chunk  # dense enough to be chunked
    kwargs = {"compute_stress": True} if conservative else {}
    chunked = model.energy_forces(data, edges.chunked(10), **kwargs)
    plain_edges = edges.chunked(10, max_padding=0.0)
    assert not plain_edges.chunk
    species = model.species_index(z, 10)
    plain = {"forces": model.compute_forces(pos, species, plain_edges)}
    if conservative:
        plain = model.energy_forces(data, plain_edges, **kwargs)
    assert chunked["forces"].abs().max() > 1e-3
    for key in ("forces", "energy", "stress") if conservative else ("forces",):
        assert torch.allclose(chunked[key], plain[key], atol=1e-12), key
    assert torch.allclose(model(data), plain["forces"], atol=1e-12)
    # Bad lists are refused before they are laid out (padding would hide a wrong length).
    index, shifts, cut = edges.index, edges.shifts, model.cutoff
    with pytest.raises(ValueError, match="one row per edge"):
        model(data, Edges(index, shifts[:-5], cut))
    with pytest.raises(ValueError, match="one row per edge"):
        model(data, Edges(index, torch.cat([shifts, shifts[:5]]), cut))
    with pytest.raises(ValueError, match="outside"):
        model(data, Edges(index + 1, shifts, cut))


def test_fit_scales():
    model = make_model(pair_term=False)
    data = cluster(5)
    forces = model(data)
    target = torch.randn(40, 3, dtype=F64) * 0.3
    scale = model.fit_scales(target)
    assert scale == pytest.approx(target.square().mean().sqrt().item())
    assert model.force_scale.item() == pytest.approx(scale)
    assert torch.allclose(model(data), forces * scale, atol=1e-13)
    graphs = [Data(forces=target[:15]), Data(forces=target[15:])]
    assert model.fit_scales(graphs) == pytest.approx(scale)
    with pytest.raises(ValueError, match="> 0"):
        model.fit_scales(torch.zeros(4, 3))


def pair_only_graphs(model: UENNForceField, num: int, seed: int = 0) -> list[Data]:
    """Graphs whose forces (and energies) are ``model``'s pair term plus energy shifts."""
    gen = torch.Generator().manual_seed(seed)
    species = torch.tensor(model.config["atomic_numbers"])
    graphs = []
    with torch.no_grad():
        model.force_scale.zero_()
        if model.conservative:
            model.energy_scale.zero_()
            model.energy_shift.copy_(torch.tensor([-1.5, 0.7][: model.num_species]))
    for k in range(num):
        n = 3 + k % 5
        z = species[torch.randint(len(species), (n,), generator=gen)]
        pos = torch.randn(n, 3, generator=gen, dtype=F64) * 1.5
        d = Data(pos=pos, z=z)
        out = model.energy_forces(d)
        d.forces = out["forces"].detach()
        if out["energy"] is not None:
            d.energy = out["energy"].detach()
        graphs.append(d)
    return graphs


@pytest.mark.parametrize("conservative", [False, True])
def test_fit_pair_recovers_a_pair_potential(conservative):
    """Forces made by a random pair term are fitted to round-off, in both modes, with two
    species (whose weights need not be symmetric); the shifts come from what is left."""
    teacher = make_model(atomic_numbers=[1, 8], conservative=conservative)
    graphs = pair_only_graphs(teacher, 40)
    test = pair_only_graphs(teacher, 10, seed=1)
    model = UENNForceField(**{**SMALL, "atomic_numbers": [1, 8], "conservative": conservative})
    assert torch.count_nonzero(model.pair_weight) == 0
    spread = torch.cat([g.forces for g in graphs]).square().mean().sqrt()
    scale = model.fit_scales(graphs, batch_size=7)
    assert scale == pytest.approx(1e-4 * spread.item())  # the floor: nothing is left
    with torch.no_grad():
        model.force_scale.zero_()
        if conservative:
            model.energy_scale.zero_()
    for g in test:
        out = model.energy_forces(g)
        assert relative_error(out["forces"], g.forces) < 1e-6
        if conservative:
            assert out["energy"].item() == pytest.approx(g.energy.item(), abs=1e-6)
    if conservative:
        assert torch.allclose(model.energy_shift, teacher.energy_shift, atol=1e-6)


def test_fit_pair_on_lennard_jones_and_paper_data():
    """On LJ argon the fitted pair term leaves under 0.1 % of the force spread."""
    from uenn_geo.data.lj import lennard_jones
    from uenn_geo.data.paper import sample_paper_configurations
    from uenn_geo.train import DenseForceData

    pos = sample_paper_configurations(400, generator=torch.Generator().manual_seed(2))
    data = DenseForceData(pos, lennard_jones(pos)[1])
    model = UENNForceField(dtype="float64", num_blocks=1, mlp_channels=[8])
    spread = data.forces.square().mean().sqrt().item()
    residual = model.fit_pair(data, batch_size=128)
    rest = torch.cat([r.forces for r in residual]).square().mean().sqrt().item()
    assert rest < 1e-3 * spread
    with pytest.raises(ValueError, match="pair_term=False"):
        UENNForceField(pair_term=False).fit_pair(data)


def test_bad_inputs():
    model = make_model(atomic_numbers=[1, 8])
    with pytest.raises(ValueError, match=r"\[6\]"):
        model(cluster(3, [1, 6, 8]))
    with pytest.raises(ValueError, match="no z"):
        model(Data(pos=torch.zeros(2, 3, dtype=F64)))
    with pytest.raises(TypeError, match="float32"):
        model(Data(pos=torch.zeros(2, 3), z=torch.tensor([1, 8])))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        model(Data(pos=torch.zeros(2, 2, dtype=F64), z=torch.tensor([1, 8])))
    with pytest.raises(ValueError, match="atomic_numbers"):
        UENNForceField(atomic_numbers=[18, 18])
    with pytest.raises(ValueError, match="num_blocks"):
        UENNForceField(num_blocks=0)
    # Argon-only models accept data without z.
    assert make_model()(Data(pos=torch.randn(3, 3, dtype=F64))).shape == (3, 3)


def test_learns_lennard_jones_forces():
    from uenn_geo.data.lj import lennard_jones
    from uenn_geo.data.paper import sample_paper_configurations

    pos = sample_paper_configurations(16, generator=torch.Generator().manual_seed(1))
    _, forces = lennard_jones(pos)
    graphs = Batch.from_data_list(
        [Data(pos=p, z=torch.full((4,), 18), forces=f) for p, f in zip(pos, forces, strict=True)]
    )
    model = make_model(cutoff=10.2)
    edges = build_edges(graphs.pos, model.cutoff, graphs.batch)
    model.fit_scales(graphs.forces)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = ((model(graphs, edges) - graphs.forces) / model.force_scale).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- conservative mode: energy, forces = -dE/dr, stress = dE/d(strain) / V ---------------------


def conservative(**kwargs) -> UENNForceField:
    return make_model(conservative=True, **kwargs).eval()


def directional_derivatives(model, data, directions, h=1e-5):
    """Central differences of the energy along unit displacements of all atoms."""
    out = []
    for d in directions:
        energies = []
        for sign in (1.0, -1.0):
            moved = Data(pos=data.pos + sign * h * d, z=data.z)
            energies.append(model.energy_forces(moved)["energy"].sum())
        out.append((energies[0] - energies[1]) / (2 * h))
    return torch.stack(out)


def test_conservative_forces_are_minus_energy_gradient():
    model = conservative(atomic_numbers=[1, 8])
    data = cluster(5, [1, 8, 8, 1, 1])
    out = model.energy_forces(data)
    assert out["energy"].shape == (1,) and out["stress"] is None
    assert torch.equal(model(data), out["forces"])
    assert out["forces"].abs().max() > 1e-2
    directions = torch.randn(4, *data.pos.shape, dtype=F64)
    directions[0] = 0.0
    directions[0, 2, 1] = 1.0  # one coordinate alone
    fd = directional_derivatives(model, data, directions)
    exact = -(directions * out["forces"]).sum(dim=(1, 2))
    assert (fd - exact).abs().max() < 1e-8
    # Newton's third law by construction: no projection needed.
    assert out["forces"].sum(dim=0).abs().max() < 1e-13
    # Works under no_grad (MD loops) and leaves nothing attached in eval mode.
    with torch.no_grad():
        again = model.energy_forces(data)
    assert torch.equal(again["forces"], out["forces"]) and not again["energy"].requires_grad


def test_smooth_directions_keep_the_forces_smooth_at_a_symmetric_site():
    """At the centre of a cuboctahedron (an atom of an fcc crystal) the first layer's vectors
    vanish by symmetry; eq. 8's directions turn abruptly there, the smooth ones do not."""
    corners = [(a, b, 0) for a in (-1, 1) for b in (-1, 1)]
    shell = [p[k:] + p[:k] for p in corners for k in range(3)]  # 12 neighbours at 2.55 A
    pos = torch.tensor([(0, 0, 0), *shell], dtype=F64) * 2.55 / 2**0.5
    direction = torch.zeros(13, 3, dtype=F64)
    direction[0] = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    data = Data(pos=pos, z=torch.full((13,), 18))
    growth = {}
    for delta in (0.0, 0.1):
        torch.manual_seed(0)
        model = conservative(bias_delta=delta)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, EquivariantLinear) and module.bias is not None:
                    module.bias.uniform_(-0.3, 0.3)

        def jump(step, model=model):
            f = [model(Data(pos=pos + s * direction, z=data.z))[0] for s in (step, -step)]
            return float((f[0] - f[1]).norm())

        growth[delta] = jump(1e-6) / jump(1e-7)
    # smooth forces: the jump across the site shrinks with the step (10x for 10x);
    # eq. 8: it does not (the direction of a vanishing vector flips)
    assert growth[0.1] == pytest.approx(10.0, rel=0.05)
    assert growth[0.0] < 2.0
    with pytest.raises(ValueError, match="bias_delta must be >= 0"):
        UENNForceField(**SMALL, bias_delta=-0.1)


@pytest.mark.parametrize("bad", [0.0, -4.0, float("nan"), float("inf")])
def test_avg_num_neighbors_must_be_positive(bad):
    with pytest.raises(ValueError, match="avg_num_neighbors must be a positive number"):
        UENNForceField(**SMALL, avg_num_neighbors=bad)
    model = UENNForceField(**SMALL, num_blocks=2, avg_num_neighbors=16.0)
    assert all(conv.sum_scale == 0.25 for conv in model.convs)  # 1 / sqrt(16), every layer


def test_interaction_cutoff_ends_the_second_layer_only():
    """With ``interaction_cutoff`` the first layer reaches the cutoff and the later ones stop
    short: a neighbour between the two moves the first layer's sums and not the second's."""
    torch.manual_seed(0)
    model = conservative(num_blocks=2, interaction_cutoff=3.5)
    assert [conv.cutoff for conv in model.convs] == [5.0, 3.5]
    pos = torch.tensor([[0.0, 0.0, 0.0], [4.2, 0.0, 0.0]], dtype=F64)  # 3.5 < 4.2 < 5
    edges = build_edges(pos, 5.0)
    v = torch.randn(2, model.convs[1].in_channels, dtype=F64)
    x = torch.randn(2, 3, 3, dtype=F64)
    first = model.convs[0].neighbour_sums(pos, edges, torch.ones(2, 1, dtype=F64))
    second = model.convs[1].neighbour_sums(pos, edges, v, x)
    assert first.abs().max() > 1e-3 and torch.equal(second, torch.zeros_like(second))
    torch.manual_seed(0)
    same = conservative(num_blocks=2, interaction_cutoff=5.0)  # at the cutoff: no change
    torch.manual_seed(0)
    plain = conservative(num_blocks=2)
    data = Data(pos=torch.randn(6, 3, dtype=F64) * 1.5, z=torch.full((6,), 18))
    assert torch.equal(same(data), plain(data))
    for bad in (0.0, 5.5):
        with pytest.raises(ValueError, match="interaction_cutoff must lie in"):
            UENNForceField(**SMALL, interaction_cutoff=bad)


@pytest.mark.parametrize("reflection", [False, True])
def test_conservative_energy_invariant_forces_equivariant(reflection):
    model = conservative(atomic_numbers=[1, 8], num_blocks=2)
    graphs = [cluster(6, [1, 8, 1, 1, 8, 8]), cluster(4, [8, 1, 8, 1])]
    batch = Batch.from_data_list(graphs)
    out = model.energy_forces(batch)
    Q = random_orthogonal(3, reflection=reflection)
    moved = Data(pos=batch.pos @ Q.T + torch.tensor([1.5, -4.0, 2.0], dtype=F64), z=batch.z)
    moved.batch = batch.batch
    turned = model.energy_forces(moved)
    assert relative_error(turned["energy"], out["energy"]) < 1e-12
    assert relative_error(turned["forces"], apply_group(Q, out["forces"], axis=-1)) < 1e-12
    perm = random_permutation(batch.num_nodes, batch=batch.batch, groups=batch.z)
    permuted = model.energy_forces(
        Data(pos=batch.pos[perm], z=batch.z[perm], batch=batch.batch[perm])
    )
    assert relative_error(permuted["energy"], out["energy"]) < 1e-12
    assert relative_error(permuted["forces"], out["forces"][perm]) < 1e-12
    alone = torch.cat([model.energy_forces(g)["energy"] for g in graphs])
    assert torch.allclose(alone, out["energy"], atol=1e-12)


def test_conservative_stress_is_strain_derivative():
    model = conservative(cutoff=4.5)
    cell = torch.tensor([[4.6, 0.0, 0.0], [0.8, 4.3, 0.0], [0.5, -0.6, 4.9]], dtype=F64)
    pos = torch.rand(3, 3, dtype=F64) @ cell
    z = torch.full((3,), 18)
    data = Data(pos=pos, z=z, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=torch.bool))
    out = model.energy_forces(data, compute_stress=True)
    stress = out["stress"][0]
    assert stress.abs().max() > 1e-4
    assert torch.allclose(stress, stress.T, atol=1e-14)
    volume = torch.linalg.det(cell).abs()
    h = 1e-5
    fd = torch.zeros(3, 3, dtype=F64)
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1.0, -1.0):
                eps = torch.zeros(3, 3, dtype=F64)
                eps[a, b] += sign * h / 2
                eps[b, a] += sign * h / 2
                deform = torch.eye(3, dtype=F64) + eps
                strained = Data(pos=pos @ deform, z=z, cell=(cell @ deform).unsqueeze(0))
                energies.append(model.energy_forces(strained)["energy"][0])
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    assert (fd - stress).abs().max() < 1e-9
    # A batch of two cells gives each its own stress.
    batch = Batch.from_data_list([data, data.clone()])
    both = model.energy_forces(batch, compute_stress=True)["stress"]
    assert torch.allclose(both, stress.expand(2, 3, 3), atol=1e-13)
    with pytest.raises(ValueError, match="cell"):
        model.energy_forces(cluster(3), compute_stress=True)


def test_conservative_training_and_scales():
    model = conservative(atomic_numbers=[1, 8], pair_term=False).train()
    graphs = [cluster(4, [1, 8, 8, 1]), cluster(3, [8, 8, 8]), cluster(5, [1, 1, 1, 8, 1])]
    energies = [2 * 1.0 + 2 * 2.0, 3 * 2.0, 4 * 1.0 + 2.0]  # mu_H = 1 eV, mu_O = 2 eV
    for g, e in zip(graphs, energies, strict=True):
        g.forces = torch.randn(g.num_nodes, 3, dtype=F64) * 0.5
        g.energy = torch.tensor([e], dtype=F64)
    scale = model.fit_scales(graphs)
    assert model.energy_scale.item() == pytest.approx(scale)
    assert torch.allclose(model.energy_shift, torch.tensor([1.0, 2.0], dtype=F64), atol=1e-12)
    batch = Batch.from_data_list(graphs)
    loss = ((model(batch) - batch.forces) / model.force_scale).square().mean()
    loss.backward()  # through create_graph: forces train the energy
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.energy_readout.weight.grad.abs().max() > 0
    assert {"energy_scale", "energy_shift"} <= set(model.state_dict())
    direct = make_model()
    assert "energy_scale" not in direct.state_dict()  # direct-mode files are unchanged
    assert direct.energy_forces(cluster(3))["energy"] is None
    with pytest.raises(ValueError, match="conservative=True"):
        direct.atomic_energies(
            torch.zeros(2, 3, dtype=F64),
            torch.zeros(2, dtype=torch.long),
            Edges(torch.zeros(2, 0, dtype=torch.long), None, direct.cutoff),
        )


def test_conservative_nve_conserves_energy():
    from uenn_geo.data.lj import ARGON_MASS
    from uenn_geo.data.paper import paper_md_initial_positions
    from uenn_geo.dynamics import maxwell_boltzmann, velocity_verlet

    model = conservative(cutoff=10.2)
    model.energy_scale.fill_(0.05)
    z = torch.full((4,), 18)

    def energy_forces(pos):
        out = model.energy_forces(Data(pos=pos, z=z))
        return out["energy"][0], out["forces"]

    pos0 = paper_md_initial_positions()
    masses = torch.full((4,), ARGON_MASS, dtype=F64)
    vel0 = maxwell_boltzmann(masses, 30.0, generator=torch.Generator().manual_seed(0))
    spreads = []
    for dt, steps in ((4.0, 30), (2.0, 60)):
        traj = velocity_verlet(pos0, vel0, masses, energy_forces, dt=dt, steps=steps)
        assert (traj.positions[-1] - pos0).norm(dim=-1).max() > 0.05  # the atoms moved
        assert traj.potential_energy.std() > 1e-4  # energy flows between K and U
        total = traj.total_energy
        spreads.append((total - total[0]).abs().max().item())
    # Velocity Verlet on a conservative force field: the error is O(dt^2), no drift.
    assert spreads[1] < 0.4 * spreads[0]
    assert spreads[1] < 1e-4


def test_models_saved_before_the_pair_term_load_without_it(tmp_path):
    from uenn_geo.models import load_model, model_record

    model = make_model(pair_term=False, interaction_basis=None)  # as models were then
    record = model_record(model)
    for key in ("pair_term", "interaction_basis", "bias_delta", "avg_num_neighbors"):
        del record["config"][key]
    torch.save(record, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.pair_weight is None and loaded.config["pair_term"] is False
    assert loaded.config["bias_delta"] == 0.0  # eq. 8, as models were then
    assert loaded.config["avg_num_neighbors"] is None  # sums as they were
    assert all(conv.sum_scale == 1.0 for conv in loaded.convs)
    data = cluster(5)
    assert torch.equal(loaded(data), model.eval()(data))  # both in eval mode: the same path


def test_models_with_options_this_version_lacks_are_refused_naming_them(tmp_path):
    from uenn_geo.models import load_model, model_record

    record = model_record(make_model())
    record["config"]["tensor_invariants"] = 0  # an option of another version
    torch.save(record, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=r"does not know: \['tensor_invariants'\]"):
        load_model(tmp_path / "newer.pt")


def test_e0s_are_the_isolated_atoms_energies():
    e0s = {1: -13.568422383046626, 8: -2035.5709809589698}
    model = make_model(atomic_numbers=[1, 8], conservative=True, e0s=e0s)
    for z, e0 in e0s.items():
        alone = Data(pos=torch.randn(1, 3, dtype=F64), z=torch.tensor([z]))
        assert model.energy_forces(alone)["energy"].item() == e0  # exactly, in float64
    # the network still contributes to structures with neighbours, and the E0s stay fixed
    data = cluster(5, [1, 8, 8, 1, 1])
    energy = model.energy_forces(data)["energy"].item()
    assert abs(energy - (3 * e0s[1] + 2 * e0s[8])) > 1e-6
    data.forces, data.energy = torch.randn(5, 3, dtype=F64), torch.tensor([energy + 1.0])
    model.fit_scales([data])
    assert model.energy_shift.tolist() == [e0s[1], e0s[8]]
    with pytest.raises(ValueError, match="need a model with an energy"):
        make_model(atomic_numbers=[1, 8], e0s=e0s)
    with pytest.raises(ValueError, match="one energy per species"):
        make_model(atomic_numbers=[1, 8], conservative=True, e0s={1: -1.0})


def test_refit_energy_shift_puts_the_energies_right():
    from uenn_geo.models.scales import refit_energy_shift

    model = make_model(atomic_numbers=[1, 8], conservative=True)
    graphs = [cluster(n, ([1, 8] * 3)[:n]) for n in (3, 4, 5, 6)]
    true_shift = torch.tensor([-13.6, -2041.8], dtype=F64)
    for g in graphs:  # references: the model's energy with other per-species shifts
        g.forces = torch.zeros(g.num_nodes, 3, dtype=F64)
        species = model.species_index(g.z, g.num_nodes)
        extra = (true_shift - model.energy_shift)[species].sum()
        g.energy = model.energy_forces(g)["energy"].detach() + extra
    refit_energy_shift(model, graphs)
    assert torch.allclose(model.energy_shift, true_shift, atol=1e-8)
    for g in graphs:
        assert torch.allclose(model.energy_forces(g)["energy"], g.energy, atol=1e-8)


@pytest.mark.parametrize("option", [{"radial_mlp": 4}, {"learnable_basis": True}])
def test_learned_radial_functions_refuse_the_pair_term(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"set pair_term=False with {name}"):
        UENNForceField(**option)
    model = UENNForceField(pair_term=False, **option)
    assert model.config[name] == option[name]
    with pytest.raises(ValueError, match="radial_mlp must be >= 0"):
        UENNForceField(pair_term=False, radial_mlp=-1)
