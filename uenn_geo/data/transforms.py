"""PyG transforms applied to structures as a data set hands them out."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from uenn_geo.dtypes import dtype_name, resolve_dtype

__all__ = ["CastFloats", "ConfigTypeWeights"]


class CastFloats:
    """A PyG transform: floating-point attributes (pos, forces, cell, shifts, stress) to one
    dtype.

    Data sets keep float64 targets; a float32 model casts each batch once, here. Energies
    stay float64: totals of thousands of eV, which float32 rounds to tenths of a meV.

    Args:
        dtype (torch.dtype or str): the real floating dtype, e.g. ``model.dtype``.
    """

    #: The attributes cast (those present and floating-point).
    keys = ("pos", "forces", "cell", "shifts", "stress", "stress_weight", "weight")

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


class ConfigTypeWeights:
    """A PyG transform: the loss weight of a structure from its ``config_type``.

    Sets ``data.weight`` :obj:`(1)` to ``weights[data.config_type]`` (``default`` for types
    not listed), which :func:`uenn_geo.train.force_loss` applies to every term of the
    structure.

    Args:
        weights (dict): ``{config_type: weight}``, weights >= 0.
        default (float): the weight of other types (default: :obj:`1.0`).
    """

    def __init__(self, weights: dict[str, float], default: float = 1.0) -> None:
        bad = {k: v for k, v in weights.items() if not float(v) >= 0}
        if bad:
            raise ValueError(f"config_type weights must be >= 0, got {bad}")
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.default = float(default)

    def __call__(self, data: Data) -> Data:
        kind = getattr(data, "config_type", None)
        weight = self.weights.get(kind, self.default) if isinstance(kind, str) else self.default
        data.weight = torch.tensor([weight], dtype=data.pos.dtype)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weights})"
