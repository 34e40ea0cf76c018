r"""The feedforward unitary-equivariant stack of Ma & Chan (eqs. 5-14)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from uenn_geo.nn.activation import SoftsignResidual, resolve_activation
from uenn_geo.nn.functional import DEFAULT_EPS
from uenn_geo.nn.linear import EquivariantLinear, _dtype_name, check_vector_input

__all__ = ["EquivariantMLP"]


class EquivariantMLP(nn.Module):
    r"""A stack of :class:`EquivariantLinear` layers and vector activations (eqs. 5, 11).

    .. math::
        x_{k+1} = \sigma\left(x_k W_k + e_k b_k\right), \qquad k = 0, \dots, K-1

    with ``act`` on the hidden layers and ``final_act`` (identity by default, eq. 14) on the
    last. Equivariant to every unitary :math:`U` acting on the component axis (every
    orthogonal :math:`U`, reflections included, for a real ``dtype``), for any :math:`n`.
    ``EquivariantMLP([6, 50, 90, 100, 80, 50, 4])`` is the paper's network.

    Args:
        channels (list[int]): vector counts per layer, input first, at least two entries.
        act (str or nn.Module): hidden activation (default: :class:`SoftsignResidual`).
        final_act (str or nn.Module, optional): output activation (default: identity).
        bias (bool): use the :math:`e b` term (default: :obj:`True`).
        num_scalars (int): scalar rows carried at the end of the component axis, eq. 15
            (default: :obj:`0`).
        eps (float): norm floor for :math:`e` (default: :obj:`1e-6`).
        separate_scalars (bool): scalar rows with weights of their own
            (:class:`EquivariantLinear`) (default: :obj:`False`).
        delta (float): the smooth :math:`e` of :class:`EquivariantLinear` (default:
            :obj:`0.0`, eq. 8).
        device, dtype: factory arguments (default: :obj:`torch.get_default_dtype()`).

    Shapes:
        :obj:`(..., n + m, channels[0]) -> (..., n + m, channels[-1])`

    Example:
        >>> mlp = EquivariantMLP([6, 50, 90, 100, 80, 50, 4], dtype=torch.float64)
        >>> mlp(torch.randn(32, 3, 6, dtype=torch.float64)).shape
        torch.Size([32, 3, 4])
    """

    def __init__(
        self,
        channels: Sequence[int],
        act: str | nn.Module | None = None,
        final_act: str | nn.Module | None = None,
        bias: bool = True,
        num_scalars: int = 0,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        separate_scalars: bool = False,
        delta: float = 0.0,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError(f"channels needs at least an input and an output, got {channels}")
        self.channels = channels
        self.num_scalars = num_scalars
        self.act = SoftsignResidual() if act is None else resolve_activation(act)
        self.final_act = resolve_activation(final_act)
        self.layers = nn.ModuleList(
            EquivariantLinear(
                c_in,
                c_out,
                bias=bias,
                num_scalars=num_scalars,
                eps=eps,
                device=device,
                dtype=dtype,
                separate_scalars=separate_scalars,
                delta=delta,
            )
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.reset_parameters()

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_vector_input(x, self.channels[0], self.dtype, min_rows=self.num_scalars + 1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = self.final_act(x) if i == last else self.act(x)
        return x

    def __repr__(self) -> str:
        parts = [str(self.channels), f"act={self.act!r}"]
        if not isinstance(self.final_act, type(resolve_activation(None))):
            parts.append(f"final_act={self.final_act!r}")
        if self.num_scalars:
            parts.append(f"num_scalars={self.num_scalars}")
        parts.append(_dtype_name(self.dtype))
        return f"{self.__class__.__name__}({', '.join(parts)})"
