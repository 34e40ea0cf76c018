r"""PyG's SchNet as a force field in uenn-geo's interface: the baseline of the accuracy tests."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.models._common import check_positions, fit_force_energy_scales, graph_inputs
from uenn_geo.models.forcefield import _resolve_dtype
from uenn_geo.neighbors import edge_vectors
from uenn_geo.nn.linear import _dtype_name

__all__ = ["SchNetForceField", "nearest_edges"]

#: Atomic numbers SchNet's embedding table holds (``Embedding(100, ...)``, 0 = padding).
_NUM_ELEMENTS = 100


def nearest_edges(
    edge_index: Tensor, shifts: Tensor | None, pos: Tensor, k: int
) -> tuple[Tensor, Tensor | None]:
    r"""Keep the :math:`k` nearest neighbours of every centre :math:`i` = ``edge_index[0]``.

    What SchNet's ``max_num_neighbors`` does with torch-cluster (which keeps *some* :math:`k`
    neighbours within the cutoff; here the nearest, ties broken by edge order). The result
    is no longer symmetric.

    Shapes:
        - input: edge_index :obj:`(2, E)`, shifts :obj:`(E, 3)` or :obj:`None`, pos :obj:`(N, 3)`
        - output: edge_index :obj:`(2, E')`, shifts :obj:`(E', 3)`, :math:`E' \leq N k`
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dist = edge_vectors(pos.detach(), edge_index, shifts).norm(dim=-1)
    order = torch.argsort(dist)
    order = order[torch.argsort(edge_index[0, order], stable=True)]
    centre = edge_index[0, order]
    counts = torch.bincount(centre, minlength=pos.shape[0])
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - start[centre]
    keep = order[rank < k]
    return edge_index[:, keep], None if shifts is None else shifts[keep]


class _GivenGraph(nn.Module):
    r"""SchNet's ``interaction_graph``: the edges set by :class:`SchNetForceField` for one call.

    SchNet calls ``interaction_graph(pos, batch)`` and expects ``(edge_index, edge_weight)``
    with messages flowing from ``edge_index[0]`` to ``edge_index[1]`` and
    :math:`w_{ij} = r_{ij}`; our lists have the centre first, so they are flipped. The
    distances are computed here from ``pos``, so forces follow by autograd.
    """

    def __init__(self) -> None:
        super().__init__()
        self.edges: tuple[Tensor, Tensor | None] | None = None

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.edges is None:
            raise RuntimeError("SchNetForceField sets the edges before calling SchNet")
        edge_index, shifts = self.edges
        dist = edge_vectors(pos, edge_index, shifts).norm(dim=-1)
        return edge_index.flip(0), dist


