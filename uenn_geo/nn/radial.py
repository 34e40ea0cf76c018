r"""Radial pieces of the vector graph layer: Gaussian basis and smooth cutoff (Ma & Chan, eq. 31).

.. math::
    e_{ij}^b = \exp\!\left(-\eta_b (r_{ij} - r_{s,b})^2\right) f_c(r_{ij})
    \quad (i \neq j)

:class:`GaussianBasis` gives the exponentials, :class:`SmoothCutoff` / :func:`smooth_cutoff`
the cutoff function :math:`f_c`. Distances are in Angstrom, :math:`\eta` in
:math:`\text{Angstrom}^{-2}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GaussianBasis", "SmoothCutoff", "edge_basis", "smooth_cutoff"]


def _check_real(r: Tensor, name: str = "r") -> None:
    if not isinstance(r, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(r).__name__}")
    if r.is_complex() or not r.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {r.dtype}")


#: Floor of the Gaussians' exponents (:class:`GaussianBasis`): :math:`e^{-60} \approx 9 \cdot
#: 10^{-27}`, well inside float32's normal range.
EXP_FLOOR = 60.0


def smooth_cutoff(r: Tensor, r_c: float) -> Tensor:
    r"""Polynomial cutoff that is :math:`C^2` at :math:`r_c` (the cutoff :math:`f_c` of eq. 31).

    .. math::
        f_c(r) = \begin{cases}
            1 - 10 x^3 + 15 x^4 - 6 x^5 = (1 - x)^3 (1 + 3 x + 6 x^2) & x = r / r_c < 1 \\
            0 & r \geq r_c
        \end{cases}

    This is the quintic "smootherstep": the only degree-5 polynomial with :math:`f_c(0) = 1`,
    :math:`f_c(r_c) = 0` and first and second derivatives zero at both ends. The paper asks for
    a cutoff continuous with at least two derivatives (sec. 4); the common cosine cutoff
    :math:`\tfrac12(\cos(\pi r / r_c) + 1)` is only :math:`C^1` (its curvature jumps from
    :math:`\pi^2 / (2 r_c^2)` to 0 at :math:`r_c`), which shows up as force-derivative jumps
    in MD. A :math:`C^\infty` bump :math:`\exp(1 - 1/(1 - x^2))` would also do, but it needs a
    guarded division near :math:`r_c` to keep gradients finite; the polynomial needs no guard,
    is monotone on :math:`[0, r_c]`, flat at :math:`r = 0`, and cheap.

    It is evaluated as :math:`y^3 (1 + 3x + 6x^2)` with :math:`y = \max(1 - x, 0)`, so the
    value, slope and curvature are exactly zero for :math:`r \geq r_c` and autograd gives finite
    derivatives of every order everywhere (at :math:`r = 0` included). Intended for
    :math:`r \geq 0`.

    Args:
        r (Tensor): Distances in Angstrom, any shape.
        r_c (float): Cutoff radius :math:`r_c > 0` in Angstrom.

    Shapes:
        - **input:** :math:`(*)`
        - **output:** :math:`(*)`

    Example:
        >>> smooth_cutoff(torch.tensor([0.0, 2.5, 5.0, 6.0]), 5.0)
        tensor([1.0000, 0.5000, 0.0000, 0.0000])
    """
    _check_real(r)
    if isinstance(r_c, Tensor):
        r_c = r_c.item()
    if not torch.compiler.is_compiling() and not (math.isfinite(r_c) and r_c > 0.0):
        raise ValueError(f"r_c must be a finite number > 0, got {r_c}")
    x = r / r_c
    y = torch.clamp(1.0 - x, min=0.0)
    return y**3 * (1.0 + x * (3.0 + 6.0 * x))


class SmoothCutoff(nn.Module):
    r"""Smooth :math:`C^2` cutoff :math:`f_c(r)` of eq. 31, as a module; see :func:`smooth_cutoff`.

    .. math::
        f_c(r) = (1 - x)^3 (1 + 3 x + 6 x^2) \text{ for } x = r / r_c < 1, \quad
        f_c(r) = 0 \text{ for } r \geq r_c

    Args:
        cutoff (float): Cutoff radius :math:`r_c > 0` in Angstrom.

    Shapes:
        - **input:** :math:`(*)`
        - **output:** :math:`(*)`
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
            raise TypeError(f"cutoff must be a number, got {type(cutoff).__name__}")
        if not (math.isfinite(cutoff) and cutoff > 0.0):
            raise ValueError(f"cutoff must be a finite number > 0, got {cutoff}")
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        return smooth_cutoff(r, self.cutoff)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(cutoff={self.cutoff})"


