r"""PyG's SchNet as a force field in uenn-geo's interface: the baseline of the accuracy tests."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.dtypes import dtype_name, resolve_dtype
from uenn_geo.edges import Edges, nearest_edges
from uenn_geo.models.base import ForceModel, batch_of, check_positions
from uenn_geo.models.response import cells_of, energy_response
from uenn_geo.models.scales import fit_force_energy_scales

__all__ = ["SchNetForceField"]

#: Atomic numbers SchNet's embedding table holds (``Embedding(100, ...)``, 0 = padding).
_NUM_ELEMENTS = 100


class _GivenGraph(nn.Module):
    r"""SchNet's ``interaction_graph``: the edges set by :class:`SchNetForceField` for one call.

    SchNet calls ``interaction_graph(pos, batch)`` and expects ``(edge_index, edge_weight)``
    with messages flowing from ``edge_index[0]`` to ``edge_index[1]`` and
    :math:`w_{ij} = r_{ij}`; our lists have the centre first, so they are flipped. The
    distances are computed here from ``pos``, so forces follow by autograd.
    """

    def __init__(self) -> None:
        super().__init__()
        self.given: Edges | None = None

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.given is None:
            raise RuntimeError("SchNetForceField sets the edges before calling SchNet")
        # SchNet's cosine cutoff is 0 at r_c but not beyond: pairs a list holds past the
        # cutoff (a Verlet list's skin) sit at r_c, where their filters vanish
        dist = self.given.vectors(pos).norm(dim=-1).clamp(max=self.given.cutoff)
        return self.given.index.flip(0), dist


class SchNetForceField(ForceModel):
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
    free clusters and periodic cells of any size via ``cell``/``pbc``, or given
    :class:`~uenn_geo.edges.Edges`) through its ``interaction_graph`` argument; PyG's own
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
        - output: forces :obj:`(N, 3)` in eV/A; :meth:`energy_forces` also gives energies
          :obj:`(B)` in eV and stresses :obj:`(B, 3, 3)` in eV/A\ :sup:`3`

    Example:
        >>> from torch_geometric.data import Data
        >>> model = SchNetForceField(cutoff=5.0, dtype="float64")
        >>> data = Data(pos=torch.randn(4, 3, dtype=torch.float64) * 2, z=torch.full((4,), 18))
        >>> model(data).shape, model.energy_forces(data)["energy"].shape
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
        dtype = resolve_dtype(dtype)
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
            "dtype": dtype_name(dtype),
        }
        self.cutoff = float(cutoff)
        self.has_energy = True
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
        # float64, as the energies: totals of thousands of eV
        self.register_buffer("energy_shift", torch.zeros(_NUM_ELEMENTS, dtype=torch.float64))

    def reset_parameters(self) -> None:
        """Re-initialise SchNet's weights (PyG's initialisation); keeps the scales."""
        self.schnet.reset_parameters()

    def _atomic_numbers(self, data: Any, num_atoms: int) -> Tensor:
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
        return z

    def compute_energy(
        self, pos: Tensor, z: Tensor, edges: Edges, batch: Tensor, num_graphs: int = 1
    ) -> Tensor:
        r"""Energy per graph in eV :obj:`(B)` on plain tensors, differentiable in ``pos``
        and in the shifts of ``edges``.

        Args:
            pos (Tensor): positions :obj:`(N, 3)` in Angstrom.
            z (Tensor): atomic numbers :obj:`(N)`.
            edges (Edges): the neighbour list.
            batch (Tensor): graph index per atom :obj:`(N)`.
            num_graphs (int): graphs in the batch (default: :obj:`1`).
        """
        self.graph.given = edges
        try:
            out = self.schnet(z, pos, batch).reshape(-1)  # (max(batch) + 1,)
        finally:
            self.graph.given = None
        energy = pos.new_zeros(num_graphs, dtype=torch.float64)
        energy[: out.shape[0]] = out * self.energy_scale
        return energy.index_add(0, batch, self.energy_shift[z])

    def energy_forces(
        self, data: Any, edges: Edges | None = None, compute_stress: bool = False
    ) -> dict[str, Tensor | None]:
        r"""Energies :obj:`(B)` in eV, forces :obj:`(N, 3)` in eV/A and, with
        ``compute_stress``, stresses :obj:`(B, 3, 3)` in eV/A\ :sup:`3`
        (:mod:`uenn_geo.models.response`)."""
        pos = check_positions(data, self.dtype)
        z = self._atomic_numbers(data, pos.shape[0])
        edges = self.edges(data, edges).plain()  # the chunks' padding would be pairs at r = 0
        if self.max_num_neighbors is not None:
            edges = nearest_edges(edges, pos, self.max_num_neighbors)
        batch, num_graphs = batch_of(data, pos.shape[0], pos.device)
        cell = cells_of(getattr(data, "cell", None), num_graphs, pos) if compute_stress else None
        return energy_response(
            lambda x, e: self.compute_energy(x, z, e, batch, num_graphs),
            pos,
            edges,
            batch,
            cell,
            training=self.training,
        )

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
