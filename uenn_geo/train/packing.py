r"""Batches of one shape from structures of many sizes: packed to a budget, then padded.

A compiled training step that serves every shape of batch indexes its tensors through
symbolic sizes, and on batches of structures of varying size (clusters and periodic cells,
molecules of different lengths) that costs up to half the step (docs/training.md measures it).
:class:`PackedGraphs` makes every batch the same shape instead, as JAX codes do for their
fixed shapes (jraph's ``dynamically_batch`` and ``pad_with_graphs``): each batch is filled
with structures in shuffled order up to a budget of atoms, edges and structures, then padded
to the budget exactly with

* one padding structure of atoms that are only each other's neighbours, placed further apart
  than twice the cutoff, so that its edges have zero radial functions (eq. 31 vanishes
  beyond :math:`r_c`, derivatives included) and no pair of distance zero appears; and
* empty structures (no atoms) up to the number of structures of the budget,

all with loss weight 0 (``weight``, the per-structure weight of
:func:`uenn_geo.train.force_loss`). No edge joins a padding atom to a real one, so the real
structures' energies, forces and stresses are those of an unpadded batch.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from uenn_geo.edges import CHUNK_SIZES, MAX_CHUNK_PADDING, Edges

__all__ = ["Budget", "PackedGraphs", "chunk_size"]

#: Structures passed over (kept for the next batch) while looking for one that fits.
LOOK_AHEAD = 16

#: Per-structure attributes set to zero in the padding structures.
_ZEROED = ("energy", "stress", "weight", "stress_weight", "virial")


def chunk_size(graphs: list[Data], max_padding: float = MAX_CHUNK_PADDING) -> int | None:
    """The chunk size for the layout of every list of ``graphs``: the rule of
    :meth:`uenn_geo.edges.Edges.chunked` (the largest of :data:`~uenn_geo.edges.CHUNK_SIZES`
    that pads the lists by at most ``max_padding``) applied to all of them at once;
    :obj:`None` when none does."""
    counts = [torch.bincount(g.edge_index[0], minlength=int(g.num_nodes)) for g in graphs]
    total = sum(int(c.sum()) for c in counts)
    for size in CHUNK_SIZES:
        padded = sum(int(((c + size - 1) // size).sum()) for c in counts) * size
        if padded <= max_padding * total:
            return size
    return None


@dataclass(frozen=True)
class Budget:
    """The shape of every batch: atoms, edges and structures, padding included."""

    atoms: int
    edges: int
    graphs: int


class PackedGraphs(list):
    r"""A list of PyG graphs with stored neighbour lists, batched into batches of one shape.

    Every graph needs ``edge_index`` (and the same attributes as the others). For a batch size
    :math:`B` (:meth:`budget`), a batch holds up to :math:`\lceil B \bar{n} \rceil` atoms and
    :math:`\lceil B \bar{e} \rceil` edges (:math:`\bar{n}`, :math:`\bar{e}`: the mean atoms
    and edges of a structure), two more padding atoms, and as many structures as the smallest
    ones fill it with: on average a little under :math:`B` structures a batch. Every structure
    comes once an epoch; the number of batches varies slightly with the shuffle (``len`` of
    what :meth:`batches` returns).

    With ``chunk``, every structure's list is laid out once in chunks of ``chunk`` edges of one
    centre (:meth:`uenn_geo.edges.Edges.chunked`, the layout of
    :class:`~uenn_geo.nn.VectorGaussianConv`), the budget counts those, and the batches say so
    (``edge_chunk``): otherwise the layout, which pads each atom's edges to whole chunks, is
    made in every step and its length varies from batch to batch.

    Args:
        graphs: the structures, each with ``edge_index`` (and ``shifts`` where periodic).
        cutoff: the neighbour cutoff of the model, in Angstrom (the padding atoms are set
            :math:`2 r_c + 1` apart).
        chunk: edges per chunk of the layout (default: :obj:`None`, plain lists).
    """

    def __init__(self, graphs: list[Data], cutoff: float, chunk: int | None = None) -> None:
        if not self.fits(graphs):
            raise ValueError(
                "PackedGraphs needs a non-empty list of graphs with the same attributes and "
                "stored neighbour lists (edge_index)"
            )
        self.cutoff = float(cutoff)
        self.chunk = int(chunk or 0)
        if self.chunk:
            graphs = [self._chunked(g) for g in graphs]
        super().__init__(graphs)
        self.atoms = torch.tensor([int(g.num_nodes) for g in graphs])
        self.edges = torch.tensor([int(g.edge_index.shape[1]) for g in graphs])
        self._joined = _Joined(graphs)
        self._budgets: dict[int, Budget] = {}

    @staticmethod
    def fits(graphs: Any) -> bool:
        """Whether ``graphs`` is a non-empty list of graphs with the same attributes, each
        with a stored neighbour list."""
        if not isinstance(graphs, list) or not graphs or not isinstance(graphs[0], Data):
            return False
        keys = set(graphs[0].keys())
        return "edge_index" in keys and all(
            isinstance(g, Data) and set(g.keys()) == keys for g in graphs
        )

    def _chunked(self, graph: Data) -> Data:
        """A copy of ``graph`` whose list is laid out in chunks of :attr:`chunk` edges."""
        edges = Edges(graph.edge_index, getattr(graph, "shifts", None), self.cutoff)
        laid = edges.chunked(int(graph.num_nodes), self.chunk, max_padding=math.inf)
        out = copy.copy(graph)
        out.edge_index = laid.index
        if laid.shifts is not None:
            out.shifts = laid.shifts
        return out

    def budget(self, batch_size: int) -> Budget:
        """The shape of every batch for ``batch_size`` structures a batch on average."""
        if batch_size not in self._budgets:
            atoms = max(math.ceil(batch_size * self.atoms.double().mean()), int(self.atoms.max()))
            edges = max(math.ceil(batch_size * self.edges.double().mean()), int(self.edges.max()))
            graphs = atoms // max(int(self.atoms.min()), 1) + 1
            edges = max(edges, 1)
            if self.chunk:  # whole chunks
                edges = math.ceil(edges / self.chunk) * self.chunk
            self._budgets[batch_size] = Budget(atoms + 2, edges, graphs + 1)
        return self._budgets[batch_size]

    def groups(self, batch_size: int, order: Tensor) -> list[list[int]]:
        """The structures of each batch: ``order`` packed greedily into the budget, passing
        over up to :data:`LOOK_AHEAD` structures that do not fit (they start the next)."""
        room = self.budget(batch_size)
        atoms, edges = self.atoms.tolist(), self.edges.tolist()
        queue, groups = deque(order.tolist()), []
        while queue:
            group, n, e, waiting = [], 0, 0, []
            while queue and len(waiting) < LOOK_AHEAD and len(group) < room.graphs - 1:
                i = queue.popleft()
                if n + atoms[i] <= room.atoms - 2 and e + edges[i] <= room.edges:
                    group.append(i)
                    n, e = n + atoms[i], e + edges[i]
                else:
                    waiting.append(i)
            groups.append(group)
            queue.extendleft(reversed(waiting))  # passed over: first in the next batch
        return groups

    def batches(
        self,
        batch_size: int | None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> _Epoch:
        """The batches of one pass, all of the shape :meth:`budget` (``len`` is their number),
        moved to ``device`` (default: where they are)."""
        size = len(self) if batch_size is None else batch_size
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        return _Epoch(self, self.groups(size, order), self.budget(size), device)

    def make(self, group: list[int], room: Budget) -> Batch:
        """The batch of the structures ``group``, padded to ``room``: what PyG's
        ``Batch.from_data_list`` makes of them followed by the padding structures, gathered
        from the attributes joined once (:class:`_Joined`) instead of collated graph by graph
        (which took 5 ms a batch of EMT copper, a tenth of a training step;
        docs/training.md)."""
        atoms, edges = int(self.atoms[group].sum()), int(self.edges[group].sum())
        empty = room.graphs - len(group) - 1
        pad = (room.atoms - atoms, room.edges - edges)
        nodes = torch.cat(
            [self.atoms[group], self.atoms.new_zeros(empty), self.atoms.new_tensor([pad[0]])]
        )
        out = self._joined.gather(
            group, lambda key, level, like: self._padding(key, level, like, empty, pad, atoms)
        )
        batch = Batch(**out)
        batch.batch = torch.repeat_interleave(torch.arange(room.graphs), nodes)
        batch.ptr = torch.cat([nodes.new_zeros(1), nodes.cumsum(0)])
        batch._num_graphs = room.graphs
        if "weight" not in out:
            weight = torch.zeros(room.graphs, dtype=self[0].pos.dtype)
            weight[: len(group)] = 1.0
            batch.weight = weight
        if self.chunk:
            batch.edge_chunk = self.chunk  # read by uenn_geo.edges.edges_of
        return batch

    def _padding(
        self, key: str, level: str, like: Any, empty: int, pad: tuple[int, int], offset: int
    ) -> Any:
        """The padding's rows of attribute ``key`` (``level``: ``"atoms"``, ``"edges"`` or
        ``"structures"``), ``like`` the rows of the batch's first structure (a list item for
        attributes that are not tensors): ``empty`` empty structures, then one of ``pad[0]``
        atoms ``2 r_c + 1`` apart along x (of the data's first species) whose ``pad[1]`` edges
        all join its first two atoms (batch atoms ``offset`` and ``offset + 1``: whole chunks
        of its first atom's edges), energies, stresses and weights zero."""
        if not isinstance(like, Tensor):
            return [like] * (empty + 1)
        if level == "atoms":
            count = pad[0]
            if key == "pos":
                pos = like.new_zeros(count, *like.shape[1:])
                pos[:, 0] = torch.arange(count, dtype=like.dtype) * (2 * self.cutoff + 1)
                return pos
            if key == "z":
                return like[:1].expand(count, *like.shape[1:]).clone()
            return like.new_zeros(count, *like.shape[1:])
        if level == "edges":
            if key == "edge_index":  # rows (i, j)
                return like.new_tensor([[offset, offset + 1]]).expand(pad[1], 2).clone()
            return like.new_zeros(pad[1], *like.shape[1:])
        rows = like.repeat(empty + 1, *([1] * (like.dim() - 1)))
        if key in _ZEROED:
            return torch.zeros_like(rows)
        if key == "num_atoms":
            rows = torch.zeros_like(rows)
            rows[-like.shape[0] :] = pad[0]
        return rows


class _Joined:
    """The attributes of a list of graphs, each joined once along PyG's concatenation axis,
    with where each graph's rows start: a batch of some of them is one gather per attribute,
    the same as ``Batch.from_data_list`` of them (indices offset by the atoms before them)."""

    def __init__(self, graphs: list[Data]) -> None:
        first = graphs[0]
        nodes = torch.tensor([int(g.num_nodes) for g in graphs])
        num_edges = torch.tensor([int(g.edge_index.shape[1]) for g in graphs])
        #: rows per graph of each layout (atoms, edges, structures), shared by attributes
        self.layouts: list[Tensor] = []
        #: key -> (rows joined along the first axis, the axis PyG joins, layout, increments
        #: per graph or None, level)
        self.tensors: dict[str, tuple[Tensor, int, int, Tensor | None, str]] = {}
        self.lists: dict[str, list[Any]] = {}
        for key, value in first:
            if not isinstance(value, Tensor):
                self.lists[key] = [g[key] for g in graphs]
                continue
            dim = first.__cat_dim__(key, value)
            if dim is None:  # stacked along a new axis: rows of one each
                parts, dim = [g[key].unsqueeze(0) for g in graphs], 0
            else:
                dim = dim + value.dim() if dim < 0 else dim
                parts = [g[key].movedim(dim, 0) for g in graphs]
            lengths = torch.tensor([part.shape[0] for part in parts])
            incs = torch.tensor([int(g.__inc__(key, g[key])) for g in graphs])
            level = _level(key, lengths, nodes, num_edges)
            layout = next(
                (k for k, known in enumerate(self.layouts) if torch.equal(known, lengths)),
                len(self.layouts),
            )
            if layout == len(self.layouts):
                self.layouts.append(lengths)
            rows = torch.cat(parts)
            self.tensors[key] = (rows, dim, layout, incs if incs.any() else None, level)

    def gather(self, group: list[int], padding: Any) -> dict[str, Any]:
        """The attributes of the graphs ``group`` joined, each followed by
        ``padding(key, level, like)`` (``like``: the first graph's rows, or list item)."""
        idx = torch.as_tensor(group, dtype=torch.long)
        lead = group[0] if group else 0
        picks = []  # per layout: the rows of the group, their count per graph, the lead's
        for lengths in self.layouts:
            starts = lengths.cumsum(0) - lengths
            count = lengths[idx]
            before = count.cumsum(0) - count  # where each graph's rows go in the batch
            rows = torch.repeat_interleave(starts[idx] - before, count)
            first = int(starts[lead])
            picks.append(
                (rows + torch.arange(rows.shape[0]), count, first, first + int(lengths[lead]))
            )
        out: dict[str, Any] = {}
        for key, (joined, dim, layout, incs, level) in self.tensors.items():
            rows, count, first, last = picks[layout]
            x = joined.index_select(0, rows)
            if incs is not None:  # e.g. edge_index: the atoms of the graphs before
                inc = incs[idx]
                shift = torch.repeat_interleave(inc.cumsum(0) - inc, count)
                x = x + shift.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            x = torch.cat([x, padding(key, level, joined[first:last])])
            out[key] = x.movedim(0, dim).contiguous()  # as PyG joins them
        for key, values in self.lists.items():
            out[key] = [values[i] for i in group] + padding(key, "structures", values[lead])
        return out


def _level(key: str, lengths: Tensor, nodes: Tensor, edges: Tensor) -> str:
    """Whether the attribute has a row per atom, per edge or per structure (PyG's rule where
    atoms and edges are as many in every graph: ``edge`` in the name)."""
    per_atom, per_edge = bool((lengths == nodes).all()), bool((lengths == edges).all())
    if per_atom and per_edge:
        return "edges" if "edge" in key else "atoms"
    return "atoms" if per_atom else "edges" if per_edge else "structures"


class _Epoch:
    """The padded batches of one pass (made one at a time), with their number."""

    def __init__(
        self, data: PackedGraphs, groups: list[list[int]], room: Budget, device: Any = None
    ) -> None:
        self.data, self.groups, self.room, self.device = data, groups, room, device

    def __len__(self) -> int:
        return len(self.groups)

    def shard(self, rank: int, ranks: int) -> _Epoch:
        """Rank ``rank``'s batches of ``ranks``: every ``ranks``-th, as many on every rank
        (up to ``ranks - 1`` batches of the pass are left out; they come in other epochs)."""
        per_rank = len(self.groups) // ranks
        groups = self.groups[rank::ranks][:per_rank]
        return _Epoch(self.data, groups, self.room, self.device)

    def __iter__(self) -> Iterator[Batch]:
        for group in self.groups:
            batch = self.data.make(group, self.room)
            yield batch if self.device is None else batch.to(self.device)
