r"""The equivariant linear layer of Ma & Chan, eqs. (5)-(8), with scalar features (15)-(17)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from uenn_geo.nn.functional import DEFAULT_EPS, unit_vectors

__all__ = ["EquivariantLinear", "check_vector_input"]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_vector_input(
    x: Tensor, channels: int, dtype: torch.dtype, min_rows: int = 1, name: str = "input"
) -> None:
    """Raise a :class:`ValueError` naming the problem if ``x`` is not ``(..., n, channels)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[-1] != channels or x.shape[-2] < min_rows:
        raise ValueError(
            f"{name} must have shape (..., n, {channels}) with n >= {min_rows} "
            f"(vector components, then channels), got {tuple(x.shape)}"
        )
    if x.dtype != dtype:
        raise ValueError(
            f"{name} has dtype {_dtype_name(x.dtype)} but the layer's parameters are "
            f"{_dtype_name(dtype)}; convert the input or build the layer with "
            f"dtype={x.dtype}"
        )


def xavier_uniform_(weight: Tensor) -> Tensor:
    r"""Normalised Xavier (Glorot & Bengio 2010) initialisation of a :obj:`(M_in, M_out)` matrix.

    Entries are drawn from :math:`U[-\beta, \beta]`, :math:`\beta = \sqrt{6 / (M_{in} + M_{out})}`.
    For a complex matrix the real and imaginary parts are drawn independently with
    :math:`\beta / \sqrt{2}`, so that :math:`E|w|^2` is the same as in the real case.
    """
    fan_in, fan_out = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        if weight.is_complex():
            real = torch.empty(weight.shape, dtype=weight.real.dtype, device=weight.device)
            imag = torch.empty_like(real)
            real.uniform_(-bound / math.sqrt(2), bound / math.sqrt(2))
            imag.uniform_(-bound / math.sqrt(2), bound / math.sqrt(2))
            weight.copy_(torch.complex(real, imag))
        else:
            weight.uniform_(-bound, bound)
    return weight


