r"""Vector activations :math:`\sigma` with :math:`\sigma(Uu) = U\sigma(u)` (eq. 12).

Every activation here has the form :math:`\sigma(u) = g(\|u\|)\, u` with a real scalar
function :math:`g`, applied to each column (channel) of a :obj:`(..., n, M)` tensor. Since
:math:`\|Uu\| = \|u\|` for unitary :math:`U`, each one is equivariant. With scalar features
(eq. 15) the norm runs over the augmented vector :math:`u' = [u; h]`, which is invariant under
:math:`\mathrm{diag}(U, I_m)`, so the same activations serve both cases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from uenn_geo.nn.functional import DEFAULT_EPS, safe_norm, squared_norm

__all__ = [
    "SoftsignResidual",
    "SmoothSoftsignResidual",
    "NormActivation",
    "VectorReLU",
    "VectorLeakyReLU",
    "Identity",
    "ACTIVATIONS",
    "resolve_activation",
]

#: Default residue :math:`a` of :class:`SoftsignResidual`.
DEFAULT_RESIDUE = 0.1


class SoftsignResidual(nn.Module):
    r"""Softsign with a small linear residue, the paper's activation (eq. 13).

    .. math::
        \sigma(u) = \frac{u}{1 + \|u\|} + a\, u

    The softsign part saturates at norm 1; the residue :math:`a u` keeps the slope at least
    :math:`a` for large vectors, so gradients never vanish and outputs can grow. The paper
    calls :math:`a` "small" without a value; the default :math:`a = 0.1` keeps the activation
    clearly nonlinear for inputs of order 1 (inputs are scaled to unit spread) while the
    slope at large norm stays a tenth of the slope at zero. It is smooth everywhere,
    including :math:`u = 0`, where :math:`\sigma'(0) = (1 + a) I`.

    Args:
        a (float): the residue (default: :obj:`0.1`).

    Shapes:
        :obj:`(..., n, M) -> (..., n, M)`
    """

    def __init__(self, a: float = DEFAULT_RESIDUE) -> None:
        super().__init__()
        if a < 0:
            raise ValueError(f"the residue a must be >= 0, got {a}")
        self.a = float(a)

    def reset_parameters(self) -> None:
        """No parameters; present for a uniform interface."""

    def forward(self, u: Tensor) -> Tensor:
        return u * (1.0 / (1.0 + safe_norm(u)) + self.a)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(a={self.a:g})"


class SmoothSoftsignResidual(SoftsignResidual):
    r"""The softsign of eq. 13 with :math:`\sqrt{1 + \|u\|^2}` in place of :math:`1 + \|u\|`.

    .. math::
        \sigma(u) = \frac{u}{\sqrt{1 + \|u\|^2}} + a\, u

    The same shape (slope :math:`1 + a` at zero, saturating at norm 1, then slope :math:`a`),
    but a function of :math:`\|u\|^2`, hence smooth (:math:`C^\infty`) at :math:`u = 0` too,
    where eq. 13's second derivative jumps with the direction of :math:`u`. Forces taken
    from an energy contain :math:`\sigma'`, and training them differentiates once more.

    Args:
        a (float): the residue (default: :obj:`0.1`).
    """

    def forward(self, u: Tensor) -> Tensor:
        return u * (torch.rsqrt(1.0 + squared_norm(u)) + self.a)


class NormActivation(nn.Module):
    r"""General norm activation (eq. 12): a scalar function of the norm sets the length.

    .. math::
        \sigma(u) = \phi(\|u\|)\, \frac{u}{\max(\|u\|, \epsilon)}

    ``phi`` maps a real tensor of norms to a real tensor of the same shape and should
    satisfy :math:`\phi(0) = 0` for :math:`\sigma` to be continuous at the origin.

    Args:
        phi (callable): the scalar function of the norm.
        eps (float): floor of the norm in the direction :math:`u/\|u\|` (default: :obj:`1e-6`).

    Shapes:
        :obj:`(..., n, M) -> (..., n, M)`
    """

    def __init__(self, phi: Callable[[Tensor], Tensor], eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.phi = phi
        self.eps = eps

    def reset_parameters(self) -> None:
        """No parameters; present for a uniform interface."""

    def forward(self, u: Tensor) -> Tensor:
        r = safe_norm(u)
        return u * (self.phi(r) / r.clamp_min(self.eps))

    def __repr__(self) -> str:
        name = getattr(self.phi, "__name__", type(self.phi).__name__)
        return f"{self.__class__.__name__}(phi={name})"


class VectorReLU(NormActivation):
    r"""ReLU in vector form: the norm is soft-thresholded, the direction kept.

    .. math::
        \sigma(u) = \max(\|u\| - \theta, 0)\, \frac{u}{\|u\|}

    A plain :math:`\max(\|u\|, 0)` would be the identity, since norms are never negative;
    the threshold :math:`\theta \ge 0` plays the role of ReLU's kink. Vectors shorter than
    :math:`\theta` are switched off; :math:`\sigma` is continuous, with :math:`\sigma(0) = 0`.

    Args:
        threshold (float): :math:`\theta` (default: :obj:`0.5`).
    """

    def __init__(self, threshold: float = 0.5, eps: float = DEFAULT_EPS) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        super().__init__(self._phi, eps=eps)

    def _phi(self, r: Tensor) -> Tensor:
        return (r - self.threshold).clamp_min(0.0)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(threshold={self.threshold:g})"


class VectorLeakyReLU(NormActivation):
    r"""Leaky ReLU in vector form: below the threshold the norm is scaled by ``slope``.

    .. math::
        \phi(r) = \begin{cases} s\, r & r < \theta \\ r - (1 - s)\theta & r \ge \theta \end{cases},
        \qquad \sigma(u) = \phi(\|u\|) \frac{u}{\|u\|}

    :math:`\phi` is continuous and increasing with :math:`\phi(0) = 0`, the vector analogue of
    a leaky ReLU with its kink at :math:`\theta`.

    Args:
        threshold (float): :math:`\theta` (default: :obj:`0.5`).
        negative_slope (float): :math:`s` (default: :obj:`0.01`).
    """

    def __init__(
        self, threshold: float = 0.5, negative_slope: float = 0.01, eps: float = DEFAULT_EPS
    ) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)
        self.negative_slope = float(negative_slope)
        super().__init__(self._phi, eps=eps)

    def _phi(self, r: Tensor) -> Tensor:
        return r - (1.0 - self.negative_slope) * r.clamp_max(self.threshold)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(threshold={self.threshold:g}, "
            f"negative_slope={self.negative_slope:g})"
        )


class Identity(nn.Module):
    r"""Identity activation, :math:`\sigma(u) = u` (eq. 14), usual on the output layer."""

    def reset_parameters(self) -> None:
        """No parameters; present for a uniform interface."""

    def forward(self, u: Tensor) -> Tensor:
        return u

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


#: Activations by name, for configuration files and the command line.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "softsign_residual": SoftsignResidual,
    "smooth_softsign_residual": SmoothSoftsignResidual,
    "relu": VectorReLU,
    "leaky_relu": VectorLeakyReLU,
    "identity": Identity,
}


def resolve_activation(act: str | nn.Module | None) -> nn.Module:
    """Turn a name from :data:`ACTIVATIONS`, a module or :obj:`None` (identity) into a module."""
    if act is None:
        return Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[act]()
    raise ValueError(f"activation must be a name, an nn.Module or None, got {type(act).__name__}")
