r"""Functional building blocks shared by the equivariant layers.

All functions act on tensors of shape :obj:`(..., n, M)`: the second-to-last axis holds the
components of a vector of :math:`\mathbb{C}^n` (or :math:`\mathbb{R}^n`), the last axis the
:math:`M` vector channels (the columns of the paper's matrix :math:`x_k`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "squared_norm",
    "safe_norm",
    "unit_vectors",
    "concat_scalars",
    "split_scalars",
    "scalar_channels",
]

#: Default floor of the norm used to normalise a vector, see :func:`unit_vectors`.
DEFAULT_EPS = 1e-6


def squared_norm(x: Tensor, dim: int = -2, keepdim: bool = True) -> Tensor:
    r"""Squared Euclidean (Hermitian) norm :math:`\|x\|^2 = \sum_i |x_i|^2` along ``dim``.

    Real-valued for complex input.
    """
    if x.is_complex():
        return (x.real.square() + x.imag.square()).sum(dim=dim, keepdim=keepdim)
    return x.square().sum(dim=dim, keepdim=keepdim)


def safe_norm(x: Tensor, dim: int = -2, keepdim: bool = True) -> Tensor:
    r"""Euclidean (Hermitian) norm whose gradient is finite everywhere.

    Equal to :math:`\|x\|` exactly; at :math:`x = 0` the gradient is defined as :math:`0`
    (the "double where" construction, so no :obj:`NaN` appears in the backward pass).
    """
    sq = squared_norm(x, dim=dim, keepdim=keepdim)
    nonzero = sq > 0
    return torch.where(nonzero, torch.where(nonzero, sq, 1.0).sqrt(), 0.0)


def unit_vectors(x: Tensor, eps: float = DEFAULT_EPS, dim: int = -2, delta: float = 0.0) -> Tensor:
    r"""Normalise each vector of ``x``: the paper's :math:`e_k` (eq. 8).

    .. math::
        e = \frac{x}{\max(\|x\|, \epsilon)}

    For :math:`\|x\| \geq \epsilon` this is exactly :math:`x/\|x\|`. Below the floor the result
    shrinks linearly to :math:`e(0) = 0`: a zero vector has no direction, so it contributes no
    bias. The map is continuous, depends on :math:`x` only through :math:`x` itself and its
    (invariant) norm, so it stays equivariant, and its gradient is bounded by
    :math:`1/\epsilon` everywhere (finite at :math:`x = 0`).

    With ``delta`` :math:`\delta > 0`, the smooth form

    .. math::
        e = \frac{x}{\sqrt{\|x\|^2 + \delta^2}}

    which is :math:`x/\|x\|` up to :math:`O(\delta^2/\|x\|^2)` for :math:`\|x\| \gg \delta`,
    :math:`x/\delta` near zero, infinitely differentiable, with every derivative of order
    :math:`k` bounded by a constant times :math:`\delta^{-k}`. Eq. 8's direction turns
    through any angle as :math:`x` passes near zero, with derivatives of order
    :math:`1/\|x\|`: for a force field whose vector features vanish by symmetry (atoms in
    a bulk crystal, the inside of a cluster) that is a force of any size. Equivariant for
    the same reason as eq. 8.
    """
    if delta > 0:
        return x * torch.rsqrt(squared_norm(x, dim=dim) + delta * delta)
    return x / safe_norm(x, dim=dim).clamp_min(eps)


def concat_scalars(x: Tensor, h: Tensor) -> Tensor:
    r"""Append :math:`m` invariant scalar features to the vectors (eq. 15).

    .. math::
        x' = \begin{bmatrix} x \\ h \end{bmatrix} \in \mathbb{C}^{(n+m) \times M}

    Args:
        x (Tensor): vectors of shape :obj:`(..., n, M)`.
        h (Tensor): scalars of shape :obj:`(..., m, M)` (or :obj:`(..., M)` for :math:`m = 1`).

    Returns:
        Tensor of shape :obj:`(..., n + m, M)`; use with ``num_scalars=m`` in the layers.
    """
    if h.dim() == x.dim() - 1:
        h = h.unsqueeze(-2)
    if h.shape[:-2] != x.shape[:-2] or h.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"scalar features of shape {tuple(h.shape)} do not match vectors of shape "
            f"{tuple(x.shape)}: expected (..., m, {x.shape[-1]}) with leading dims "
            f"{tuple(x.shape[:-2])}"
        )
    return torch.cat([x, h.to(x.dtype)], dim=-2)


def split_scalars(x: Tensor, num_scalars: int) -> tuple[Tensor, Tensor]:
    r"""Inverse of :func:`concat_scalars`: ``(..., n + m, M) -> ((..., n, M), (..., m, M))``."""
    if num_scalars < 0 or num_scalars >= x.shape[-2]:
        raise ValueError(
            f"num_scalars={num_scalars} must lie in [0, {x.shape[-2]}) for input of shape "
            f"{tuple(x.shape)}"
        )
    n = x.shape[-2] - num_scalars
    return x[..., :n, :], x[..., n:, :]


def scalar_channels(s: Tensor, n: int) -> Tensor:
    r"""Invariants :obj:`(N, T)` as :math:`T` channels :math:`[\mathbf{0}; s]` of vectors of
    length :math:`n` with one scalar row: :obj:`(N, n + 1, T)` (:func:`concat_scalars`'s layout)."""
    return torch.cat([s.new_zeros(s.shape[0], n, s.shape[1]), s.unsqueeze(1)], dim=1)
