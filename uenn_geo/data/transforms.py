"""PyG transforms applied to structures as a data set hands them out."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from uenn_geo.dtypes import dtype_name, resolve_dtype

__all__ = ["CastFloats"]


class CastFloats:
    """A PyG transform: floating-point attributes (pos, forces, energy, cell, shifts) to one
    dtype.

    Data sets keep float64 targets; a float32 model casts each batch once, here.

    Args:
        dtype (torch.dtype or str): the real floating dtype, e.g. ``model.dtype``.
    """

    #: The attributes cast (those present and floating-point).
    keys = ("pos", "forces", "energy", "cell", "shifts")

    def __init__(self, dtype: torch.dtype | str) -> None:
        self.dtype = resolve_dtype(dtype)

    def __call__(self, data: Data) -> Data:
        data = data.clone()
        for key in self.keys:
            value = getattr(data, key, None)
            if isinstance(value, Tensor) and value.is_floating_point():
                setattr(data, key, value.to(self.dtype))
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({dtype_name(self.dtype)})"