class EquivariantLinear(nn.Module):
    r"""The unitary-equivariant linear map of Ma & Chan (eqs. 5-8).

    .. math::
        y = x W + e\, b, \qquad
        e = \left[\frac{x^{(1)}}{\|x^{(1)}\|}, \dots, \frac{x^{(M_{in})}}{\|x^{(M_{in})}\|}\right]

    The weights mix channels (columns) and never components, so for any unitary :math:`U`
    (orthogonal when real), :math:`y(Ux) = U y(x)` (eq. 10). The term :math:`e b` is the
    equivariant replacement of an additive bias. A column whose norm is below ``eps`` is
    normalised by ``eps`` instead (see :func:`~uenn_geo.nn.functional.unit_vectors`), so a
    zero vector gives :math:`e = 0` and finite gradients.

    With ``num_scalars=m`` the last :math:`m` rows of the component axis are invariant scalar
    features :math:`h` (eqs. 15-17): :math:`x' = [x; h]`, :math:`e' = [e; 1]`, so the scalars are
    mixed by the same :math:`W` and receive a single bias :math:`\sum_a b_{a\alpha}` per output
    channel; the group acts as :math:`\mathrm{diag}(U, I_m)`.

    Args:
        in_channels (int): number of input vectors :math:`M_k`.
        out_channels (int): number of output vectors :math:`M_{k+1}`.
        bias (bool): learn :math:`b` (default: :obj:`True`).
        num_scalars (int): number :math:`m` of scalar rows at the end of the component axis
            (default: :obj:`0`).
        eps (float): norm floor used to normalise :math:`e` (default: :obj:`1e-6`).
        separate_scalars (bool): give the scalar rows weights of their own,
            :math:`h' = h W_s + b_s`, instead of the vectors' :math:`W` (the group acts as
            the identity on them, so any linear map of the scalars is equivariant); needs
            ``num_scalars > 0`` (default: :obj:`False`, eqs. 16-17).
        delta (float): with :math:`\delta > 0`, the smooth
            :math:`e = x / \sqrt{\|x\|^2 + \delta^2}` in place of eq. 8's :math:`x / \|x\|`
            (:func:`~uenn_geo.nn.functional.unit_vectors`): no direction turns abruptly where a
            vector passes near zero (default: :obj:`0.0`, eq. 8).
        device, dtype: factory arguments; a complex ``dtype`` makes :math:`W, b` complex
            (default: :obj:`torch.get_default_dtype()`).

    Shapes:
        - input: :obj:`(..., n + m, M_in)`
        - output: :obj:`(..., n + m, M_out)`

    Example:
        >>> lin = EquivariantLinear(6, 50, dtype=torch.complex128)
        >>> lin
        EquivariantLinear(6 -> 50, complex128)
        >>> lin(torch.randn(10, 3, 6, dtype=torch.complex128)).shape
        torch.Size([10, 3, 50])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        num_scalars: int = 0,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        separate_scalars: bool = False,
        delta: float = 0.0,
    ) -> None:
        super().__init__()
        if not delta >= 0:
            raise ValueError(f"delta must be >= 0 (0: eq. 8's x / |x|), got {delta}")
        if separate_scalars and num_scalars < 1:
            raise ValueError("separate_scalars needs scalar rows: num_scalars >= 1")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"channel counts must be positive, got in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        if num_scalars < 0:
            raise ValueError(f"num_scalars must be >= 0, got {num_scalars}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        dtype = dtype or torch.get_default_dtype()
        if not (dtype.is_floating_point or dtype.is_complex):
            raise ValueError(f"dtype must be a real or complex floating type, got {dtype}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_scalars = num_scalars
        self.eps = eps
        self.delta = float(delta)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(in_channels, out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.scalar_weight = self.scalar_bias = None
        if separate_scalars:
            self.scalar_weight = nn.Parameter(torch.empty(in_channels, out_channels, **factory))
            if bias:
                self.scalar_bias = nn.Parameter(torch.empty(out_channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normalised Xavier for :math:`W`, zeros for :math:`b` (as in the paper)."""
        xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.scalar_weight is not None:
            xavier_uniform_(self.scalar_weight)
        if self.scalar_bias is not None:
            nn.init.zeros_(self.scalar_bias)

    def forward(self, x: Tensor) -> Tensor:
        check_vector_input(x, self.in_channels, self.weight.dtype, min_rows=self.num_scalars + 1)
        if self.scalar_weight is not None:
            return self._forward_separate(x)
        if self.bias is None:
            return x @ self.weight
        m = self.num_scalars
        if m == 0:
            e = unit_vectors(x, self.eps, delta=self.delta)
        else:
            vec = x[..., : x.shape[-2] - m, :]
            ones = torch.ones_like(x[..., x.shape[-2] - m :, :])
            e = torch.cat([unit_vectors(vec, self.eps, delta=self.delta), ones], dim=-2)
        # One matmul for both terms: [x, e] @ [W; b].
        return torch.cat([x, e], dim=-1) @ torch.cat([self.weight, self.bias], dim=0)

    def _forward_separate(self, x: Tensor) -> Tensor:
        """The vector rows with :math:`(W, b)`, the scalar rows with :math:`(W_s, b_s)`."""
        rows = x.shape[-2] - self.num_scalars
        vec, h = x[..., :rows, :], x[..., rows:, :]
        if self.bias is None:
            y_vec = vec @ self.weight
        else:
            e = unit_vectors(vec, self.eps, delta=self.delta)
            y_vec = torch.cat([vec, e], dim=-1) @ torch.cat([self.weight, self.bias], dim=0)
        y_sca = h @ self.scalar_weight
        if self.scalar_bias is not None:
            y_sca = y_sca + self.scalar_bias
        return torch.cat([y_vec, y_sca], dim=-2)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        parts = [f"{self.in_channels} -> {self.out_channels}", _dtype_name(self.weight.dtype)]
        if self.bias is None:
            parts.append("bias=False")
        if self.num_scalars:
            parts.append(f"num_scalars={self.num_scalars}")
        if self.scalar_weight is not None:
            parts.append("separate_scalars=True")
        if self.delta:
            parts.append(f"delta={self.delta:g}")
        return f"{self.__class__.__name__}({', '.join(parts)})"
