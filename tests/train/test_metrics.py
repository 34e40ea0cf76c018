import math

import pytest
import torch
from torch_geometric.data import Data

from uenn_geo.models import UENNForceField
from uenn_geo.train.metrics import ALL, error_table, format_table

F64 = torch.float64


class Offset(torch.nn.Module):
    """A stand-in model: the reference forces plus a known error, energy likewise."""

    has_energy = True
    force_scale = torch.tensor(1.0)

    def __init__(self, df, de):
        super().__init__()
        self.df, self.de = df, de

    def forward(self, data):
        return data.forces + self.df

    def energy_forces(self, data, compute_stress=False):
        energy = data.energy.reshape(-1) + self.de * torch.arange(1, data.num_graphs + 1)
        return {"energy": energy, "forces": self(data), "stress": None}


def graph(n, kind):
    return Data(pos=torch.randn(n, 3, dtype=F64), z=torch.ones(n, dtype=torch.long),
                forces=torch.ones(n, 3, dtype=F64), energy=torch.tensor([1.0], dtype=F64),
                config_type=kind)  # fmt: skip


def test_errors_in_mev_per_config_type():
    graphs = [graph(2, "a"), graph(4, "b")]
    table = error_table(Offset(0.002, 0.004), graphs, batch_size=8)
    assert set(table) == {ALL, "a", "b"}
    row = table[ALL]
    assert row["force_rmse"] == pytest.approx(2.0) and row["force_mae"] == pytest.approx(2.0)
    assert row["force_rel_rmse"] == pytest.approx(0.2)
    # energy errors 4 and 8 meV on structures of 2 and 4 atoms: 2 meV/atom each
    assert row["energy_mae"] == pytest.approx(6.0)
    assert row["energy_rmse"] == pytest.approx(math.sqrt((16 + 64) / 2))
    assert row["energy_rmse_per_atom"] == pytest.approx(2.0)
    assert table["a"]["energy_mae"] == pytest.approx(4.0) and table["a"]["structures"] == 1
    text = format_table({"test": table})
    assert "| test / b |" in text and "E MAE meV/atom" in text


def test_worst_structure_and_direct_models():
    model = UENNForceField(cutoff=3.0, num_blocks=1, hidden_channels=4, mlp_channels=[4],
                           num_basis=4, atomic_numbers=[1], dtype="float64")  # fmt: skip
    graphs = [graph(3, "a"), graph(5, "a")]
    table = error_table(model, graphs)
    assert set(table) == {ALL}  # one config_type: one row
    row = table[ALL]
    assert "energy_rmse" not in row  # a direct model has no energy
    worst = max(1e3 * (model(g) - g.forces).square().mean().sqrt().item() for g in graphs)
    assert row["force_rmse_worst"] == pytest.approx(worst)
    with pytest.raises(ValueError, match="empty"):
        error_table(model, [])
