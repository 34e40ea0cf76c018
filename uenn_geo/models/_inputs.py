"""Input checks shared by the graph force models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uenn_geo.nn.linear import _dtype_name


def check_positions(data: Any, dtype: torch.dtype) -> Tensor:
    """``data.pos`` if it is an ``(N, 3)`` tensor of ``dtype``; a clear error otherwise."""
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"data.pos must have shape (N, 3) in Angstrom, got {shape}")
    if pos.dtype != dtype:
        raise TypeError(
            f"data.pos has dtype {_dtype_name(pos.dtype)} but the model is "
            f"{_dtype_name(dtype)}; convert the data (uenn_geo.train.CastFloats) or build "
            f"the model with dtype={_dtype_name(pos.dtype)!r}"
        )
    return pos
