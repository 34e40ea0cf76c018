import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch_geometric.data import Batch, Data

from uenn_geo.export import export_model, load_exported
from uenn_geo.models import UENNForceField
from uenn_geo.neighbors import radius_graph

F64 = torch.float64
SMALL = {
    "cutoff": 4.5,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "atomic_numbers": [1, 8],
    "dtype": "float64",
}

# Runs in a fresh interpreter that never imports uenn_geo (checked at the end).
LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    path, inputs, out = sys.argv[1:4]
    extra = {"uenn_geo.json": ""}
    module = torch.export.load(path, extra_files=extra).module()
    args = torch.load(inputs)
    result = module(*args)
    result = result if isinstance(result, tuple) else (result,)
    torch.save([r.detach() for r in result], out)
    assert not any(name.startswith("uenn_geo") for name in sys.modules), "uenn_geo imported"
    print(json.loads(extra["uenn_geo.json"])["outputs"])
    """
)


def periodic_batch():
    """A periodic cell and a free cluster, two species, in one batch."""
    cell = torch.tensor([[4.6, 0.0, 0.0], [0.8, 4.3, 0.0], [0.5, -0.6, 4.9]], dtype=F64)
    crystal = Data(
        pos=torch.rand(5, 3, dtype=F64) @ cell,
        z=torch.tensor([1, 8, 8, 1, 1]),
        cell=cell.unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
    )
    cluster = Data(
        pos=torch.randn(7, 3, dtype=F64) * 2,
        z=torch.tensor([8, 1, 1, 8, 1, 1, 8]),
        cell=torch.zeros(1, 3, 3, dtype=F64),
        pbc=torch.zeros(1, 3, dtype=torch.bool),
    )
    return Batch.from_data_list([crystal, cluster])


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"conservative": False},
        {"conservative": True},
        # trained with --E0s: the isolated atoms' readout (no neighbours) is traced too
        {"conservative": True, "e0s": {1: -13.6, 8: -2041.0}},
    ],
)
def test_exported_program_runs_without_uenn_geo(tmp_path, options):
    conservative = options["conservative"]
    model = UENNForceField(**SMALL, **options).eval()
    path = tmp_path / "model.pt2"
    export_model(model, path)
    batch = periodic_batch()  # other sizes than the export example: shapes are dynamic
    edge_index, shifts = radius_graph(
        batch.pos, model.cutoff, batch=batch.batch, cell=batch.cell, pbc=batch.pbc
    )
    species = model.species_index(batch.z, batch.num_nodes)
    torch.save((batch.pos, species, edge_index, shifts, batch.batch), tmp_path / "inputs.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            LOADER,
            str(path),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = torch.load(tmp_path / "out.pt")
    expected = model.energy_forces(batch)
    assert torch.allclose(result[-1], expected["forces"].detach(), atol=1e-12, rtol=0)
    assert expected["forces"].abs().max() > 1e-3
    if conservative:
        assert proc.stdout.strip() == "['atomic_energies', 'forces']"
        energies = torch.zeros(2, dtype=F64).index_add(0, batch.batch, result[0])
        assert torch.allclose(energies, expected["energy"], atol=1e-12, rtol=0)
    module, meta = load_exported(path)
    assert meta["atomic_numbers"] == [1, 8] and meta["cutoff"] == 4.5
    assert UENNForceField(**meta["config"]).config == model.config
    assert json.dumps(meta)  # plain JSON


def test_export_rejects_other_models(tmp_path):
    with pytest.raises(TypeError, match="UENNForceField"):
        export_model(torch.nn.Linear(3, 3), tmp_path / "x.pt2")
