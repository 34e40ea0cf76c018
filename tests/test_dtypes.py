import pytest
import torch

from uenn_geo.dtypes import dtype_name, resolve_dtype


@pytest.mark.parametrize("name", ["float64", "torch.float64", torch.float64])
def test_names_and_dtypes_resolve_alike(name):
    assert resolve_dtype(name) is torch.float64


def test_defaults_kinds_and_errors():
    assert resolve_dtype(None) is torch.get_default_dtype()
    assert resolve_dtype(None, default=torch.float64) is torch.float64
    assert resolve_dtype("complex128", real=False) is torch.complex128
    with pytest.raises(ValueError, match="real floating dtype, got complex128"):
        resolve_dtype("complex128")
    with pytest.raises(ValueError, match="unknown dtype name 'float99'"):
        resolve_dtype("float99")
    with pytest.raises(ValueError, match="real floating dtype, got int64"):
        resolve_dtype(torch.int64)
    assert dtype_name(torch.float32) == "float32"
