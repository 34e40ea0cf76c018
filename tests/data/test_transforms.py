import pytest
import torch
from torch_geometric.data import Data

from uenn_geo.data.transforms import CastFloats


def test_cast_floats_casts_floating_attributes_only():
    data = Data(
        pos=torch.randn(3, 3, dtype=torch.float64),
        forces=torch.randn(3, 3, dtype=torch.float64),
        energy=torch.tensor([-4209.4657843064815], dtype=torch.float64),
        z=torch.tensor([18, 18, 18]),
    )
    out = CastFloats(torch.float32)(data)
    assert out.pos.dtype == out.forces.dtype == torch.float32
    # total energies keep float64: float32 would round this one by 0.2 meV
    assert out.energy.dtype == torch.float64 and torch.equal(out.energy, data.energy)
    assert out.z.dtype == torch.long
    assert data.pos.dtype == torch.float64  # the input is left alone
    assert torch.equal(out.pos, data.pos.float())


def test_cast_floats_takes_names():
    assert CastFloats("float64").dtype == torch.float64
    assert CastFloats("torch.float32").dtype == torch.float32
    assert repr(CastFloats(torch.float32)) == "CastFloats(float32)"
    with pytest.raises(ValueError):
        CastFloats("int64")
