r"""The neighbour list as a value: :class:`Edges`, built in one place and handed to every layer.

Data flows positions -> edges -> graph layers -> equivariant stack -> energy and forces. This
module is the second arrow: :func:`build_edges` searches the pairs within a cutoff (with
:func:`uenn_geo.neighbors.radius_graph`, periodic images included) and returns an
:class:`Edges`, which carries the list, its periodic shifts, the cutoff it was built for and its
memory layout. A model checks that the edges it is given were built for its own cutoff, so a
stale list from another cutoff is refused instead of silently used.

Conventions (units: Angstrom), those of :mod:`uenn_geo.neighbors`: column :math:`e` is the pair
:math:`(i, j)`, :math:`i` = ``index[0, e]`` the centre and :math:`j` = ``index[1, e]`` its
neighbour; the edge vector is :math:`\mathbf{r}_{ij} = \mathbf{r}_j - \mathbf{r}_i +
\mathbf{s}_e` with the Cartesian image shift :math:`\mathbf{s}_e` (``shifts``).

**Layout.** :meth:`Edges.chunked` lays a dense list out in chunks of ``chunk`` consecutive
edges that share their centre, padding each atom's last chunk with self-loops :math:`(i, i)` of
zero shift. Those contribute nothing to the vector graph layer (its radial functions vanish at
:math:`r = 0`, Ma & Chan eq. 31), and the layer then reads each chunk as a view instead of
scattering its messages into chunks. The layout is built once per structure (eagerly: it counts
edges) and used by every layer; :func:`torch.compile` starts after it, at
:meth:`uenn_geo.models.UENNForceField.compute_forces`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import register_pytree_node

from uenn_geo.neighbors import radius_graph

__all__ = ["Edges", "build_edges", "edge_chunks", "edges_of", "nearest_edges", "EDGES_PER_CHUNK"]

#: Edges of one centre per chunk of the chunked layout (one matrix product per chunk).
EDGES_PER_CHUNK = 32

#: The chunk sizes :meth:`Edges.chunked` chooses from, largest first.
CHUNK_SIZES = (EDGES_PER_CHUNK, 16, 8)

#: :meth:`Edges.chunked` lays the list out only if padding grows it by at most this factor.
MAX_CHUNK_PADDING = 1.5


@dataclass(frozen=True)
class Edges:
    r"""A neighbour list: pairs, periodic image shifts, the cutoff and the layout.

    Args:
        index (Tensor): pairs :obj:`(2, E)`, long; ``index[0]`` the centre :math:`i`.
        shifts (Tensor, optional): Cartesian image shifts :math:`\mathbf{s}_e` :obj:`(E, n)`
            in Angstrom; :obj:`None` for a free cluster (no shifts).
        cutoff (float): the radius in Angstrom the list holds every pair within (pairs
            beyond it may be present and contribute nothing to the layers).
        chunk (int): ``0`` for a plain list; ``k > 0`` when laid out in chunks of ``k`` edges
            sharing their centre (:meth:`chunked`).
    """

    index: Tensor
    shifts: Tensor | None
    cutoff: float
    chunk: int = 0

    @property
    def num_edges(self) -> int:
        return self.index.shape[1]

    def vectors(self, pos: Tensor) -> Tensor:
        r"""Edge vectors :math:`\mathbf{r}_{ij}` :obj:`(E, n)`, differentiable in ``pos`` and
        ``shifts``."""
        r = pos.index_select(0, self.index[1]) - pos.index_select(0, self.index[0])
        return r if self.shifts is None else r + self.shifts

    def with_shifts(self, shifts: Tensor | None) -> Edges:
        """The same pairs with other shifts (e.g. strained for the stress)."""
        return replace(self, shifts=shifts)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Edges:
        """Move the pairs to ``device`` and the shifts to ``device`` and ``dtype``."""
        shifts = None if self.shifts is None else self.shifts.to(device=device, dtype=dtype)
        return replace(self, index=self.index.to(device), shifts=shifts)

    def check(self, num_nodes: int, cutoff: float | None = None) -> None:
        """Raise a :class:`ValueError` naming the problem if the list does not fit.

        Args:
            num_nodes: the number of atoms the list refers to.
            cutoff: the cutoff of the model that will use the list, in Angstrom.
        """
        index, shifts = self.index, self.shifts
        if not isinstance(index, Tensor) or index.dim() != 2 or index.shape[0] != 2:
            got = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
            raise ValueError(f"edge index must have shape (2, E), got {got}")
        if index.dtype != torch.long:
            raise TypeError(f"edge index must be torch.long, got {index.dtype}")
        num_edges = index.shape[1]
        if shifts is not None and (shifts.dim() != 2 or shifts.shape[0] != num_edges):
            raise ValueError(
                f"shifts must have shape ({num_edges}, n), one row per edge, "
                f"got {tuple(shifts.shape)}"
            )
        # (the values are checked eagerly only: under torch.compile each read of a value
        # would break the graph; uenn-geo train checks every list before its compiled step)
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if num_edges and not tracing and (int(index.min()) < 0 or int(index.max()) >= num_nodes):
            raise ValueError(
                f"the edges refer to atoms outside 0..{num_nodes - 1}: "
                f"min {int(index.min())}, max {int(index.max())}"
            )
        if cutoff is not None and not math.isclose(self.cutoff, cutoff, rel_tol=1e-9):
            raise ValueError(
                f"the edges were built for a cutoff of {self.cutoff} A but the model's cutoff "
                f"is {cutoff} A; build them with uenn_geo.edges.build_edges(..., cutoff={cutoff})"
            )
        if self.chunk:
            self._check_chunks()

    def _check_chunks(self) -> None:
        size = self.chunk
        if self.num_edges % size:
            raise ValueError(
                f"a chunked edge list must hold a multiple of {size} edges, got "
                f"{self.num_edges}; lay it out with Edges.chunked"
            )
        centres = self.index[0].reshape(-1, size)
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return  # values are checked eagerly only (see check)
        if bool((centres != centres[:, :1]).any()):
            raise ValueError(
                f"in a chunked edge list every {size} consecutive edges share their centre "
                "(index[0]); lay it out with Edges.chunked"
            )

    def chunked(
        self,
        num_nodes: int,
        size: int | None = None,
        max_padding: float = MAX_CHUNK_PADDING,
        subset: Tensor | None = None,
    ) -> Edges:
        r"""The same list laid out in chunks of ``size`` edges that share their centre.

        Atom :math:`i` with :math:`d_i` edges gets :math:`\lceil d_i / \mathrm{size} \rceil`
        consecutive chunks; free places hold self-loops :math:`(i, i)` of zero shift. Without
        ``size``, the largest of :data:`CHUNK_SIZES` that pads the list by at most
        ``max_padding`` (32 for liquids and solids at the usual cutoffs, 8 for small
        molecules). Returns the list unchanged when it is chunked already, empty, or when
        padding would grow it by more than ``max_padding`` (sparse neighbourhoods, where the
        plain list is faster). Run eagerly: it counts the edges; under :func:`torch.compile`
        it returns the list unchanged (the graph layers then lay it out in the graph, for a
        bound on the chunks), so lay lists out before a compiled call.

        ``subset`` (ascending edge indices, long) lays out only those edges: the result equals
        ``Edges(index[:, subset], shifts[subset], cutoff).chunked(num_nodes)`` with one gather
        instead of two (a Verlet list filtered to the cutoff in every MD step,
        :class:`uenn_geo.engines.NeighbourCache`).
        """
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if subset is not None and (self.chunk or tracing):
            raise ValueError("subset needs a plain (not chunked) list, outside torch.compile")
        if self.chunk or tracing:
            return self
        centre, neighbour = self.index
        if subset is not None:
            centre = centre.index_select(0, subset)
        num_edges = centre.shape[0]
        if num_edges == 0:
            return self if subset is None else self._select(subset)
        count = torch.bincount(centre, minlength=num_nodes)
        for size in CHUNK_SIZES if size is None else (size,):  # noqa: B020
            num_own = (count + size - 1) // size  # chunks of each atom
            total = int(num_own.sum()) * size
            if total <= max_padding * num_edges:
                break
        else:
            return self if subset is None else self._select(subset)
        first_edge = torch.cumsum(count, 0) - count  # in the list sorted by centre
        first_place = (torch.cumsum(num_own, 0) - num_own) * size
        atoms = torch.arange(num_nodes, device=centre.device)
        padded_centre = torch.repeat_interleave(atoms, num_own * size, output_size=total)
        # Gather, not scatter: place p of atom a holds its k-th edge, k = p - first_place[a].
        k = torch.arange(total, device=centre.device) - first_place.index_select(0, padded_centre)
        valid = k < count.index_select(0, padded_centre)
        edge = (first_edge.index_select(0, padded_centre) + k).clamp_(max=num_edges - 1)
        if not bool((centre[1:] >= centre[:-1]).all()):  # not sorted by centre
            edge = torch.index_select(torch.argsort(centre, stable=True), 0, edge)
        if subset is not None:
            edge = subset.index_select(0, edge)
        padded = torch.where(valid, torch.index_select(neighbour, 0, edge), padded_centre)
        shifts = self.shifts
        if shifts is not None:
            shifts = torch.where(valid.unsqueeze(1), torch.index_select(shifts, 0, edge), 0.0)
        return Edges(torch.stack([padded_centre, padded]), shifts, self.cutoff, size)

    def plain(self) -> Edges:
        r"""A plain list without padding: the self-loops :math:`(i, i)` of zero shift that
        :meth:`chunked` (or the evaluator's padded lists) add removed, for models that read
        every edge as a pair of atoms (e.g. :class:`~uenn_geo.models.SchNetForceField`, whose
        filters do not vanish at :math:`r = 0`). A plain list without such loops is returned
        unchanged. Run eagerly: the number of edges kept depends on the values."""
        keep = self.index[0] != self.index[1]
        if self.shifts is not None:  # an atom's own periodic image is a real edge
            keep = keep | (self.shifts != 0).any(dim=1)
        if not self.chunk and bool(keep.all()):
            return self
        return self._select(keep.nonzero().squeeze(1))

    def _select(self, subset: Tensor) -> Edges:
        """The plain list of the edges ``subset``."""
        shifts = None if self.shifts is None else self.shifts.index_select(0, subset)
        return Edges(self.index.index_select(1, subset), shifts, self.cutoff)


register_pytree_node(
    Edges,
    lambda e: ([e.index, e.shifts], (e.cutoff, e.chunk)),
    lambda values, context: Edges(values[0], values[1], *context),
    serialized_type_name="uenn_geo.edges.Edges",
)


def edge_chunks(index: Tensor, num_nodes: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Place every edge in a slot of a chunk of ``size`` edges that share the centre atom.

    Atom :math:`i` with :math:`d_i` edges owns :math:`\lceil d_i / \mathrm{size} \rceil`
    chunks. Eagerly, exactly the chunks in use are allocated; under :func:`torch.compile` (and
    :func:`torch.export`) the
    bound :math:`(E + N (\mathrm{size} - 1)) / \mathrm{size}` is, so that every shape follows
    from the shapes of the inputs (no data-dependent sizes, no graph break) and the unused
    chunks stay empty. Edges may come in any order.

    Returns:
        ``(chunk, slot, chunk_node)``: the chunk :obj:`(E)` and slot :obj:`(E)` of every edge,
        and the atom :obj:`(C)` of every chunk (unused chunks: atom 0, they stay empty).
    """
    num_edges = index.shape[0]
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    tracing = tracing or isinstance(num_edges, torch.SymInt)  # symbolic shapes: make_fx too
    count = torch.zeros(num_nodes, dtype=torch.long, device=index.device)
    count = count.index_add(0, index, torch.ones_like(index))
    first_edge = torch.cumsum(count, 0) - count
    arange = torch.arange(num_edges, device=index.device)
    if not tracing and bool((index[1:] >= index[:-1]).all()):  # sorted, as radius_graph gives
        rank = arange - first_edge[index]
    else:
        order = torch.argsort(index, stable=True)
        rank = torch.empty_like(index).index_copy(0, order, arange - first_edge[index[order]])
    # rank: the position of each edge among the edges of its centre
    num_own = (count + size - 1) // size
    first_chunk = torch.cumsum(num_own, 0) - num_own
    if tracing:
        num_chunks = (num_edges + num_nodes * (size - 1)) // size  # a bound known from shapes
    else:
        num_chunks = int(num_own.sum())  # the chunks in use (one sync; none empty)
    chunk = first_chunk[index] + torch.div(rank, size, rounding_mode="floor")
    slot = rank % size
    chunk_node = torch.zeros(num_chunks, dtype=torch.long, device=index.device)
    chunk_node.index_put_((chunk,), index)
    return chunk, slot, chunk_node


def build_edges(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    cell: Tensor | None = None,
    pbc: Tensor | None = None,
) -> Edges:
    """Every pair within ``cutoff`` (Angstrom), periodic images included, as :class:`Edges`.

    Arguments as in :func:`uenn_geo.neighbors.radius_graph`; free clusters get no shifts.
    """
    index, shifts = radius_graph(pos, cutoff, batch=batch, cell=cell, pbc=pbc)
    periodic = cell is not None and (pbc is None or bool(torch.as_tensor(pbc).any()))
    return Edges(index, shifts if periodic else None, float(cutoff))


def edges_of(data: Any, cutoff: float) -> Edges:
    """The edges of a PyG ``Data``/``Batch`` at ``cutoff``: stored or built.

    A graph that carries ``edge_index`` (e.g. from :class:`uenn_geo.neighbors.RadiusGraph`)
    must also carry ``edge_cutoff``, the cutoff the list was built for, and it must equal
    ``cutoff``; otherwise the list is refused (a list from another cutoff would be silently
    wrong). A list laid out in chunks (:meth:`Edges.chunked`) says so with the integer
    ``edge_chunk``, its chunk size (as :class:`uenn_geo.train.packing.PackedGraphs` sets it on
    its batches). Without ``edge_index`` the list is built from ``pos``, ``batch``, ``cell``
    and ``pbc``.
    """
    index = getattr(data, "edge_index", None)
    if index is None:
        return build_edges(
            data.pos,
            cutoff,
            batch=getattr(data, "batch", None),
            cell=getattr(data, "cell", None),
            pbc=getattr(data, "pbc", None),
        )
    stored = getattr(data, "edge_cutoff", None)
    if stored is None:
        raise ValueError(
            "data.edge_index has no data.edge_cutoff, so the cutoff it was built for is "
            f"unknown; delete edge_index (the model builds its own list) or build it with "
            f"uenn_geo.neighbors.RadiusGraph({cutoff})"
        )
    values = torch.as_tensor(stored, dtype=torch.float64).reshape(-1)
    if not bool(torch.isclose(values, values.new_tensor(cutoff), rtol=1e-9, atol=0).all()):
        raise ValueError(
            f"data.edge_index was built for a cutoff of {sorted(set(values.tolist()))} A but "
            f"the model's cutoff is {cutoff} A; delete edge_index or rebuild it with "
            f"uenn_geo.neighbors.RadiusGraph({cutoff})"
        )
    chunk = getattr(data, "edge_chunk", 0)
    chunk = chunk if isinstance(chunk, int) else 0  # PyG's collation makes a list of it
    return Edges(index, getattr(data, "shifts", None), float(cutoff), chunk)


def nearest_edges(edges: Edges, pos: Tensor, k: int) -> Edges:
    r"""Keep the :math:`k` nearest neighbours of every centre (ties broken by edge order).

    What SchNet's ``max_num_neighbors`` does with torch-cluster (which keeps *some* :math:`k`
    neighbours within the cutoff; here the nearest). The result is no longer symmetric.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if edges.chunk:
        raise ValueError("nearest_edges needs a plain list, not a chunked one")
    index = edges.index
    dist = edges.vectors(pos.detach()).norm(dim=-1)
    order = torch.argsort(dist)
    order = order[torch.argsort(index[0, order], stable=True)]
    centre = index[0, order]
    counts = torch.bincount(centre, minlength=pos.shape[0])
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - start[centre]
    keep = order[rank < k]
    shifts = None if edges.shifts is None else edges.shifts[keep]
    return Edges(index[:, keep], shifts, edges.cutoff)