class GaussianBasis(nn.Module):
    r"""Gaussian radial basis :math:`\exp(-\eta_b (r - r_{s,b})^2)` of eq. 31.

    .. math::
        g_b(r) = \exp\!\left(-\eta_b (r - r_{s,b})^2\right), \qquad
        r_{s,b} = r_{\min} + (b - 1)\,\Delta, \quad
        \Delta = \frac{r_{\max} - r_{\min}}{B - 1}, \quad b = 1, \dots, B

    The centres :math:`r_{s,b}` are evenly spaced on :math:`[r_{\min}, r_{\max}]`. The default
    width is SchNet's (and PyG's ``GaussianSmearing``) choice :math:`\eta_b = 1 / (2\Delta^2)`:
    each Gaussian has standard deviation :math:`\Delta`, so neighbours overlap and the basis covers
    the interval without gaps (for :math:`B = 1`, :math:`\Delta = r_{\max} - r_{\min}`). The
    cutoff :math:`f_c` is applied separately (:class:`SmoothCutoff`).

    With ``learnable=True`` the centres and widths are trained; :math:`\eta_b` is stored as
    :math:`\log \eta_b` (parameter ``log_eta``) so that it stays positive.

    Args:
        num_basis (int): Number of Gaussians :math:`B`.
        r_min (float, optional): First centre in Angstrom. (default: :obj:`0.0`)
        r_max (float, optional): Last centre in Angstrom, usually the cutoff.
            (default: :obj:`5.0`)
        eta (float or Sequence[float], optional): Widths :math:`\eta_b > 0` in
            :math:`\text{Angstrom}^{-2}`, one value for all or one per Gaussian.
            (default: :obj:`None`, :math:`1 / (2\Delta^2)`)
        learnable (bool, optional): Train :math:`r_{s,b}` and :math:`\eta_b`.
            (default: :obj:`False`)
        device (torch.device, optional): Device of the parameters. (default: :obj:`None`)
        dtype (torch.dtype, optional): Real dtype of the parameters.
            (default: :obj:`None`, the default dtype)

    Shapes:
        - **input:** distances :math:`(*)`, e.g. :math:`(E)`
        - **output:** :math:`(*, B)`

    Example:
        >>> basis = GaussianBasis(16, r_max=10.2)
        >>> basis
        GaussianBasis(16, r=[0.0, 10.2], learnable=False)
        >>> basis(torch.rand(7) * 10.2).shape
        torch.Size([7, 16])
    """

    def __init__(
        self,
        num_basis: int,
        r_min: float = 0.0,
        r_max: float = 5.0,
        eta: float | Sequence[float] | None = None,
        learnable: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_basis, bool) or not isinstance(num_basis, int) or num_basis < 1:
            raise ValueError(f"num_basis must be an int >= 1, got {num_basis!r}")
        r_min, r_max = float(r_min), float(r_max)
        if not (math.isfinite(r_min) and math.isfinite(r_max) and r_max > r_min):
            raise ValueError(f"need finite r_min < r_max, got r_min={r_min}, r_max={r_max}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype.is_complex or not dtype.is_floating_point:
            raise TypeError(f"GaussianBasis needs a real floating-point dtype, got {dtype}")
        spacing = (r_max - r_min) / (num_basis - 1) if num_basis > 1 else r_max - r_min
        if eta is None:
            eta_init = torch.full((num_basis,), 0.5 / spacing**2, dtype=torch.float64)
        else:
            eta_init = torch.as_tensor(eta, dtype=torch.float64).flatten()
            if eta_init.numel() == 1:
                eta_init = eta_init.expand(num_basis)
            if eta_init.shape != (num_basis,):
                raise ValueError(
                    f"eta must be a number or have {num_basis} values, got {eta_init.numel()}"
                )
            if not bool((torch.isfinite(eta_init) & (eta_init > 0)).all()):
                raise ValueError(f"eta must be finite and > 0, got {eta_init.tolist()}")
        self.num_basis = num_basis
        self.r_min = r_min
        self.r_max = r_max
        self.learnable = learnable
        factory = {"device": device, "dtype": dtype}
        self.register_buffer(
            "_rs_init", torch.linspace(r_min, r_max, num_basis, **factory), persistent=False
        )
        self.register_buffer(
            "_log_eta_init", eta_init.log().to(**factory).clone(), persistent=False
        )
        rs = torch.empty(num_basis, **factory)
        log_eta = torch.empty(num_basis, **factory)
        if learnable:
            self.rs = nn.Parameter(rs)
            self.log_eta = nn.Parameter(log_eta)
        else:
            self.register_buffer("rs", rs)
            self.register_buffer("log_eta", log_eta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Reset the centres and widths to their initial values."""
        with torch.no_grad():
            self.rs.copy_(self._rs_init)
            self.log_eta.copy_(self._log_eta_init)

    @property
    def eta(self) -> Tensor:
        r"""Widths :math:`\eta_b = \exp(\log \eta_b) > 0`, shape :math:`(B)`."""
        return self.log_eta.exp()

    def forward(self, r: Tensor) -> Tensor:
        _check_real(r)
        diff = r.unsqueeze(-1) - self.rs
        # Exponents below -EXP_FLOOR are clamped (exp(-60) ~ 1e-26): the far tails of the
        # Gaussians underflow to subnormal numbers otherwise, and CPUs compute those up to
        # 3x slower; values and gradients there are below 1e-26 either way.
        return torch.exp((-self.eta * diff.square()).clamp_min(-EXP_FLOOR))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.num_basis}, r=[{self.r_min}, {self.r_max}], "
            f"learnable={self.learnable})"
        )


def _cutoff_and_slope(r: Tensor, r_c: float) -> tuple[Tensor, Tensor]:
    r""":func:`smooth_cutoff` and its derivative :math:`f_c'(r) = -30 x^2 (1 - x)^2 / r_c`,
    both set to zero at :math:`r = 0` (the self-edge: :math:`e_{ii} = 0`, eq. 31)."""
    x = r / r_c
    y = torch.clamp(1.0 - x, min=0.0)
    inside = r > 0
    value = torch.where(inside, y**3 * (1.0 + x * (3.0 + 6.0 * x)), 0.0)
    slope = torch.where(inside, (-30.0 / r_c) * (x * y).square(), 0.0)
    return value, slope


def _gaussians(r: Tensor, rs: Tensor, eta: Tensor) -> Tensor:
    """:class:`GaussianBasis` without a graph: in-place passes over one (E, B) buffer."""
    g = r.unsqueeze(-1) - rs
    return g.square_().mul_(-eta).clamp_min_(-EXP_FLOOR).exp_()


class _EdgeBasis(torch.autograd.Function):
    r""":math:`e^b(r) = g_b(r) f_c(r)` with a backward of two passes over :obj:`(E, B)`.

    .. math::
        \frac{\partial L}{\partial r} = f_c' \sum_b G_b g_b
            + f_c \Big(r \sum_b G_b g_b (-2\eta_b) + \sum_b G_b g_b\, 2\eta_b r_{s,b}\Big),
        \qquad G_b = \frac{\partial L}{\partial e^b}

    (the three sums are one matrix product). Where the backward itself is differentiated
    (``create_graph``: a force loss in training, Hessians), it recomputes :math:`g` and
    :math:`f_c` from :math:`r` with differentiable operations, so every higher derivative is
    exact. The floor of the exponent (:data:`EXP_FLOOR`) is left out of the derivative: it
    changes values below :math:`e^{-60}` only.
    """

    @staticmethod
    def forward(ctx, r: Tensor, rs: Tensor, eta: Tensor, r_c: float) -> Tensor:
        g = _gaussians(r, rs, eta)
        fc, slope = _cutoff_and_slope(r, r_c)
        ctx.r_c = r_c
        ctx.save_for_backward(r, rs, eta, g, fc, slope)
        return g * fc.unsqueeze(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        r, rs, eta, g, fc, slope = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the derivative of r's graph, exactly
            g = torch.exp((-eta * (r.unsqueeze(-1) - rs).square()).clamp_min(-EXP_FLOOR))
            fc, slope = _cutoff_and_slope(r, ctx.r_c)
        weights = torch.stack([torch.ones_like(eta), -2.0 * eta, 2.0 * eta * rs], dim=-1)
        sums = (grad * g) @ weights  # (E, 3)
        grad_r = slope * sums[:, 0] + fc * (r * sums[:, 1] + sums[:, 2])
        return grad_r, None, None, None


def edge_basis(r: Tensor, basis: GaussianBasis, r_c: float) -> Tensor:
    r"""The radial functions :math:`e^b_{ij} = g_b(r_{ij}) f_c(r_{ij})` of eq. 31 :obj:`(E, B)`
    for distances :obj:`(E)`, zero at :math:`r = 0`.

    The same numbers as ``basis(r) * smooth_cutoff(r, r_c)``, at a fraction of the memory
    traffic where :math:`E B` is large: without a graph in place, and with a graph through a
    hand-written backward (:class:`_EdgeBasis`; learnable bases and :func:`torch.compile`,
    which fuses the plain expression itself, take the plain expression).
    """
    _check_real(r)
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    needs_graph = torch.is_grad_enabled() and (
        r.requires_grad or basis.rs.requires_grad or basis.log_eta.requires_grad
    )
    if tracing or (needs_graph and basis.learnable):
        e = basis(r) * smooth_cutoff(r, r_c).unsqueeze(-1)
        return torch.where(r.unsqueeze(-1) > 0, e, 0.0)
    if needs_graph:
        return _EdgeBasis.apply(r, basis.rs, basis.eta, float(r_c))
    fc, _ = _cutoff_and_slope(r, float(r_c))
    return _gaussians(r, basis.rs, basis.eta).mul_(fc.unsqueeze(-1))
