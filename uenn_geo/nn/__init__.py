r"""Unitary-equivariant layers: :obj:`(..., n, M)` tensors of M vectors of :math:`\mathbb{C}^n`."""

from uenn_geo.nn.activation import (
    ACTIVATIONS,
    Identity,
    NormActivation,
    SoftsignResidual,
    VectorLeakyReLU,
    VectorReLU,
)
from uenn_geo.nn.functional import concat_scalars, safe_norm, split_scalars, unit_vectors
from uenn_geo.nn.linear import EquivariantLinear
from uenn_geo.nn.mlp import EquivariantMLP

__all__ = [
    "EquivariantLinear",
    "EquivariantMLP",
    "SoftsignResidual",
    "NormActivation",
    "VectorReLU",
    "VectorLeakyReLU",
    "Identity",
    "ACTIVATIONS",
    "concat_scalars",
    "split_scalars",
    "safe_norm",
    "unit_vectors",
]
