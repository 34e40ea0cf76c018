"""Energy shifts fitted to data: company, the binding shift of E0s models, float64 energies."""

import torch
from torch_geometric.data import Data

from uenn_geo.edges import Edges, build_edges
from uenn_geo.models import load_model, model_record
from uenn_geo.models.forcefield import UENNForceField
from uenn_geo.models.scales import company, refit_energy_shift
from uenn_geo.testing import random_orthogonal

F64 = torch.float64
E0S = {1: -13.568422383046626, 6: -1025.2770951782686, 8: -2035.5709809589698}
SMALL = {"cutoff": 4.0, "num_basis": 6, "hidden_channels": 8, "mlp_channels": [12]}


def make_model(dtype: str = "float64", **kwargs) -> UENNForceField:
    torch.manual_seed(0)
    options = {"atomic_numbers": [1, 6, 8], "conservative": True, "e0s": E0S, "pair_term": False}
    return UENNForceField(**{**SMALL, **options, "dtype": dtype, **kwargs}).eval()


def molecule(seed: int, z: tuple[int, ...] = (6, 6, 8, 1, 1, 1, 1, 1, 1)) -> Data:
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(len(z), 3, dtype=F64, generator=gen) * 0.8
    return Data(pos=pos, z=torch.tensor(z))


def test_company_is_zero_alone_one_in_company_and_smooth_between():
    cutoff = 4.0
    # two atoms at distance r: each has f_c(r) of company
    for r, want in [(4.5, 0.0), (4.0, 0.0), (0.5, 1.0), (2.0, 1.0)]:
        pos = torch.tensor([[0.0, 0.0, 0.0], [r, 0.0, 0.0]], dtype=F64)
        c = company(pos, build_edges(pos, cutoff + 1.0), cutoff)
        assert torch.equal(c, torch.full((2,), want, dtype=F64))
    # in between 0 < c < 1, and c is C2 in r: slope and curvature go to zero at the joins
    r = torch.tensor([2.0 + 1e-4, 2.5, 3.0, 3.5, 4.0 - 1e-4], dtype=F64, requires_grad=True)
    zeros = torch.zeros_like(r)
    pos = torch.stack([torch.stack([zeros, zeros, zeros], 1), torch.stack([r, zeros, zeros], 1)])
    index = torch.stack([torch.arange(5), torch.arange(5, 10)])  # atom k of 0-4 sees k + 5
    c = company(pos.reshape(10, 3), Edges(index, None, cutoff), cutoff)[:5]
    assert bool(((c > 0) & (c < 1)).all())
    (slope,) = torch.autograd.grad(c.sum(), r, create_graph=True)
    (curvature,) = torch.autograd.grad(slope.sum(), r)
    assert bool((slope[1:4] < 0).all())
    assert slope[[0, 4]].abs().max() < 1e-6 and curvature[[0, 4]].abs().max() < 1e-2
    # the padding of the chunked layout (self-loops at r = 0) counts for nothing
    pos = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=F64)
    plain = build_edges(pos, cutoff)
    laid = plain.chunked(2, size=8, max_padding=100.0)
    assert laid.num_edges > plain.num_edges
    assert torch.equal(company(pos, laid, cutoff), company(pos, plain, cutoff))


def test_binding_shift_keeps_e0s_exact_and_forces_unchanged():
    model = make_model()
    data = molecule(1)
    before = model.energy_forces(data)
    b = torch.tensor([0.01, -0.02, 0.03], dtype=F64)
    model.binding_shift.copy_(b)
    after = model.energy_forces(data)
    c = company(data.pos, build_edges(data.pos, model.cutoff), model.cutoff)
    assert bool((c == 1).all())  # every atom of the molecule has company
    species = model.species_index(data.z, data.num_nodes)
    assert torch.allclose(after["energy"] - before["energy"], b[species].sum(), atol=1e-12)
    assert torch.equal(after["forces"], before["forces"])
    for z, e0 in E0S.items():  # an atom alone: its E0, exactly
        alone = Data(pos=torch.randn(1, 3, dtype=F64), z=torch.tensor([z]))
        assert model.energy_forces(alone)["energy"].item() == e0
    # invariant: a rotated, reflected molecule has the same energy
    q = random_orthogonal(3, dtype=F64, reflection=True)
    turned = Data(pos=data.pos @ q.T, z=data.z)
    assert torch.allclose(model.energy_forces(turned)["energy"], after["energy"], atol=1e-9)


def test_refit_puts_the_energies_of_an_e0s_model_right():
    model = make_model()
    graphs = [molecule(s) for s in range(6)] + [molecule(7, (6, 8, 1, 1)), molecule(8, (8, 1))]
    true_b = torch.tensor([-0.4, -1.3, -0.9], dtype=F64)
    model.binding_shift.copy_(true_b)
    for g in graphs:  # references: the model's energies with the binding shift true_b
        g.forces = torch.zeros(g.num_nodes, 3, dtype=F64)
        g.energy = model.energy_forces(g)["energy"].detach()
    model.binding_shift.zero_()
    refit_energy_shift(model, graphs)
    assert torch.allclose(model.binding_shift, true_b, atol=1e-8)
    assert model.energy_shift.tolist() == [E0S[1], E0S[6], E0S[8]]  # the E0s stay
    for g in graphs:
        assert torch.allclose(model.energy_forces(g)["energy"], g.energy, atol=1e-8)


def test_float32_models_give_float64_energies():
    # total energies of thousands of eV: float32 would round them to tenths of a meV
    model64 = make_model()
    model32 = make_model("float32")
    model32.load_state_dict(model64.state_dict())
    model32.binding_shift.fill_(-4.6)
    model64.binding_shift.fill_(-4.6)
    for seed in range(5):
        data = molecule(seed)
        e64 = model64.energy_forces(data)["energy"]
        data32 = Data(pos=data.pos.float(), z=data.z)
        e32 = model32.energy_forces(data32)["energy"]
        assert e32.dtype == F64 and abs(float(e64)) > 4000
        assert abs(float(e32 - e64)) < 2e-5  # 0.02 meV: the network's float32 round-off
        assert model32.energy_forces(data32)["forces"].dtype == torch.float32


def test_files_written_before_the_binding_shift_load_with_zero(tmp_path):
    model = make_model()
    record = model_record(model)
    del record["state_dict"]["binding_shift"]
    # files of float32 models stored the E0s in float32; the configuration holds them exactly
    record["state_dict"]["energy_shift"] = model.energy_shift.float()
    record.pop("sha256", None)
    torch.save(record, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert torch.equal(loaded.binding_shift, torch.zeros(3, dtype=F64))
    assert loaded.energy_shift.tolist() == [E0S[1], E0S[6], E0S[8]]
    data = molecule(2)
    assert torch.equal(loaded.energy_forces(data)["energy"], model.energy_forces(data)["energy"])
