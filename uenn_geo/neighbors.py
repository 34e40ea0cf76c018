r"""Neighbour lists within a cutoff for free clusters and periodic cells (Ma & Chan, sec. 4).

The vector graph layer (eqs. 29-31) sums over the neighbours :math:`j` of atom :math:`i` that lie
within the cutoff :math:`r_c`. This module builds that list with `vesin
<https://github.com/Luthaf/vesin>`_ (a cell-list neighbour search in C++), one graph at a time,
for PyG mini-batches.

Conventions (units: Angstrom):

* Column :math:`e` of ``edge_index`` is the pair :math:`(i, j)` with
  :math:`i` = ``edge_index[0, e]`` the centre and :math:`j` = ``edge_index[1, e]`` its neighbour.
  The list is *full*: :math:`(j, i)` is present whenever :math:`(i, j)` is.
* The edge vector is

  .. math::
      \mathbf{r}_{ij} = \mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_e, \qquad
      \mathbf{s}_e = \mathbf{S}_e \mathbf{C},

  where :math:`\mathbf{C}` is the cell (rows are the lattice vectors) and
  :math:`\mathbf{S}_e \in \mathbb{Z}^3` the cell shift of the image of :math:`j`; ``shifts``
  holds :math:`\mathbf{s}_e` in Cartesian coordinates. Pairs with :math:`|\mathbf{r}_{ij}| < r_c`
  (strictly) are kept.
* The pair of an atom with itself at zero shift is never listed; an atom's own periodic images
  (:math:`i = j`, :math:`\mathbf{S}_e \neq 0`) are, so cells smaller than :math:`2 r_c` are
  handled correctly.
* With PyG's ``MessagePassing``, use ``flow="target_to_source"`` so that messages are aggregated
  at :math:`i` = ``edge_index[0]`` and ``x_j`` = ``x[edge_index[1]]``.

Which code path runs: every graph with 3-dimensional positions (periodic in any subset of
directions, or free) goes through ``vesin.NeighborList``, which supports mixed periodicity and
cells smaller than twice the cutoff (checked against a brute-force image loop in the tests).
Free clusters of dimension :math:`n < 3` are padded with zero coordinates and also go through
vesin; free clusters of dimension :math:`n > 3`, which vesin cannot take, use a dense
:math:`O(N^2)` torch search (:func:`_brute_force_free`). Batches of small free clusters
(``num_graphs * max_atoms**2 <= DENSE_PAIR_LIMIT``, e.g. a training batch of molecules) are
searched all at once with a padded distance matrix on the device of ``pos``
(:func:`_dense_free`), instead of one vesin call per graph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

__all__ = ["radius_graph", "edge_vectors", "RadiusGraph"]


def _as_cells(cell: Tensor | None, pos: Tensor) -> Tensor | None:
    r"""Validate ``cell`` and return it as ``(B, 3, 3)`` in the dtype of ``pos``."""
    if cell is None:
        return None
    if not isinstance(cell, Tensor):
        cell = torch.as_tensor(cell)
    if cell.is_complex() or not cell.is_floating_point():
        raise TypeError(f"cell must be a real floating-point tensor, got dtype {cell.dtype}")
    if cell.dim() == 2 and cell.shape[1] == 3 and cell.shape[0] % 3 == 0 and cell.shape[0] > 0:
        # (3, 3) for one graph, or (3 B, 3) as PyG collates per-graph (3, 3) cells.
        cell = cell.reshape(-1, 3, 3)
    if cell.dim() != 3 or cell.shape[1:] != (3, 3):
        raise ValueError(
            f"cell must have shape (3, 3), (B, 3, 3) or (3 B, 3), got {tuple(cell.shape)}"
        )
    if not bool(torch.isfinite(cell).all()):
        raise ValueError("cell contains NaN or Inf entries")
    return cell.to(device=pos.device, dtype=pos.dtype)


def _as_pbc(pbc: Tensor | None, num_graphs: int, has_cell: bool) -> Tensor:
    r"""Validate ``pbc`` and return it as a ``(B, 3)`` bool tensor on the CPU."""
    if pbc is None:
        # A cell without periodicity flags means periodic in every direction.
        return torch.full((num_graphs, 3), has_cell, dtype=torch.bool)
    pbc = torch.as_tensor(pbc)
    if pbc.dtype != torch.bool:
        raise TypeError(f"pbc must be a bool tensor, got dtype {pbc.dtype}")
    if pbc.dim() == 1 and pbc.numel() % 3 == 0 and pbc.numel() > 0:
        pbc = pbc.reshape(-1, 3)
    if pbc.dim() != 2 or pbc.shape[1] != 3:
        raise ValueError(f"pbc must have shape (3,), (B, 3) or (3 B,), got {tuple(pbc.shape)}")
    if pbc.shape[0] == 1 and num_graphs > 1:
        pbc = pbc.expand(num_graphs, 3)
    if pbc.shape[0] != num_graphs:
        raise ValueError(f"pbc has {pbc.shape[0]} rows but there are {num_graphs} graphs")
    if not has_cell and bool(pbc.any()):
        raise ValueError("pbc is True in some direction but no cell was given")
    return pbc.cpu()


def _brute_force_free(pos: Tensor, r_cut: float, chunk: int = 2048) -> Tensor:
    r"""All pairs :math:`i \neq j` with :math:`|\mathbf{r}_j - \mathbf{r}_i| < r_c`, any dimension.

    Dense :math:`O(N^2)` search in row chunks of ``chunk`` centres. Returns ``(2, E)`` local
    indices sorted by :math:`i`, then :math:`j`.
    """
    pos = pos.to(torch.float64)
    n = pos.shape[0]
    rows = []
    for start in range(0, n, chunk):
        d = torch.cdist(pos[start : start + chunk], pos)
        mask = d < r_cut
        idx = torch.arange(start, min(start + chunk, n), device=pos.device)
        mask[idx - start, idx] = False
        i, j = mask.nonzero(as_tuple=True)
        rows.append(torch.stack([i + start, j]))
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    return torch.cat(rows, dim=1)


#: Largest ``num_graphs * max_atoms**2`` searched with the dense, vectorised path.
DENSE_PAIR_LIMIT = 1_000_000


def _dense_free(
    pos: Tensor, batch: Tensor, counts: list[int], r_cut: float
) -> tuple[Tensor, Tensor]:
    """All pairs within each free cluster at once (small clusters, e.g. a training batch).

    One padded :obj:`(B, n_max, n_max)` distance computation on the device of ``pos``
    replaces a vesin call per graph; same edges and order as the vesin path.
    """
    device = pos.device
    num_graphs, n_max = len(counts), max(counts)
    order = torch.argsort(batch, stable=True).to(device)
    b = batch.to(device)[order]
    starts = torch.cumsum(torch.tensor([0, *counts[:-1]], device=device), 0)
    slot = b * n_max + torch.arange(order.numel(), device=device) - starts[b]
    dense = pos.new_zeros(num_graphs * n_max, pos.shape[1])
    dense[slot] = pos.detach()[order]
    valid = torch.zeros(num_graphs * n_max, dtype=torch.bool, device=device)
    valid[slot] = True
    atom_at = torch.zeros(num_graphs * n_max, dtype=torch.long, device=device)
    atom_at[slot] = order
    dense = dense.view(num_graphs, n_max, -1)
    valid = valid.view(num_graphs, n_max)
    d2 = (dense.unsqueeze(2) - dense.unsqueeze(1)).square().sum(-1)
    eye = torch.eye(n_max, dtype=torch.bool, device=device)
    adj = (d2 < r_cut * r_cut) & valid.unsqueeze(2) & valid.unsqueeze(1) & ~eye
    g, i, j = adj.nonzero(as_tuple=True)
    edge_index = torch.stack([atom_at[g * n_max + i], atom_at[g * n_max + j]])
    return edge_index, pos.new_zeros(edge_index.shape[1], pos.shape[1])


def radius_graph(
    pos: Tensor,
    r_cut: float,
    batch: Tensor | None = None,
    cell: Tensor | None = None,
    pbc: Tensor | None = None,
    return_shifts: bool = True,
) -> tuple[Tensor, Tensor] | Tensor:
    r"""Full neighbour list of every atom within the cutoff :math:`r_c`, with periodic images.

    .. math::
        \mathcal{E} = \{(i, j, \mathbf{S}) : |\mathbf{r}_j - \mathbf{r}_i + \mathbf{S}\mathbf{C}|
        < r_c,\ (i, \mathbf{S}) \neq (j, \mathbf{0})\}

    (the neighbour set of eqs. 29-31). Positions are detached and the search runs in float64 on
    the CPU; ``shifts`` is computed as :math:`\mathbf{S}\mathbf{C}` from the given ``cell``, so it
    stays differentiable with respect to the cell (useful for stress). Graphs of a batch are
    searched one at a time and their indices offset to the global numbering.

    Args:
        pos (Tensor): Positions in Angstrom. Free clusters (no ``cell``) may have any dimension
            :math:`n \geq 1`; periodic systems need :math:`n = 3`.
        r_cut (float): Cutoff radius :math:`r_c > 0` in Angstrom.
        batch (Tensor, optional): Graph index of each atom (PyG ``batch`` vector).
            (default: :obj:`None`, a single graph)
        cell (Tensor, optional): Lattice vectors as rows, ``(B, 3, 3)``; ``(3, 3)`` for a single
            graph and PyG's collated ``(3 B, 3)`` are accepted too. Rows of non-periodic
            directions are ignored. (default: :obj:`None`, every graph a free cluster)
        pbc (Tensor, optional): Bool periodicity flags per graph and direction, ``(B, 3)``;
            ``(3,)`` is broadcast to all graphs and PyG's collated ``(3 B,)`` is accepted. A graph
            with all flags False is a free cluster. (default: :obj:`None`, all True when
            ``cell`` is given, all False otherwise)
        return_shifts (bool, optional): If False, return only ``edge_index``.
            (default: :obj:`True`)

    Returns:
        ``(edge_index, shifts)``: ``edge_index`` (long, ``(2, E)``) with ``edge_index[0]`` the
        centre :math:`i` and ``edge_index[1]`` the neighbour :math:`j`; ``shifts`` (dtype and
        device of ``pos``, ``(E, n)``) the Cartesian image shifts in Angstrom, zero for free
        clusters. Edges are grouped by graph and sorted by :math:`i` within a graph.

    Shapes:
        - **input:** pos :math:`(N, n)`, batch :math:`(N)`, cell :math:`(B, 3, 3)`,
          pbc :math:`(B, 3)`
        - **output:** edge_index :math:`(2, E)`, shifts :math:`(E, n)`

    Example:
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
        >>> edge_index, shifts = radius_graph(pos, r_cut=2.0)
        >>> edge_index.tolist()
        [[0, 1], [1, 0]]
    """
    _check_pos(pos)
    r_cut = _check_cutoff(r_cut)
    num_atoms, dim = pos.shape
    cells = _as_cells(cell, pos)
    if cells is not None and dim != 3:
        raise ValueError(
            f"periodic cells need 3-dimensional positions, got pos of shape {(num_atoms, dim)}"
        )
    batch_cpu, num_graphs = _graphs(batch, num_atoms, cells)
    pbcs = _as_pbc(pbc, num_graphs, cells is not None)
    cells_np = None if cells is None else cells.detach().cpu().to(torch.float64).numpy()
    if cells_np is not None:
        _check_lattices(cells_np, pbcs)

    counts = torch.bincount(batch_cpu, minlength=num_graphs).tolist()
    free = cells is None or not bool(pbcs.any())
    if free and num_atoms > 0 and num_graphs * max(counts) ** 2 <= DENSE_PAIR_LIMIT:
        edge_index, shifts_all = _dense_free(pos, batch_cpu, counts, r_cut)
    else:
        edge_index, shifts_all = _search(pos, r_cut, batch_cpu, counts, cells, cells_np, pbcs)
    return (edge_index, shifts_all) if return_shifts else edge_index


def _check_pos(pos: Tensor) -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    if pos.is_complex() or not pos.is_floating_point():
        raise TypeError(f"pos must be a real floating-point tensor, got dtype {pos.dtype}")
    if pos.dim() != 2 or pos.shape[1] < 1:
        raise ValueError(f"pos must have shape (N, n) with n >= 1, got {tuple(pos.shape)}")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("pos contains NaN or Inf entries")


def _check_cutoff(r_cut: float) -> float:
    if isinstance(r_cut, bool) or not isinstance(r_cut, (int, float, Tensor)):
        raise TypeError(f"r_cut must be a number, got {type(r_cut).__name__}")
    r_cut = float(r_cut)
    if not (math.isfinite(r_cut) and r_cut > 0.0):
        raise ValueError(f"r_cut must be a finite number > 0, got {r_cut}")
    return r_cut


def _graphs(batch: Tensor | None, num_atoms: int, cells: Tensor | None) -> tuple[Tensor, int]:
    """The batch vector on the CPU and the number of graphs, checked."""
    if batch is None:
        batch_cpu = torch.zeros(num_atoms, dtype=torch.long)
    else:
        if not isinstance(batch, Tensor):
            raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
        if batch.dtype.is_floating_point or batch.is_complex() or batch.dtype == torch.bool:
            raise TypeError(f"batch must be an integer tensor, got dtype {batch.dtype}")
        if batch.shape != (num_atoms,):
            raise ValueError(f"batch must have shape ({num_atoms},), got {tuple(batch.shape)}")
        batch_cpu = batch.detach().cpu().long()
        if num_atoms > 0 and int(batch_cpu.min()) < 0:
            raise ValueError(f"batch must be non-negative, got minimum {int(batch_cpu.min())}")
    num_from_batch = int(batch_cpu.max()) + 1 if num_atoms > 0 else 1
    if cells is None:
        return batch_cpu, num_from_batch
    if num_from_batch > cells.shape[0]:
        raise ValueError(
            f"batch refers to {num_from_batch} graphs but cell has {cells.shape[0]} cells"
        )
    return batch_cpu, cells.shape[0]


def _check_lattices(cells_np: Any, pbcs: Tensor) -> None:
    import numpy as np

    for g in range(cells_np.shape[0]):
        periodic = cells_np[g][pbcs[g].numpy()]
        if periodic.shape[0] and np.linalg.matrix_rank(periodic) < periodic.shape[0]:
            raise ValueError(
                f"the periodic lattice vectors of graph {g} are linearly dependent: "
                f"cell={cells_np[g].tolist()}, pbc={pbcs[g].tolist()}"
            )


def _search(
    pos: Tensor,
    r_cut: float,
    batch_cpu: Tensor,
    counts: list[int],
    cells: Tensor | None,
    cells_np: Any,
    pbcs: Tensor,
) -> tuple[Tensor, Tensor]:
    """One vesin search per graph (a dense torch search for n > 3), offset to the batch."""
    import numpy as np
    import vesin

    dim, device = pos.shape[1], pos.device
    pos_np = pos.detach().cpu().to(torch.float64).numpy()
    order = torch.argsort(batch_cpu, stable=True)
    nl = vesin.NeighborList(cutoff=r_cut, full_list=True, sorted=True)
    edges, shifts = [], []
    start = 0
    for g, count in enumerate(counts):
        atoms = order[start : start + count]
        start += count
        if count == 0:
            continue
        if dim > 3:
            local = _brute_force_free(pos.detach()[atoms.to(device)], r_cut).cpu()
            S = None
        else:
            points = pos_np[atoms.numpy()]
            if dim < 3:
                points = np.concatenate([points, np.zeros((count, 3 - dim))], axis=1)
            periodic = pbcs[g].tolist()
            box = np.zeros((3, 3)) if cells_np is None or not any(periodic) else cells_np[g]
            i, j, S = nl.compute(points, box, periodic, quantities="ijS")
            # vesin returns uint64 indices (< 2**63): reinterpret them as int64 without a copy
            local = torch.from_numpy(np.stack([i.view(np.int64), j.view(np.int64)]))
            S = torch.from_numpy(S) if any(periodic) else None
        edges.append(local if len(counts) == 1 else atoms[local])  # one graph: 0..N-1
        if S is None:
            shifts.append(torch.zeros(local.shape[1], dim, dtype=pos.dtype, device=device))
        else:
            shifts.append(S.to(device=device, dtype=pos.dtype) @ cells[g])
    if not edges:
        empty = torch.empty(2, 0, dtype=torch.long, device=device)
        return empty, torch.empty(0, dim, dtype=pos.dtype, device=device)
    return torch.cat(edges, dim=1).to(device), torch.cat(shifts, dim=0)


def edge_vectors(pos: Tensor, edge_index: Tensor, shifts: Tensor | None = None) -> Tensor:
    r"""Edge vectors :math:`\mathbf{r}_{ij} = \mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_e`.

    Differentiable with respect to ``pos`` (and ``shifts``), so forces follow by autograd.

    Args:
        pos (Tensor): Positions in Angstrom.
        edge_index (Tensor): Pairs :math:`(i, j)` as returned by :func:`radius_graph`.
        shifts (Tensor, optional): Cartesian image shifts in Angstrom.
            (default: :obj:`None`, no shifts)

    Shapes:
        - **input:** pos :math:`(N, n)`, edge_index :math:`(2, E)`, shifts :math:`(E, n)`
        - **output:** :math:`(E, n)`
    """
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if pos.dim() != 2:
        raise ValueError(f"pos must have shape (N, n), got {tuple(pos.shape)}")
    r = pos[edge_index[1]] - pos[edge_index[0]]
    if shifts is not None:
        if shifts.shape != r.shape:
            raise ValueError(f"shifts must have shape {tuple(r.shape)}, got {tuple(shifts.shape)}")
        r = r + shifts
    return r


class RadiusGraph(BaseTransform):
    r"""PyG transform storing the periodic neighbour list of :func:`radius_graph` on a graph.

    Reads ``data.pos`` and, when present, ``data.cell`` and ``data.pbc`` (and ``data.batch`` on
    a :class:`~torch_geometric.data.Batch`); writes ``data.edge_index`` (long, ``(2, E)``),
    ``data.shifts`` (Cartesian image shifts in Angstrom, ``(E, 3)``) and ``data.edge_cutoff``
    (the cutoff, one per graph, which models check against their own), so that
    :math:`\mathbf{r}_{ij}` = ``edge_vectors(data.pos, data.edge_index, data.shifts)``.
    Store per-graph cells as ``(1, 3, 3)`` and flags as ``(1, 3)`` so that they collate to
    ``(B, 3, 3)`` and ``(B, 3)``.

    Args:
        r_cut (float): Cutoff radius in Angstrom.
    """

    def __init__(self, r_cut: float) -> None:
        if isinstance(r_cut, bool) or not isinstance(r_cut, (int, float)) or not r_cut > 0:
            raise ValueError(f"r_cut must be a number > 0, got {r_cut!r}")
        self.r_cut = float(r_cut)

    def forward(self, data: Data) -> Data:
        edge_index, shifts = radius_graph(
            data.pos,
            self.r_cut,
            batch=getattr(data, "batch", None),
            cell=getattr(data, "cell", None),
            pbc=getattr(data, "pbc", None),
        )
        data.edge_index = edge_index
        data.shifts = shifts
        num_graphs = getattr(data, "num_graphs", None) or 1
        data.edge_cutoff = torch.full((num_graphs,), self.r_cut, dtype=torch.float64)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(r_cut={self.r_cut})"
