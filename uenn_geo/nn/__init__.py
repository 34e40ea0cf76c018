r"""Unitary-equivariant layers: :obj:`(..., n, M)` tensors of M vectors of :math:`\mathbb{C}^n`."""

from uenn_geo.nn.activation import (
    ACTIVATIONS,
    Identity,
    NormActivation,
    SmoothSoftsignResidual,
    SoftsignResidual,
    VectorLeakyReLU,
    VectorReLU,
)
from uenn_geo.nn.conv import VectorGaussianConv
from uenn_geo.nn.functional import concat_scalars, safe_norm, split_scalars, unit_vectors
from uenn_geo.nn.gram import GramInvariants
from uenn_geo.nn.linear import EquivariantLinear
from uenn_geo.nn.mlp import EquivariantMLP
from uenn_geo.nn.radial import GaussianBasis, SmoothCutoff, edge_basis, smooth_cutoff

__all__ = [
    "EquivariantLinear",
    "EquivariantMLP",
    "SmoothSoftsignResidual",
    "SoftsignResidual",
    "NormActivation",
    "VectorReLU",
    "VectorLeakyReLU",
    "Identity",
    "ACTIVATIONS",
    "GaussianBasis",
    "VectorGaussianConv",
    "GramInvariants",
    "SmoothCutoff",
    "edge_basis",
    "smooth_cutoff",
    "concat_scalars",
    "split_scalars",
    "safe_norm",
    "unit_vectors",
]