class SchNetForceField(nn.Module):
    r"""PyG's :class:`~torch_geometric.nn.models.SchNet` as a conservative force field.

    SchNet (Schütt et al., 2017) embeds each atom's species, refines the embeddings
    :math:`h_i` with ``num_interactions`` continuous-filter convolutions over the neighbours
    within the cutoff :math:`r_c` and reads out an energy per atom,

    .. math::
        h_i \leftarrow h_i + \mathrm{Lin}\,\mathrm{ssp}\Big(\mathrm{Lin}
            \sum_{j} (\mathrm{Lin}\, h_j) \odot W(e(r_{ij}))\, \tfrac12
            \big(\cos(\pi r_{ij} / r_c) + 1\big)\Big),
        \qquad o = \sum_i \mathrm{Lin}\,\mathrm{ssp}(\mathrm{Lin}\, h_i)

    with :math:`e(r)` ``num_gaussians`` Gaussians on :math:`[0, r_c]` and :math:`W` a
    two-layer filter network. This class runs PyG's own ``SchNet.forward`` (the submodule
    ``schnet``), feeding it our neighbour list (:func:`uenn_geo.neighbors.radius_graph`, so
    free clusters and periodic cells of any size via ``cell``/``pbc``, or ``data.edge_index``
    and ``data.shifts`` when given) through its ``interaction_graph`` argument; PyG's own
    graph needs torch-cluster and knows no periodic images. The energy and the forces are

    .. math::
        E = s_E\, o + \sum_i \mu_{z_i}, \qquad
        \mathbf{F}_i = -\frac{\partial E}{\partial \mathbf{r}_i}

    with the buffers ``energy_scale`` :math:`s_E = s_F \cdot 1` A (eV) and ``energy_shift``
    :math:`\mu_z` (eV per atom of atomic number :math:`z`), set by :meth:`fit_scales`: the
    network then learns an energy whose gradients have unit spread, as
    :class:`~uenn_geo.models.UENNForceField` learns forces of unit spread, so training starts
    with losses of order one. Forces come from :func:`torch.autograd.grad`, with
    ``create_graph`` in training mode (a force loss trains the energy), also under
    :func:`torch.no_grad` (not under :func:`torch.inference_mode`).

    Args:
        cutoff (float): cutoff :math:`r_c` in Angstrom (default: :obj:`10.2`, :math:`3 r_0`
            of argon, as :class:`~uenn_geo.models.UENNForceField`).
        hidden_channels (int): width of the atom embeddings (default: :obj:`64`).
        num_filters (int): width of the continuous filters (default: :obj:`64`).
        num_interactions (int): interaction blocks (default: :obj:`3`).
        num_gaussians (int): Gaussians of the distance expansion (default: :obj:`50`).
        max_num_neighbors (int, optional): keep only the nearest neighbours of each atom
            (:func:`nearest_edges`), as PyG's own graph does with its default of 32; the
            energy is then discontinuous where the :math:`k`-th neighbour changes
            (default: :obj:`None`, every neighbour within the cutoff).
        dtype (str or torch.dtype): real dtype of the parameters and outputs
            (default: ``"float32"``).

    Shapes:
        - input: a PyG ``Data``/``Batch`` with ``pos`` :obj:`(N, 3)` (Angstrom), ``z``
          :obj:`(N)` (atomic numbers 1-99), optional ``batch`` :obj:`(N)`, ``edge_index``
          :obj:`(2, E)`, ``shifts`` :obj:`(E, 3)`, ``cell`` :obj:`(B, 3, 3)`, ``pbc``
          :obj:`(B, 3)`
        - output: forces :obj:`(N, 3)` in eV/A; :meth:`energy` gives :obj:`(B)` in eV

    Example:
        >>> from torch_geometric.data import Data
        >>> model = SchNetForceField(cutoff=5.0, dtype="float64")
        >>> data = Data(pos=torch.randn(4, 3, dtype=torch.float64) * 2, z=torch.full((4,), 18))
        >>> model(data).shape, model.energy(data).shape
        (torch.Size([4, 3]), torch.Size([1]))
    """

    def __init__(
        self,
        cutoff: float = 10.2,
        hidden_channels: int = 64,
        num_filters: int = 64,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        max_num_neighbors: int | None = None,
        dtype: str | torch.dtype | None = "float32",
    ) -> None:
        from torch_geometric.nn.models import SchNet

        super().__init__()
        dtype = _resolve_dtype(dtype)
        if not (math.isfinite(float(cutoff)) and float(cutoff) > 0):
            raise ValueError(f"cutoff must be a finite number > 0 (Angstrom), got {cutoff}")
        sizes = {
            "hidden_channels": hidden_channels,
            "num_filters": num_filters,
            "num_interactions": num_interactions,
            "num_gaussians": num_gaussians,
        }
        # SchNet's readout halves hidden_channels; the Gaussian spacing needs two centres.
        if hidden_channels < 2 or num_filters < 1 or num_interactions < 1 or num_gaussians < 2:
            raise ValueError(
                f"need hidden_channels >= 2, num_filters >= 1, num_interactions >= 1 and "
                f"num_gaussians >= 2, got {sizes}"
            )
        if max_num_neighbors is not None and int(max_num_neighbors) < 1:
            raise ValueError(f"max_num_neighbors must be >= 1 or None, got {max_num_neighbors}")
        self.config: dict[str, Any] = {
            "cutoff": float(cutoff),
            **{k: int(v) for k, v in sizes.items()},
            "max_num_neighbors": None if max_num_neighbors is None else int(max_num_neighbors),
            "dtype": _dtype_name(dtype),
        }
        self.cutoff = float(cutoff)
        self.max_num_neighbors = self.config["max_num_neighbors"]
        self.graph = _GivenGraph()
        self.schnet = SchNet(
            hidden_channels=int(hidden_channels),
            num_filters=int(num_filters),
            num_interactions=int(num_interactions),
            num_gaussians=int(num_gaussians),
            cutoff=self.cutoff,
            interaction_graph=self.graph,
        ).to(dtype)
        self.register_buffer("force_scale", torch.tensor(1.0, dtype=dtype))
        self.register_buffer("energy_scale", torch.tensor(1.0, dtype=dtype))
        self.register_buffer("energy_shift", torch.zeros(_NUM_ELEMENTS, dtype=dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.force_scale.dtype

    def reset_parameters(self) -> None:
        """Re-initialise SchNet's weights (PyG's initialisation); keeps the scales."""
        self.schnet.reset_parameters()

    def _inputs(self, data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, int]:
        """Check ``data``; return ``(pos, z, batch, edge_index, shifts, num_graphs)``."""
        pos = check_positions(data, self.dtype)
        num_atoms = pos.shape[0]
        z = getattr(data, "z", None)
        if not isinstance(z, Tensor) or z.shape != (num_atoms,) or z.is_floating_point():
            got = f"{tuple(z.shape)} {z.dtype}" if isinstance(z, Tensor) else repr(z)
            raise ValueError(
                f"SchNet needs data.z, an integer tensor of shape ({num_atoms},) of atomic "
                f"numbers, got {got}"
            )
        z = z.long()
        if num_atoms and (int(z.min()) < 1 or int(z.max()) >= _NUM_ELEMENTS):
            raise ValueError(
                f"atomic numbers must lie in 1..{_NUM_ELEMENTS - 1} (SchNet's embedding table), "
                f"got {int(z.min())}..{int(z.max())}"
            )
        _, batch, edge_index, shifts, num_graphs = graph_inputs(data, self.dtype, self.cutoff)
        if self.max_num_neighbors is not None:
            edge_index, shifts = nearest_edges(edge_index, shifts, pos, self.max_num_neighbors)
        return pos, z, batch, edge_index, shifts, num_graphs

    def compute_energy(
        self,
        pos: Tensor,
        z: Tensor,
        batch: Tensor,
        edge_index: Tensor,
        shifts: Tensor | None = None,
        num_graphs: int = 1,
    ) -> Tensor:
        r"""Energy per graph in eV :obj:`(B)` on plain tensors, differentiable in ``pos``.

        Args:
            pos (Tensor): positions :obj:`(N, 3)` in Angstrom.
            z (Tensor): atomic numbers :obj:`(N)`.
            batch (Tensor): graph index per atom :obj:`(N)`.
            edge_index (Tensor): pairs :obj:`(2, E)`, ``edge_index[0]`` the centre :math:`i`.
            shifts (Tensor, optional): image shifts :obj:`(E, 3)` in Angstrom.
            num_graphs (int): graphs in the batch (default: :obj:`1`).
        """
        self.graph.edges = (edge_index, shifts)
        try:
            out = self.schnet(z, pos, batch).reshape(-1)  # (max(batch) + 1,)
        finally:
            self.graph.edges = None
        energy = pos.new_zeros(num_graphs)
        energy[: out.shape[0]] = out * self.energy_scale
        return energy.index_add(0, batch, self.energy_shift[z])

    def energy_forces(self, data: Any) -> dict[str, Tensor]:
        r"""Energies :obj:`(B)` in eV and forces :obj:`(N, 3)` in eV/A of every structure.

        The outputs keep their autograd graph only in training mode.
        """
        pos, z, batch, edge_index, shifts, num_graphs = self._inputs(data)
        with torch.enable_grad():
            leaf = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            energy = self.compute_energy(leaf, z, batch, edge_index, shifts, num_graphs)
            (grad,) = torch.autograd.grad(
                energy.sum(), [leaf], create_graph=self.training, allow_unused=True
            )
        forces = -grad if grad is not None else torch.zeros_like(pos)
        if not self.training:
            energy = energy.detach()
        return {"energy": energy, "forces": forces}

    def forward(self, data: Any) -> Tensor:
        r"""Forces in eV/A :obj:`(N, 3)`, :math:`-\partial E / \partial \mathbf{r}`."""
        return self.energy_forces(data)["forces"]

    def energy(self, data: Any) -> Tensor:
        r"""Energy of every structure in eV :obj:`(B)` (differentiable in ``data.pos``)."""
        pos, z, batch, edge_index, shifts, num_graphs = self._inputs(data)
        return self.compute_energy(pos, z, batch, edge_index, shifts, num_graphs)

    @torch.no_grad()
    def fit_scales(self, forces: Tensor | Iterable[Any]) -> float:
        r"""Set ``force_scale``, ``energy_scale`` and (from energies) ``energy_shift``.

        .. math::
            s_F = \sqrt{\frac{1}{3N} \sum_{i, \alpha} F_{i\alpha}^2}, \qquad
            s_E = s_F \cdot 1\,\mathrm{A}

        and, when the graphs carry ``energy`` (eV per structure), :math:`\mu_z` fits
        :math:`E_g \approx \sum_z n_{gz} \mu_z` in least squares (:math:`n_{gz}` = atoms of
        atomic number :math:`z` in structure :math:`g`).

        Args:
            forces (Tensor or iterable): forces :obj:`(N, 3)` in eV/A, or graphs (a PyG data
                set or list of ``Data``) carrying ``forces``, ``z`` and optionally ``energy``.

        Returns:
            The new force scale in eV/A.
        """
        scale, shift = fit_force_energy_scales(
            forces, lambda d: getattr(d, "z", None), _NUM_ELEMENTS
        )
        self.force_scale.fill_(scale)
        self.energy_scale.fill_(scale)
        if shift is not None:
            self.energy_shift.copy_(shift.to(self.energy_shift))
        return scale

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"{self.__class__.__name__}(cutoff={cfg['cutoff']}, "
            f"hidden_channels={cfg['hidden_channels']}, "
            f"num_interactions={cfg['num_interactions']}, {cfg['dtype']})"
        )
