"""The model contract, checked on every registered model (as NequIP's shared model tests).

Every entry of :data:`uenn_geo.models.MODELS` must appear in ``CASES``; a new model without a
case fails :func:`test_every_registered_model_has_a_case`.
"""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from torch_geometric.data import Batch, Data

from uenn_geo.calculator import UENNCalculator
from uenn_geo.edges import build_edges
from uenn_geo.export import export_model, load_exported
from uenn_geo.models import MODELS, ForceModel, load_model, save_model
from uenn_geo.nn import EquivariantLinear
from uenn_geo.testing import random_orthogonal, random_permutation, relative_error

F64 = torch.float64

#: (registry name, constructor arguments): small float64 models.
CASES = {
    "graph-direct": (
        "graph",
        {"cutoff": 4.0, "num_basis": 6, "hidden_channels": 6, "mlp_channels": [8],
         "interaction_channels": 2, "atomic_numbers": [1, 8], "dtype": "float64"},
    ),
    "graph-energy": (
        "graph",
        {"cutoff": 4.0, "num_basis": 6, "hidden_channels": 6, "mlp_channels": [8],
         "interaction_channels": 2, "atomic_numbers": [1, 8], "dtype": "float64",
         "conservative": True},
    ),
    # the chemistry options: weights per species pair, inner products, separate scalar
    # weights, the centre's vectors projected on its bonds
    "graph-chemistry": (
        "graph",
        {"cutoff": 4.0, "num_basis": 6, "hidden_channels": 6, "mlp_channels": [8],
         "interaction_channels": 2, "atomic_numbers": [1, 8], "dtype": "float64",
         "conservative": True, "species_pairs": True, "gram_channels": 3,
         "separate_scalars": True, "own_species": True, "centre_vectors": True,
         "bond_vectors": True, "bond_cubes": True, "bond_quartics": True},
    ),
    # learned radial functions and Gaussians (no pair term: it reads them as fixed), smooth
    # directions in the bias terms, neighbour sums over the square root of their mean count,
    # a second graph layer of a shorter reach than the first
    "graph-radial": (
        "graph",
        {"cutoff": 4.0, "num_basis": 6, "hidden_channels": 6, "mlp_channels": [8],
         "interaction_channels": 2, "atomic_numbers": [1, 8], "dtype": "float64",
         "conservative": True, "pair_term": False, "radial_mlp": 5, "learnable_basis": True,
         "bias_delta": 0.1, "avg_num_neighbors": 6.0, "interaction_cutoff": 3.0},
    ),
    "schnet": (
        "schnet",
        {"cutoff": 4.0, "hidden_channels": 8, "num_filters": 8, "num_interactions": 2,
         "num_gaussians": 8, "dtype": "float64"},
    ),
    # The paper network tells atoms apart by their slot; averaged over the orderings it is
    # permutation-equivariant, which the contract asks of every model.
    "paper": ("paper", {"hidden": [6, 6], "symmetrize": True, "dtype": "float64"}),
}  # fmt: skip


def make(case: str) -> ForceModel:
    name, kwargs = CASES[case]
    torch.manual_seed(0)
    model = MODELS[name](**kwargs).eval()
    with torch.no_grad():  # nonzero pair weights and shifts: every part of the output counts
        for buffer in ("pair_weight", "energy_shift"):
            if getattr(model, buffer, None) is not None:
                getattr(model, buffer).uniform_(-0.1, 0.1)
        for module in model.modules():  # learned radial functions start at zero: not here
            if getattr(module, "radial", None) is not None:
                module.radial[2].weight.uniform_(-0.5, 0.5)
            if isinstance(module, EquivariantLinear) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)  # biases start at zero: the e b term counts
    return model


def structure(model: ForceModel, num: int = 5, seed: int = 0) -> Data:
    gen = torch.Generator().manual_seed(seed)
    if model.cutoff is None:  # the paper model: four atoms
        num = model.num_atoms
    pos = torch.randn(num, 3, dtype=F64, generator=gen) * 1.3
    z = torch.tensor([1, 8, 8, 1, 8, 1, 1][:num])
    return Data(pos=pos, z=z)


def forces(model: ForceModel, data: Data) -> torch.Tensor:
    return model(data).detach()


def test_every_registered_model_has_a_case():
    assert {name for name, _ in CASES.values()} == set(MODELS)


