r"""Invariants from the inner products of equivariant vectors (Ma & Chan, sec. 3.6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from uenn_geo.nn.linear import _dtype_name, check_vector_input, xavier_uniform_

__all__ = ["GramInvariants"]


class GramInvariants(nn.Module):
    r"""The inner products of :math:`K` learned mixes of the input vectors: a Gram matrix.

    .. math::
        p = x P, \qquad g_{ab} = \frac{1}{\sqrt{K}}\, p_a^{\dagger} p_b, \quad a \le b

    with a learned :math:`P \in \mathbb{R}^{M \times K}` (no bias) and :math:`p_a` the columns of
    :math:`p`. For every unitary :math:`U`, :math:`(U p_a)^\dagger (U p_b) = p_a^\dagger p_b`, so
    the :math:`K (K + 1) / 2` outputs are invariant. With ``num_scalars`` the scalar rows (eq. 15)
    take part as the invariant part of augmented vectors :math:`[x; h]`. The activations of
    :class:`~uenn_geo.nn.EquivariantMLP` see only norms of single channels; these products give
    the angles between channels (for vectors made of neighbour sums, three-body invariants)
    as scalar features in one step. For complex inputs the real and imaginary parts of
    :math:`g_{ab}` are returned, :math:`K^2` numbers.

    Args:
        in_channels (int): number :math:`M` of input vectors.
        channels (int): number :math:`K` of mixes whose inner products are taken.
        device, dtype: factory arguments (default: :obj:`torch.get_default_dtype()`).

    Shapes:
        :obj:`(..., n + m, M) -> (..., T)` with :math:`T` = :attr:`num_invariants`

    Example:
        >>> gram = GramInvariants(6, 4, dtype=torch.float64)
        >>> gram(torch.randn(10, 3, 6, dtype=torch.float64)).shape
        torch.Size([10, 10])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(
                f"channel counts must be positive, got in_channels={in_channels}, "
                f"channels={channels}"
            )
        dtype = dtype or torch.get_default_dtype()
        self.in_channels = in_channels
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(in_channels, channels, device=device, dtype=dtype))
        rows, cols = torch.triu_indices(channels, channels)
        self.register_buffer("_pairs", rows * channels + cols, persistent=False)
        self.reset_parameters()

    @property
    def num_invariants(self) -> int:
        """Number :math:`T` of outputs."""
        k = self.channels
        return k * k if self.weight.is_complex() else k * (k + 1) // 2

    def reset_parameters(self) -> None:
        """Normalised Xavier for :math:`P`."""
        xavier_uniform_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        check_vector_input(x, self.in_channels, self.weight.dtype)
        p = x @ self.weight  # (..., R, K)
        g = p.mH @ p / math.sqrt(self.channels)  # (..., K, K), Hermitian
        g = g.flatten(-2)
        if g.is_complex():  # the upper triangle of the real part, the strict one of the imaginary
            return torch.cat([g.real[..., self._pairs], g.imag[..., self._strict_pairs()]], -1)
        return g[..., self._pairs]

    def _strict_pairs(self) -> Tensor:
        k = self.channels
        rows, cols = torch.triu_indices(k, k, offset=1, device=self._pairs.device)
        return rows * k + cols

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels} -> {self.channels}, "
            f"{_dtype_name(self.weight.dtype)})"
        )
