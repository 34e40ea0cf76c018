r"""The vector graph layer of Ma & Chan (PAPER.md sec. 4, eqs. 29-33) on PyTorch Geometric."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from uenn_geo.nn.activation import resolve_activation
from uenn_geo.nn.functional import DEFAULT_EPS, concat_scalars, safe_norm
from uenn_geo.nn.linear import _dtype_name, xavier_uniform_
from uenn_geo.nn.radial import GaussianBasis, smooth_cutoff

__all__ = ["VectorGaussianConv"]

#: Output forms of :class:`VectorGaussianConv`.
OUTPUTS = ("vector", "scalar", "both")


class VectorGaussianConv(MessagePassing):
    r"""The vector graph layer of Ma & Chan (eqs. 29-31) as a PyG message-passing layer.

    Gaussian radial functions, a rank-3 weight and the bond directions turn the neighbourhood
    of each atom into equivariant vectors (eq. 30) and/or invariant scalars (eq. 29):

    .. math::
        D_i^a &= \sigma\Big(\sum_{j \in \mathcal{N}(i)} \sum_b e_{ij}^b \Big[
            \frac{\mathbf{r}_{ij}}{r_{ij}} \sum_{d=1}^{F} v_{jd}\, w_{bda}
            + \sum_{c=1}^{F_v} \mathbf{x}_{jc}\, w_{b,F+c,a} \Big]\Big) \qquad (30)

        S_i^a &= \sigma\Big(\sum_{j \in \mathcal{N}(i)} \sum_b e_{ij}^b \Big[
            \sum_{d=1}^{F} v_{jd}\, w'_{bda}
            + \sum_{c=1}^{F_v} \Big(\frac{\mathbf{r}_{ij}}{r_{ij}} \cdot \mathbf{x}_{jc}\Big)
            w'_{b,F+c,a} \Big]\Big) \qquad (29)

        e_{ij}^b &= \exp\!\big(-\eta_b (r_{ij} - r_{s,b})^2\big) f_c(r_{ij}) \qquad (31)

    with :math:`\mathbf{r}_{ij} = \mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_e` (the image shift
    :math:`\mathbf{s}_e` is zero for free clusters), node features :math:`v_{jd}` (e.g. one-hot
    species; a single feature equal to 1 by default), the Gaussian basis of
    :class:`~uenn_geo.nn.radial.GaussianBasis` and the :math:`C^2` cutoff of
    :func:`~uenn_geo.nn.radial.smooth_cutoff`. Without vector features (:math:`F_v = 0`) these
    are exactly the paper's eqs. (30) and (29). With one node feature, :math:`w_{b1a} =
    \delta_{ab}` and the identity :math:`\sigma`, eq. (30) is the vector descriptor (33),
    :math:`D_i^a = \sum_j (\mathbf{r}_{ij}/r_{ij})\, e_{ij}^a`.

    The optional :math:`F_v` vector features :math:`\mathbf{x}_{jc}` of the neighbours (for
    stacking layers, see :class:`~uenn_geo.models.UENNForceField`) are carried to :math:`i` as
    they are, weighted by the radial functions; in the scalar form they enter through their
    (invariant) projection on the bond direction. Every term is an invariant times
    :math:`\mathbf{r}_{ij}` or :math:`\mathbf{x}_{jc}`, so for every orthogonal :math:`U`
    (reflections included) :math:`D(U\mathbf{r}, U\mathbf{x}) = U D` and :math:`S` is invariant;
    the sum over neighbours makes both permutation-equivariant.

    **Contraction order.** :math:`w` does not depend on the edge, so the sum over :math:`j`
    and the contraction with :math:`w` commute. The layer sends the message
    :math:`m_{ij} = [\hat{\mathbf{r}}_{ij} \otimes v_j, \mathbf{x}_j] \otimes e_{ij}` of width
    :math:`n \cdot B (F + F_v)` per edge (plus one row for the scalar form), adds the messages
    up, and then contracts the :math:`N` sums with :math:`w` as one matrix product
    :math:`(N (n+1), B (F + F_v)) \times (B (F + F_v), M)`. Contracting per edge instead costs
    :math:`E B (F + F_v) M` multiply-adds against :math:`N B (F + F_v) M` here
    (:math:`E / N` is the mean number of neighbours, 50-100 for liquid argon at 8.5-10.2 A), and
    contracting the node features first (:math:`W_j = v_j w`, of width :math:`B M` per node)
    moves :math:`(n+1) B M` numbers per edge instead of :math:`(n+1) B (F + F_v)`. Per-edge
    memory, which dominates, is therefore smallest here whenever :math:`F + F_v < M`: always
    for one-hot species; for wide inputs, mix them down first with a linear layer (which is
    a low-rank factorisation of :math:`w`).

    An edge of zero length (a self-loop :math:`i = j` without shift) contributes nothing
    (eq. 31 sets :math:`e_{ii} = 0`); the unit vector uses the norm floored at ``eps``, so
    nothing becomes :obj:`NaN`. An atom without neighbours gets :math:`D_i = \sigma(0)`, zero
    for the activations of :mod:`uenn_geo.nn.activation`.

    Edges follow :func:`uenn_geo.neighbors.radius_graph`: column :math:`(i, j)` of
    ``edge_index`` means :math:`j` is a neighbour of :math:`i`, and messages are summed at
    :math:`i` = ``edge_index[0]`` (``flow="target_to_source"``). Pass a full list (both
    :math:`(i, j)` and :math:`(j, i)`) for a symmetric neighbourhood.

    Args:
        in_channels (int): number :math:`F` of (invariant) node features :math:`v_{jd}`.
        out_channels (int): number :math:`M_0` of output vectors (or scalars) per node.
        num_basis (int): number :math:`B` of Gaussians :math:`e^b`.
        cutoff (float): cutoff radius :math:`r_c` in Angstrom; the Gaussian centres
            :math:`r_{s,b}` are spread evenly on :math:`[r_{\min}, r_c]`.
        vector_channels (int): number :math:`F_v` of vector features :math:`\mathbf{x}_{jc}`
            per node (default: :obj:`0`).
        output (str): ``"vector"`` for :math:`D` (eq. 30), ``"scalar"`` for :math:`S`
            (eq. 29), or ``"both"`` for :math:`[D; S]` stacked along the component axis, the
            layout of scalar features (eq. 15) that
            :class:`~uenn_geo.nn.EquivariantMLP` reads with ``num_scalars=1``; :math:`D` and
            :math:`S` then have separate weights :math:`w` and :math:`w'`, and :math:`\sigma`
            acts on each separately (default: ``"vector"``).
        act (str or nn.Module, optional): :math:`\sigma`, a vector activation (default:
            identity).
        r_min (float): first Gaussian centre in Angstrom (default: :obj:`0.0`).
        eta (float or list[float], optional): Gaussian widths :math:`\eta_b` in
            Angstrom\ :sup:`-2` (default: :class:`~uenn_geo.nn.radial.GaussianBasis`'s
            :math:`1 / (2\Delta^2)`).
        learnable_basis (bool): train :math:`r_{s,b}` and :math:`\eta_b` (default:
            :obj:`False`).
        eps (float): floor of :math:`r_{ij}` in the unit vector (default: :obj:`1e-6`).
        device, dtype: factory arguments; ``dtype`` must be real (default:
            :obj:`torch.get_default_dtype()`).

    Shapes:
        - input: positions :obj:`(N, n)`, edge_index :obj:`(2, E)`, node features
          :obj:`(N, F)`, vector features :obj:`(N, n, F_v)`, shifts :obj:`(E, n)`
        - output: :obj:`(N, n, M_0)` (``"vector"``), :obj:`(N, M_0)` (``"scalar"``),
          :obj:`(N, n + 1, M_0)` (``"both"``)

    Example:
        >>> conv = VectorGaussianConv(1, 16, num_basis=8, cutoff=5.0, dtype=torch.float64)
        >>> conv
        VectorGaussianConv(1 -> 16, num_basis=8, cutoff=5.0, output=vector, float64)
        >>> pos = torch.randn(4, 3, dtype=torch.float64)
        >>> edge_index = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 0, 3, 2]])
        >>> conv(pos, edge_index).shape
        torch.Size([4, 3, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_basis: int,
        cutoff: float,
        vector_channels: int = 0,
        output: str = "vector",
        act: str | nn.Module | None = None,
        r_min: float = 0.0,
        eta: float | Sequence[float] | None = None,
        learnable_basis: bool = False,
        eps: float = DEFAULT_EPS,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(aggr="add", flow="target_to_source", node_dim=0)
        if in_channels < 1 or out_channels < 1 or num_basis < 1:
            raise ValueError(
                f"in_channels, out_channels and num_basis must be >= 1, got in_channels="
                f"{in_channels}, out_channels={out_channels}, num_basis={num_basis}"
            )
        if vector_channels < 0:
            raise ValueError(f"vector_channels must be >= 0, got {vector_channels}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
            raise ValueError(f"cutoff must be a number (Angstrom), got {cutoff!r}")
        if not (math.isfinite(cutoff) and cutoff > r_min):
            raise ValueError(f"cutoff must be finite and > r_min={r_min}, got {cutoff}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"VectorGaussianConv needs a real floating dtype, got {dtype}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.vector_channels = vector_channels
        self.num_basis = num_basis
        self.cutoff = float(cutoff)
        self.output = output
        self.eps = eps
        self.act = resolve_activation(act)
        factory = {"device": device, "dtype": dtype}
        self.basis = GaussianBasis(
            num_basis, r_min, self.cutoff, eta=eta, learnable=learnable_basis, **factory
        )
        shape = (num_basis, in_channels + vector_channels, out_channels)
        if output in ("vector", "both"):
            self.weight = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("weight", None)
        if output in ("scalar", "both"):
            self.scalar_weight = nn.Parameter(torch.empty(shape, **factory))
        else:
            self.register_parameter("scalar_weight", None)
        self.reset_parameters()

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.rs.dtype

    def reset_parameters(self) -> None:
        r"""Normalised Xavier for :math:`w` seen as a :math:`(B (F + F_v), M_0)` matrix."""
        super().reset_parameters()
        self.basis.reset_parameters()
        for w in (self.weight, self.scalar_weight):
            if w is not None:
                xavier_uniform_(w.view(-1, self.out_channels))

    def forward(
        self,
        pos: Tensor,
        edge_index: Tensor,
        v: Tensor | None = None,
        x: Tensor | None = None,
        shifts: Tensor | None = None,
    ) -> Tensor:
        """Run the layer; see the class docstring for shapes and units (Angstrom)."""
        self._check_inputs(pos, edge_index, v, x, shifts)
        if v is None:
            v = pos.new_ones(pos.shape[0], 1)
        # (N, R, B * (F + F_v)): the neighbour sums, R = n vector rows and/or 1 scalar row.
        h = self.propagate(edge_index, pos=pos, v=v, x=x, shifts=shifts)
        n = pos.shape[1]
        num = h.shape[0]
        out_vec, out_sca = None, None
        if self.weight is not None:
            d = h[:, :n, :].reshape(num * n, h.shape[-1]) @ self.weight.view(-1, self.out_channels)
            out_vec = self.act(d.view(num, n, self.out_channels))
        if self.scalar_weight is not None:
            s = h[:, -1, :] @ self.scalar_weight.view(-1, self.out_channels)
            out_sca = self.act(s.unsqueeze(1))
        if out_vec is None:
            return out_sca.squeeze(1)
        if out_sca is None:
            return out_vec
        return concat_scalars(out_vec, out_sca)  # [D; S], eq. 15 layout

    def message(
        self,
        pos_i: Tensor,
        pos_j: Tensor,
        v_j: Tensor,
        x_j: Tensor | None,
        shifts: Tensor | None,
    ) -> Tensor:
        r_vec = pos_j - pos_i
        if shifts is not None:
            r_vec = r_vec + shifts
        r = safe_norm(r_vec, dim=-1, keepdim=True)  # (E, 1)
        unit = r_vec / r.clamp_min(self.eps)  # (E, n)
        # e_ij^b of eq. 31; zero for a zero-length edge (i = j).
        e = self.basis(r) * smooth_cutoff(r, self.cutoff).unsqueeze(-1)  # (E, 1, B)
        e = torch.where(r.unsqueeze(-1) > 0, e, 0.0).squeeze(1)  # (E, B)
        rows: list[Tensor] = []
        if self.weight is not None:
            vec = unit.unsqueeze(-1) * v_j.unsqueeze(1)  # (E, n, F)
            if x_j is not None:
                vec = torch.cat([vec, x_j], dim=-1)  # (E, n, F + F_v)
            rows.append(vec)
        if self.scalar_weight is not None:
            sca = v_j
            if x_j is not None:
                sca = torch.cat([sca, (unit.unsqueeze(-1) * x_j).sum(dim=1)], dim=-1)
            rows.append(sca.unsqueeze(1))  # (E, 1, F + F_v)
        feat = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        # Outer product with the radial basis: (E, R, B, F + F_v) -> (E, R, B * (F + F_v)).
        out = e.view(e.shape[0], 1, self.num_basis, 1) * feat.unsqueeze(2)
        return out.reshape(out.shape[0], out.shape[1], self.num_basis * feat.shape[-1])

    def _check_inputs(
        self,
        pos: Tensor,
        edge_index: Tensor,
        v: Tensor | None,
        x: Tensor | None,
        shifts: Tensor | None,
    ) -> None:
        if pos.dim() != 2 or pos.shape[1] < 1:
            raise ValueError(f"pos must have shape (N, n), got {tuple(pos.shape)}")
        if pos.dtype != self.dtype:
            raise TypeError(
                f"pos has dtype {_dtype_name(pos.dtype)} but the layer is "
                f"{_dtype_name(self.dtype)}; convert pos or build the layer with dtype={pos.dtype}"
            )
        num, n = pos.shape
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype != torch.long:
            raise TypeError(f"edge_index must be torch.long, got {_dtype_name(edge_index.dtype)}")
        if v is not None and (v.shape != (num, self.in_channels) or v.dtype != self.dtype):
            raise ValueError(
                f"node features v must have shape ({num}, {self.in_channels}) and dtype "
                f"{_dtype_name(self.dtype)}, got {tuple(v.shape)} {_dtype_name(v.dtype)}"
            )
        if v is None and self.in_channels != 1:
            raise ValueError(
                f"the layer expects {self.in_channels} node features; pass v of shape "
                f"({num}, {self.in_channels}) (only in_channels=1 defaults to ones)"
            )
        if self.vector_channels and x is None:
            raise ValueError(
                f"the layer expects vector features x of shape ({num}, {n}, "
                f"{self.vector_channels}), got None"
            )
        if x is not None and (x.shape != (num, n, self.vector_channels) or x.dtype != self.dtype):
            raise ValueError(
                f"vector features x must have shape ({num}, {n}, {self.vector_channels}) and "
                f"dtype {_dtype_name(self.dtype)}, got {tuple(x.shape)} {_dtype_name(x.dtype)}"
            )
        if shifts is not None and (
            shifts.shape != (edge_index.shape[1], n) or shifts.dtype != self.dtype
        ):
            raise ValueError(
                f"shifts must have shape ({edge_index.shape[1]}, {n}) and dtype "
                f"{_dtype_name(self.dtype)}, got {tuple(shifts.shape)} "
                f"{_dtype_name(shifts.dtype)}"
            )

    def __repr__(self) -> str:
        parts = [f"{self.in_channels} -> {self.out_channels}"]
        if self.vector_channels:
            parts.append(f"vector_channels={self.vector_channels}")
        parts += [f"num_basis={self.num_basis}", f"cutoff={self.cutoff}"]
        parts.append(f"output={self.output}")
        if not isinstance(self.act, type(resolve_activation(None))):
            parts.append(f"act={self.act!r}")
        parts.append(_dtype_name(self.dtype))
        return f"{self.__class__.__name__}({', '.join(parts)})"