@pytest.mark.parametrize("case", CASES)
def test_declared_attributes(case):
    model = make(case)
    assert isinstance(model, ForceModel)
    assert model.cutoff is None or model.cutoff > 0
    assert isinstance(model.has_energy, bool)
    assert model.dtype == F64
    json.dumps(model.config)  # the configuration is JSON
    out = model.energy_forces(structure(model))
    assert set(out) == {"energy", "forces", "stress"}
    assert (out["energy"] is not None) == model.has_energy
    assert torch.equal(out["forces"], forces(model, structure(model)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reflection", [False, True])
def test_rotation_reflection_translation(case, reflection):
    model = make(case)
    data = structure(model)
    ref = model.energy_forces(data)
    q = random_orthogonal(3, dtype=F64, reflection=reflection)
    moved = Data(pos=data.pos @ q.T + torch.randn(3, dtype=F64), z=data.z)
    out = model.energy_forces(moved)
    assert ref["forces"].abs().max() > 1e-6
    assert relative_error(out["forces"], ref["forces"] @ q.T) < 1e-10
    if model.has_energy:
        assert torch.allclose(out["energy"], ref["energy"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_permutation_of_like_atoms(case):
    model = make(case)
    data = structure(model, num=7)
    groups = None if model.cutoff is None else data.z
    perm = random_permutation(data.num_nodes, groups=groups)
    assert not torch.equal(perm, torch.arange(data.num_nodes))
    permuted = Data(pos=data.pos[perm], z=data.z[perm])
    assert relative_error(forces(model, permuted), forces(model, data)[perm]) < 1e-10


@pytest.mark.parametrize("case", CASES)
def test_batch_independence(case):
    model = make(case)
    a, b = structure(model, seed=1), structure(model, num=6, seed=2)
    batch = Batch.from_data_list([a, b])
    out = model.energy_forces(batch)
    expected = torch.cat([forces(model, a), forces(model, b)])
    assert torch.allclose(out["forces"], expected, rtol=1e-10, atol=1e-12)
    if model.has_energy:
        energies = torch.cat([model.energy_forces(d)["energy"] for d in (a, b)])
        assert torch.allclose(out["energy"], energies, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_save_load(case, tmp_path):
    model = make(case)
    save_model(model, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    data = structure(model)
    assert torch.equal(forces(loaded, data), forces(model, data))


@pytest.mark.parametrize("case", CASES)
def test_ase_calculator(case):
    model = make(case)
    data = structure(model)
    atoms = Atoms(numbers=data.z.numpy(), positions=data.pos.numpy())
    atoms.calc = UENNCalculator(model)
    out = model.energy_forces(data)
    expected = out["forces"].detach().numpy()
    np.testing.assert_allclose(atoms.get_forces(), expected, rtol=1e-12, atol=1e-14)
    if model.has_energy:
        assert atoms.get_potential_energy() == pytest.approx(out["energy"].item(), abs=1e-12)
    else:
        with pytest.raises(PropertyNotImplementedError, match="no energy"):
            atoms.get_potential_energy()


@pytest.mark.parametrize("case", [c for c in CASES if MODELS[CASES[c][0]](
    **CASES[c][1]).has_energy])  # fmt: skip
def test_stress_is_the_strain_derivative(case):
    model = make(case)
    cell = torch.tensor([[5.0, 0.0, 0.0], [0.4, 4.6, 0.0], [0.3, -0.2, 4.8]], dtype=F64)
    gen = torch.Generator().manual_seed(3)
    frac = torch.rand(6, 3, dtype=F64, generator=gen)
    z = torch.tensor([1, 8, 8, 1, 8, 1])

    def energy(strain: torch.Tensor) -> float:
        deform = torch.eye(3, dtype=F64) + strain
        data = Data(pos=frac @ cell @ deform, z=z, cell=(cell @ deform).unsqueeze(0))
        data.pbc = torch.ones(1, 3, dtype=torch.bool)
        return model.energy_forces(data)["energy"].item()

    data = Data(pos=frac @ cell, z=z, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=bool))
    stress = model.energy_forces(data, compute_stress=True)["stress"][0]
    h, volume = 1e-5, torch.linalg.det(cell).item()
    expected = torch.zeros(3, 3, dtype=F64)
    for a in range(3):
        for b in range(3):
            e = torch.zeros(3, 3, dtype=F64)  # symmetric: e_ab = e_ba = h / 2 off the diagonal
            e[a, b] = e[b, a] = h / 2 if a != b else h
            expected[a, b] = (energy(e) - energy(-e)) / (2 * h) / volume
    assert stress.abs().max() > 1e-6
    assert torch.allclose(stress, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("case", CASES)
def test_compile(case):
    model = make(case)
    data = structure(model)
    edges = None if model.cutoff is None else build_edges(data.pos, model.cutoff)
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(data, edges), forces(model, data), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_export(case, tmp_path):
    model = make(case)
    if CASES[case][0] != "graph":  # only the graph force field is exported (plain tensors)
        with pytest.raises(TypeError, match="takes a UENNForceField"):
            export_model(model, tmp_path / "model.pt2")
        return
    data = structure(model)
    export_model(model, tmp_path / "model.pt2")
    module, meta = load_exported(tmp_path / "model.pt2")
    edges = build_edges(data.pos, model.cutoff)
    species = model.species_index(data.z, data.num_nodes)
    shifts = torch.zeros(edges.num_edges, 3, dtype=F64)
    batch = torch.zeros(data.num_nodes, dtype=torch.long)
    out = module(data.pos, species, edges.index, shifts, batch)
    exported = out[-1] if isinstance(out, tuple) else out
    assert torch.allclose(exported, forces(model, data), rtol=1e-10, atol=1e-12)
    assert meta["outputs"][-1] == "forces"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c in ("graph-energy", "graph-chemistry", "schnet")]
)
def test_energy_shifts_refit(case):
    from uenn_geo.models.scales import refit_energy_shift

    model = make(case)
    graphs = [structure(model, num=n, seed=n) for n in (3, 4, 5, 6)]
    for g in graphs:  # references: the model's energies, 0.5 eV lower per hydrogen
        g.forces = torch.zeros(g.num_nodes, 3, dtype=F64)
        g.energy = model.energy_forces(g)["energy"].detach() - 0.5 * (g.z == 1).sum()
    refit_energy_shift(model, graphs)
    for g in graphs:
        assert torch.allclose(model.energy_forces(g)["energy"], g.energy, atol=1e-8)
