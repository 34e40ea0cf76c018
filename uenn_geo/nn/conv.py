r"""The vector graph layer of Ma & Chan (sec. 4, eqs. 29-33) on PyTorch Geometric."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from uenn_geo.dtypes import dtype_name
from uenn_geo.edges import EDGES_PER_CHUNK, Edges, edge_chunks
from uenn_geo.nn import kernels
from uenn_geo.nn.activation import resolve_activation
from uenn_geo.nn.functional import DEFAULT_EPS, concat_scalars, safe_norm
from uenn_geo.nn.linear import xavier_uniform_
from uenn_geo.nn.radial import GaussianBasis, edge_basis

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
    and the contraction with :math:`w` commute. The layer first forms the neighbour sums
    :math:`h_i = \sum_j \mathrm{feat}_{ij} \otimes e_{ij}` of every atom, of size
    :math:`(n + 1) \times B (F + F_v)`, with the rows :math:`\mathrm{feat}_{ij} =
    [\hat{\mathbf{r}}_{ij} \otimes v_j, \mathbf{x}_j]` (vector form) and
    :math:`[v_j, \hat{\mathbf{r}}_{ij} \cdot \mathbf{x}_j]` (scalar form), and then contracts
    the :math:`N` sums with :math:`w` as one matrix product :math:`(N (n+1), B (F + F_v))
    \times (B (F + F_v), M)`. The message of an edge is the pair
    :math:`(e_{ij}, \mathrm{feat}_{ij})`, :math:`B + (n+1)(F + F_v)` numbers, and
    :meth:`aggregate` never forms their outer product per edge (:math:`(n+1) B (F + F_v)`
    numbers, 13 times more in the second layer of
    :class:`~uenn_geo.models.UENNForceField`): for each atom :math:`h_i = E_i^\top
    \mathrm{Feat}_i` is a matrix product over its edges, computed for all atoms at once by
    :func:`torch.bmm` on chunks of :data:`~uenn_geo.edges.EDGES_PER_CHUNK` edges of one centre
    (zero-padded; :meth:`uenn_geo.edges.Edges.chunked` lays a neighbour list out in chunks once
    for several layers). That is about :math:`E B (n+1)(F + F_v)` multiply-adds, the same as
    the outer product, with a fraction of the memory traffic (measured in docs/bench.md).
    Chunks of fixed size, rather than one row per atom padded to the largest neighbour count,
    keep every shape a function of the input shapes (:func:`torch.compile` needs no graph
    break). Contracting with :math:`w` per edge instead costs :math:`E B (F + F_v) M`
    multiply-adds, :math:`M / (n+1)` times more. The work grows with :math:`F + F_v`; for wide
    inputs, mix them down first with a linear layer (a low-rank factorisation of :math:`w`).

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
        centre_species (int): with :math:`S > 0`, one weight :math:`w^{(z_i)}` per species
            :math:`z_i` of the centre atom, so that with one-hot :math:`v_j` the radial
            functions :math:`\sum_b e^b_{ij} w^{(z_i)}_{b z_j a}` depend on the species pair;
            :meth:`forward` then needs ``centre`` (species indices :obj:`(N)`) (default:
            :obj:`0`, one weight for every centre).
        centre_vectors (bool): also project the centre's own vector features on each bond,
            :math:`p_{ic} = \hat{\mathbf{r}}_{ij} \cdot \mathbf{x}_{ic}`, giving :math:`F_v`
            more columns: :math:`\hat{\mathbf{r}}_{ij}\, p_{ic}` in the vector form and
            :math:`p_{ic}^2` in the scalar form. Summed over :math:`j` with the radial
            functions, the vector columns are the neighbourhood's rank-2 tensor
            :math:`\sum_j e_{ij} \hat{\mathbf{r}}_{ij} \hat{\mathbf{r}}_{ij}^\top` acting on
            :math:`\mathbf{x}_i`: angular information of order two (three-body terms in
            :math:`\cos^2 \theta_{jik}`) with no spherical harmonics and no tensor product
            (default: :obj:`False`; needs ``vector_channels``).
        bond_vectors (bool): also project the neighbours' vector features on the bond,
            :math:`q_{jc} = \hat{\mathbf{r}}_{ij} \cdot \mathbf{x}_{jc}`, and carry them along
            it, giving :math:`F_v` more columns: :math:`\hat{\mathbf{r}}_{ij}\, q_{jc} =
            (\hat{\mathbf{r}}_{ij} \hat{\mathbf{r}}_{ij}^\top) \mathbf{x}_{jc}` in the vector
            form and :math:`q_{jc}^2` in the scalar form: the neighbour's vectors coupled to
            the bond at order two (the path that a spherical tensor product of a vector with
            :math:`Y^2(\hat{\mathbf{r}}_{ij})` contributes to a vector), as two inner
            products (default: :obj:`False`; needs ``vector_channels``).
        bond_cubes (bool): the same coupling at order three, :math:`F_v` more columns:
            :math:`\hat{\mathbf{r}}_{ij}\, q_{jc}^2` in the vector form and :math:`q_{jc}^3`
            in the scalar form (default: :obj:`False`; needs ``vector_channels``).
        bond_quartics (bool): the same coupling at order four, :math:`F_v` more columns:
            :math:`\hat{\mathbf{r}}_{ij}\, q_{jc}^3` in the vector form and :math:`q_{jc}^4`
            in the scalar form; computed by the PyG path only (the fused CPU kernel has no such
            columns) (default: :obj:`False`; needs ``vector_channels``).
        sum_scale (float): :math:`\gamma`, a constant that multiplies the neighbour sums
            :math:`h_i` before the contraction with :math:`w`, e.g. :math:`1 / \sqrt{\bar{n}}`
            for atoms with :math:`\bar{n}` neighbours on average (MACE and NequIP divide
            their sums by :math:`\bar{n}`), so that the layer starts in the same range of
            :math:`\sigma` for dense solids and small molecules (default: :obj:`1.0`).
        radial_hidden (int): with :math:`H > 0`, the radial functions become learned
            functions of the Gaussians, :math:`e_{ij} \to e_{ij} + W_2\, \mathrm{silu}(W_1
            e_{ij})` (:math:`W_1` of shape :math:`(H, B)`, :math:`W_2` of :math:`(B, H)`, no
            biases, :math:`W_2` starting at zero): still zero at :math:`r = 0` and beyond
            :math:`r_c`, as smooth as :math:`e`, and contracted with :math:`w` as before; the
            role of the radial MLPs of NequIP and MACE (default: :obj:`0`, none).
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
        centre_species: int = 0,
        centre_vectors: bool = False,
        bond_vectors: bool = False,
        radial_hidden: int = 0,
        bond_cubes: bool = False,
        sum_scale: float = 1.0,
        bond_quartics: bool = False,
    ) -> None:
        super().__init__(aggr="add", flow="target_to_source", node_dim=0)
        if in_channels < 1 or out_channels < 1 or num_basis < 1:
            raise ValueError(
                f"in_channels, out_channels and num_basis must be >= 1, got in_channels="
                f"{in_channels}, out_channels={out_channels}, num_basis={num_basis}"
            )
        if vector_channels < 0:
            raise ValueError(f"vector_channels must be >= 0, got {vector_channels}")
        if centre_species < 0:
            raise ValueError(f"centre_species must be >= 0, got {centre_species}")
        if radial_hidden < 0:
            raise ValueError(f"radial_hidden must be >= 0 (0: none), got {radial_hidden}")
        columns = {"centre_vectors": centre_vectors, "bond_vectors": bond_vectors}
        columns.update(bond_cubes=bond_cubes, bond_quartics=bond_quartics)
        for name, flag in columns.items():
            if flag and not vector_channels:
                raise ValueError(f"{name} needs vector features: set vector_channels >= 1")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
            raise ValueError(f"cutoff must be a number (Angstrom), got {cutoff!r}")
        if not (math.isfinite(cutoff) and cutoff > r_min):
            raise ValueError(f"cutoff must be finite and > r_min={r_min}, got {cutoff}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if not (math.isfinite(sum_scale) and sum_scale > 0):
            raise ValueError(f"sum_scale must be a positive number, got {sum_scale}")
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
        self.centre_species = int(centre_species)
        self.centre_vectors = bool(centre_vectors)
        self.bond_vectors = bool(bond_vectors)
        self.bond_cubes = bool(bond_cubes)
        self.bond_quartics = bool(bond_quartics)
        self.sum_scale = float(sum_scale)
        self.act = resolve_activation(act)
        factory = {"device": device, "dtype": dtype}
        self.basis = GaussianBasis(
            num_basis, r_min, self.cutoff, eta=eta, learnable=learnable_basis, **factory
        )
        self.radial_hidden = int(radial_hidden)
        radial = None
        if self.radial_hidden:  # e -> e + W_2 silu(W_1 e): zero wherever e is (r = 0, r >= r_c)
            radial = nn.Sequential(
                nn.Linear(num_basis, self.radial_hidden, bias=False, **factory),
                nn.SiLU(),
                nn.Linear(self.radial_hidden, num_basis, bias=False, **factory),
            )
        self.register_module("radial", radial)
        #: Use the fused CPU kernel of :mod:`uenn_geo.nn.kernels` for the neighbour sums where
        #: no second derivative can follow (no gradient through them, or eval mode):
        #: :obj:`None` (default) decides at the first such eager call (building the kernel if
        #: needed), :obj:`False` never. Not part of the model: the numbers are the same (to
        #: float round-off) either way.
        self.kernel: bool | None = None
        #: Also inside compiled graphs that need gradients (set for the duration of a call by
        #: :func:`uenn_geo.nn.kernels.differentiated_outside`).
        self.kernel_compiled_grad = False
        shape = (num_basis, self.feature_width, out_channels)
        if self.centre_species:
            shape = (self.centre_species, *shape)
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

    @property
    def feature_width(self) -> int:
        r"""Columns of :math:`\mathrm{feat}_{ij}`: :math:`F + F_v`, plus :math:`F_v` for each of
        ``centre_vectors``, ``bond_vectors``, ``bond_cubes`` and ``bond_quartics``."""
        extra = (self.centre_vectors, self.bond_vectors, self.bond_cubes, self.bond_quartics)
        return self.in_channels + self.vector_channels * (1 + sum(map(int, extra)))

    def reset_parameters(self) -> None:
        r"""Normalised Xavier for :math:`w` seen as a :math:`(B (F + F_v), M_0)` matrix."""
        super().reset_parameters()
        self.basis.reset_parameters()
        if self.radial is not None:  # starts as the plain basis (zero correction)
            self.radial[0].reset_parameters()
            nn.init.zeros_(self.radial[2].weight)
        for w in (self.weight, self.scalar_weight):
            if w is not None:
                # one (B (F + F_v), M_0) matrix per centre species (or one for all)
                rows = self.num_basis * self.feature_width
                per_centre = w.view(-1, rows, self.out_channels)
                for z in range(per_centre.shape[0]):
                    xavier_uniform_(per_centre[z])

    def forward(
        self,
        pos: Tensor,
        edges: Edges | Tensor,
        v: Tensor | None = None,
        x: Tensor | None = None,
        shifts: Tensor | None = None,
        centre: Tensor | None = None,
    ) -> Tensor:
        """Run the layer; see the class docstring for shapes and units (Angstrom).

        ``edges`` is an :class:`~uenn_geo.edges.Edges` (pairs, shifts and layout), or, as in
        PyG, a plain ``edge_index`` :obj:`(2, E)` with its ``shifts``; ``centre`` the species
        index of every atom (layers with ``centre_species``).
        """
        return self.contract(self.neighbour_sums(pos, edges, v, x, shifts), centre)

    def neighbour_sums(
        self,
        pos: Tensor,
        edges: Edges | Tensor,
        v: Tensor | None = None,
        x: Tensor | None = None,
        shifts: Tensor | None = None,
    ) -> Tensor:
        r"""The neighbour sums :math:`h_i = \sum_j \mathrm{feat}_{ij} \otimes e_{ij}`.

        The first half of :meth:`forward`: :obj:`(N, R, B (F + F_v))`, with the :math:`n`
        vector rows (vector form) and/or the scalar row (scalar form) in that order, and the
        last axis ordered as :math:`(b, d)`. :meth:`contract` turns them into the output;
        other linear readouts of the same sums (e.g. the pair term of
        :class:`~uenn_geo.models.UENNForceField`) cost no further pass over the edges.
        """
        if isinstance(edges, Tensor):
            edges = Edges(edges, shifts, self.cutoff)
        elif shifts is not None:
            raise ValueError("pass the shifts inside the Edges, not beside them")
        self._check_inputs(pos, edges.index, v, x, edges.shifts)
        if edges.chunk and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            edges.check(pos.shape[0])
        if v is None:
            v = pos.new_ones(pos.shape[0], 1)
        if kernels.takes_kernel(self, pos, v, x, edges.shifts):
            return kernels.neighbour_sums(
                pos, edges.index, edges.shifts, v, x, self.basis.rs, self.basis.eta,
                self.cutoff, self.eps, self.weight is not None, self.scalar_weight is not None,
                self.centre_vectors, self.bond_vectors, self.bond_cubes,
            )  # fmt: skip
        return self.propagate(
            edges.index, pos=pos, v=v, x=x, shifts=edges.shifts, chunk=edges.chunk
        )

    def contract(self, h: Tensor, centre: Tensor | None = None) -> Tensor:
        r"""Contract the neighbour sums of :meth:`neighbour_sums` with :math:`w` (and
        :math:`w'`) and apply :math:`\sigma`: the output of :meth:`forward`.

        With ``centre_species``, ``centre`` :obj:`(N)` picks the weight of each atom."""
        if self.centre_species and (centre is None or centre.shape != h.shape[:1]):
            raise ValueError(
                f"this layer has weights per centre species ({self.centre_species}); pass "
                f"centre, the species index of each of the {h.shape[0]} atoms"
            )
        if self.sum_scale != 1.0:
            h = h * self.sum_scale
        n = h.shape[1] - (1 if self.weight is not None and self.scalar_weight is not None else 0)
        out_vec, out_sca = None, None
        if self.weight is not None:
            out_vec = self.act(self._matmul(h[:, :n, :], self.weight, centre))
        if self.scalar_weight is not None:
            out_sca = self.act(self._matmul(h[:, -1:, :], self.scalar_weight, centre))
        if out_vec is None:
            return out_sca.squeeze(1)
        if out_sca is None:
            return out_vec
        return concat_scalars(out_vec, out_sca)  # [D; S], eq. 15 layout

    def _matmul(self, h: Tensor, weight: Tensor, centre: Tensor | None) -> Tensor:
        """Rows :obj:`(N, R, K)` times the weight :obj:`(K, M)` (of each atom's centre)."""
        num, rows, width = h.shape
        if not self.centre_species:
            out = h.reshape(num * rows, width) @ weight.view(width, self.out_channels)
            return out.view(num, rows, self.out_channels)
        # every centre weight at once (S small), then each atom's own: (N, R, S, M) -> (N, R, M)
        w = weight.view(self.centre_species, width, -1).transpose(0, 1).reshape(width, -1)
        out = h.reshape(num * rows, width) @ w
        out = out.view(num, rows, self.centre_species, self.out_channels)
        index = centre.view(num, 1, 1, 1).expand(num, rows, 1, self.out_channels)
        return out.gather(2, index).squeeze(2)

    def message(
        self,
        pos_i: Tensor,
        pos_j: Tensor,
        v_j: Tensor,
        x_i: Tensor | None,
        x_j: Tensor | None,
        shifts: Tensor | None,
    ) -> Tensor:
        r_vec = pos_j - pos_i
        if shifts is not None:
            r_vec = r_vec + shifts
        r = safe_norm(r_vec, dim=-1, keepdim=True)  # (E, 1)
        unit = r_vec / r.clamp_min(self.eps)  # (E, n)
        # e_ij^b of eq. 31; zero for a zero-length edge (i = j).
        e = edge_basis(r.squeeze(-1), self.basis, self.cutoff)  # (E, B)
        if self.radial is not None:  # learned radial functions of the Gaussians
            e = e + self.radial(e)
        # feat_ij = [d v_j, x_j]: d_k = (r_ij / r_ij)_k in the n vector rows, d = 1 in the
        # scalar row, where the vector features enter as (r_ij / r_ij) . x_j.
        dirs: list[Tensor] = []
        x_rows: list[Tensor] = []
        # centre_vectors: the centre's own vectors projected on the bond, p = r_hat . x_i,
        # enter as r_hat p (vector rows) and p^2 (scalar row): the rank-2 tensor
        # sum_j e_ij r_hat r_hat^T of the neighbourhood acting on x_i, with no tensor product.
        # bond_vectors: the neighbour's vectors projected on the bond, q = r_hat . x_j, enter
        # as r_hat q (vector rows) and q^2 (scalar row): (r_hat r_hat^T) x_j, the order-two
        # coupling of a neighbour's vector with the bond direction.
        proj = None
        if self.centre_vectors and x_i is not None:
            proj = (unit.unsqueeze(-1) * x_i).sum(dim=1, keepdim=True)  # (E, 1, F_v)
        along = None
        if x_j is not None and (
            self.scalar_weight is not None
            or self.bond_vectors
            or self.bond_cubes
            or self.bond_quartics
        ):
            along = (unit.unsqueeze(-1) * x_j).sum(dim=1, keepdim=True)  # (E, 1, F_v)
        if self.weight is not None:
            dirs.append(unit)
            if x_j is not None:
                extra = [] if proj is None else [unit.unsqueeze(-1) * proj]
                if self.bond_vectors:
                    extra.append(unit.unsqueeze(-1) * along)
                if self.bond_cubes:
                    extra.append(unit.unsqueeze(-1) * along.square())
                if self.bond_quartics:
                    extra.append(unit.unsqueeze(-1) * along.pow(3))
                x_rows.append(torch.cat([x_j, *extra], dim=-1) if extra else x_j)
        if self.scalar_weight is not None:
            dirs.append(torch.ones_like(r))
            if x_j is not None:
                extra = [] if proj is None else [proj.square()]
                if self.bond_vectors:
                    extra.append(along.square())
                if self.bond_cubes:
                    extra.append(along.pow(3))
                if self.bond_quartics:
                    extra.append(along.square().square())
                x_rows.append(torch.cat([along, *extra], dim=-1) if extra else along)
        d = dirs[0] if len(dirs) == 1 else torch.cat(dirs, dim=-1)  # (E, R)
        feat = d.unsqueeze(-1) * v_j.unsqueeze(1)  # (E, R, F)
        if x_j is not None:
            x_all = x_rows[0] if len(x_rows) == 1 else torch.cat(x_rows, dim=1)
            feat = torch.cat([feat, x_all], dim=-1)  # (E, R, F + F_v)
        return e, feat  # (E, B), (E, R, F + F_v): the factors of m_ij = feat_ij (x) e_ij

    def aggregate(
        self,
        inputs: tuple[Tensor, Tensor],
        index: Tensor,
        dim_size: int | None = None,
        chunk: int = 0,
    ) -> Tensor:
        r"""Sum the messages :math:`\mathrm{feat}_{ij} \otimes e_{ij}` over the neighbours.

        Per atom :math:`i` the sum is the matrix product
        :math:`E_i^\top \mathrm{Feat}_i` of its edges' rows, done for chunks of
        :data:`~uenn_geo.edges.EDGES_PER_CHUNK` edges of one centre as one :func:`torch.bmm`;
        the chunks are then added up per atom. The outer product is never formed per edge.

        Shapes:
            :obj:`(E, B)` and :obj:`(E, R, F + F_v)` -> :obj:`(N, R, B (F + F_v))`
        """
        e, feat = inputs
        num_edges, rows, width = feat.shape
        if dim_size is None:
            raise ValueError("aggregate needs dim_size, the number N of atoms")
        num_nodes = dim_size
        if isinstance(num_edges, int) and num_edges == 0:  # no neighbours (atoms alone)
            return feat.new_zeros(num_nodes, rows, self.num_basis * width)
        if chunk:  # the edges come in chunks already (Edges.chunked): views, no copies
            e_pad = e.view(-1, chunk, self.num_basis)
            feat_pad = feat.reshape(-1, chunk, rows * width)
            chunk_node = index.reshape(-1, chunk)[:, 0]
            num_chunks = chunk_node.shape[0]
        else:
            place, slot, chunk_node = edge_chunks(index, num_nodes, EDGES_PER_CHUNK)
            num_chunks = chunk_node.shape[0]
            # Zero-padded (C, K, .) copies of the factors (in place: the zeros are fresh).
            e_pad = e.new_zeros(num_chunks, EDGES_PER_CHUNK, self.num_basis)
            e_pad.index_put_((place, slot), e)
            feat_pad = feat.new_zeros(num_chunks, EDGES_PER_CHUNK, rows * width)
            feat_pad.index_put_((place, slot), feat.reshape(num_edges, rows * width))
        size = self.num_basis * rows * width
        if rows * width <= self.num_basis:
            # (C, R (F + F_v), B): 2x faster than its transpose for few feature columns (the
            # first layer; CPU, one thread)
            h = torch.bmm(feat_pad.transpose(1, 2), e_pad)
            out = h.new_zeros(num_nodes, size).index_add(0, chunk_node, h.view(num_chunks, size))
            out = out.view(num_nodes, rows, width, self.num_basis).transpose(2, 3)
        else:
            # (C, B, R (F + F_v)): for many columns this order is faster, and its backward
            # gives the gradient of the wide factor contiguous (no transposing copy)
            h = torch.bmm(e_pad.transpose(1, 2), feat_pad)
            out = h.new_zeros(num_nodes, size).index_add(0, chunk_node, h.view(num_chunks, size))
            out = out.view(num_nodes, self.num_basis, rows, width).transpose(1, 2)
        return out.reshape(num_nodes, rows, self.num_basis * width)

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
                f"pos has dtype {dtype_name(pos.dtype)} but the layer is "
                f"{dtype_name(self.dtype)}; convert pos or build the layer with dtype={pos.dtype}"
            )
        num, n = pos.shape
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype != torch.long:
            raise TypeError(f"edge_index must be torch.long, got {dtype_name(edge_index.dtype)}")
        if v is not None and (v.shape != (num, self.in_channels) or v.dtype != self.dtype):
            raise ValueError(
                f"node features v must have shape ({num}, {self.in_channels}) and dtype "
                f"{dtype_name(self.dtype)}, got {tuple(v.shape)} {dtype_name(v.dtype)}"
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
                f"dtype {dtype_name(self.dtype)}, got {tuple(x.shape)} {dtype_name(x.dtype)}"
            )
        if shifts is not None and (
            shifts.shape != (edge_index.shape[1], n) or shifts.dtype != self.dtype
        ):
            raise ValueError(
                f"shifts must have shape ({edge_index.shape[1]}, {n}) and dtype "
                f"{dtype_name(self.dtype)}, got {tuple(shifts.shape)} "
                f"{dtype_name(shifts.dtype)}"
            )

    def __repr__(self) -> str:
        parts = [f"{self.in_channels} -> {self.out_channels}"]
        if self.vector_channels:
            parts.append(f"vector_channels={self.vector_channels}")
        parts += [f"num_basis={self.num_basis}", f"cutoff={self.cutoff}"]
        if self.centre_species:
            parts.append(f"centre_species={self.centre_species}")
        if self.centre_vectors:
            parts.append("centre_vectors=True")
        if self.bond_vectors:
            parts.append("bond_vectors=True")
        if self.bond_cubes:
            parts.append("bond_cubes=True")
        if self.bond_quartics:
            parts.append("bond_quartics=True")
        if self.radial_hidden:
            parts.append(f"radial_hidden={self.radial_hidden}")
        if self.sum_scale != 1.0:
            parts.append(f"sum_scale={self.sum_scale:.4g}")
        parts.append(f"output={self.output}")
        if not isinstance(self.act, type(resolve_activation(None))):
            parts.append(f"act={self.act!r}")
        parts.append(dtype_name(self.dtype))
        return f"{self.__class__.__name__}({', '.join(parts)})"
