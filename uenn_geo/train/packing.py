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
        """The batch of the structures ``group``, padded to ``room``."""
        graphs = [self[i] for i in group]
        atoms, edges = int(self.atoms[group].sum()), int(self.edges[group].sum())
        template = graphs[0] if graphs else self[0]
        empty = [self._padding(template, 0, 0) for _ in range(room.graphs - len(graphs) - 1)]
        pad = self._padding(template, room.atoms - atoms, room.edges - edges)
        batch = Batch.from_data_list([*graphs, *empty, pad])
        if "weight" not in template:
            weight = torch.zeros(room.graphs, dtype=template.pos.dtype)
            weight[: len(graphs)] = 1.0
            batch.weight = weight
        if self.chunk:
            batch.edge_chunk = self.chunk  # read by uenn_geo.edges.edges_of
        return batch

    def _padding(self, template: Data, atoms: int, edges: int) -> Data:
        """A structure of ``atoms`` atoms, ``2 r_c + 1`` apart along x, whose ``edges``
        edges all join its first two atoms (whole chunks of the first atom's edges); weight 0.
        The budget leaves the padding structure at least two atoms; the empty ones get no
        edges."""
        pad = Data()
        for key, value in template:
            if not isinstance(value, Tensor):
                pad[key] = value
            elif key == "edge_index":  # every edge from atom 0 to atom 1
                pad[key] = value.new_tensor([[0], [1]]).expand(2, edges).clone()
            elif template.is_edge_attr(key):
                pad[key] = value.new_zeros(edges, *value.shape[1:])
            elif template.is_node_attr(key):
                pad[key] = self._padding_atoms(key, value, atoms)
            elif key in _ZEROED:
                pad[key] = torch.zeros_like(value)
            elif key == "num_atoms":
                pad[key] = torch.full_like(value, atoms)
            else:  # per structure: the template's (cell, pbc, cutoff)
                pad[key] = value.clone()
        pad.num_nodes = atoms
        return pad

    def _padding_atoms(self, key: str, value: Tensor, atoms: int) -> Tensor:
        if key == "pos":
            pos = value.new_zeros(atoms, *value.shape[1:])
            pos[:, 0] = torch.arange(atoms, dtype=value.dtype) * (2 * self.cutoff + 1)
            return pos
        if key == "z":  # a species of the data
            return value[:1].expand(atoms, *value.shape[1:]).clone()
        return value.new_zeros(atoms, *value.shape[1:])


class _Epoch:
    """The padded batches of one pass (made one at a time), with their number."""

    def __init__(
        self, data: PackedGraphs, groups: list[list[int]], room: Budget, device: Any = None
    ) -> None:
        self.data, self.groups, self.room, self.device = data, groups, room, device

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[Batch]:
        for group in self.groups:
            batch = self.data.make(group, self.room)
            yield batch if self.device is None else batch.to(self.device)
