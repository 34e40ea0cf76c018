"""Batches for training: equal-size structures as dense tensors, stacked graphs of one
shape, or PyG data sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

__all__ = ["DenseForceData", "StackedGraphs", "batches"]


class DenseForceData:
    r"""Structures of equal size as dense tensors, batched without PyG collation.

    Args:
        pos (Tensor): positions :obj:`[B, A, 3]` (Angstrom).
        forces (Tensor): forces :obj:`[B, A, 3]` (eV/A).
    """

    def __init__(self, pos: Tensor, forces: Tensor) -> None:
        if pos.dim() != 3 or pos.shape != forces.shape:
            raise ValueError(
                f"pos and forces must both have shape [B, A, 3], got {tuple(pos.shape)} and "
                f"{tuple(forces.shape)}"
            )
        self.pos = pos
        self.forces = forces

    def __len__(self) -> int:
        return self.pos.shape[0]

    def _make(self, idx: Tensor | slice) -> Data:
        pos, forces = self.pos[idx], self.forces[idx]
        b, a = pos.shape[:2]
        batch = torch.arange(b, device=pos.device).repeat_interleave(a)
        return Data(pos=pos.reshape(b * a, -1), forces=forces.reshape(b * a, -1), batch=batch)

    def batches(
        self,
        batch_size: int | None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Data]:
        """Batches of ``batch_size`` structures (all of them for :obj:`None`) as ``Data``."""
        n = len(self)
        size = n if batch_size is None else batch_size
        if shuffle:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, size):
                yield self._make(order[start : start + size])
        else:
            for start in range(0, n, size):
                yield self._make(slice(start, start + size))


class StackedGraphs(list):
    r"""A list of PyG graphs of one shape, whose batches are made by indexing stacked tensors.

    Every graph must have the same attributes with tensors of the same shapes (frames of one
    molecule with neighbour lists of one length; :meth:`fits` says whether a list does). Each
    tensor attribute is stacked once, :obj:`(S, ...)`, and a batch is an index into those
    stacks with the increments of PyG's collation (``edge_index`` offset by the atoms before
    it): the same ``Batch`` as ``Batch.from_data_list`` (``batch``, ``ptr``, the attributes
    joined along PyG's concatenation dimension; other attributes as lists), without its
    per-graph Python loop (docs/training.md measures the gain). It stays a list of the graphs
    for everything else.
    """

    def __init__(self, graphs: list[Data]) -> None:
        if not self.fits(graphs):
            raise ValueError(
                "StackedGraphs needs a non-empty list of graphs with the same attributes and "
                "tensor shapes; use a plain list (PyG's DataLoader collates any graphs)"
            )
        super().__init__(graphs)
        first = graphs[0]
        self.num_nodes = int(first.num_nodes)
        self._stacks: dict[str, tuple[Tensor, int, Any]] = {}
        self._lists: dict[str, list[Any]] = {}
        for key, value in first:
            if isinstance(value, Tensor):
                dim = first.__cat_dim__(key, value)
                dim = dim + value.dim() if dim is not None and dim < 0 else dim
                stack = torch.stack([g[key] for g in graphs])
                self._stacks[key] = (stack, dim, first.__inc__(key, value))
            else:
                self._lists[key] = [g[key] for g in graphs]

    @staticmethod
    def fits(graphs: Any) -> bool:
        """Whether ``graphs`` is a non-empty list of graphs with the same attributes and the
        same tensor shapes (every ``__inc__`` a plain number, as for positions and edges)."""
        if not isinstance(graphs, list) or not graphs:
            return False
        first = graphs[0]
        if not isinstance(first, Data) or first.num_nodes is None:
            return False
        shapes = {k: (v.shape, v.dtype) if isinstance(v, Tensor) else None for k, v in first}
        for g in graphs:
            if not isinstance(g, Data) or set(g.keys()) != set(shapes):
                return False
            for key, value in g:
                if isinstance(value, Tensor) != (shapes[key] is not None):
                    return False
                if isinstance(value, Tensor) and (value.shape, value.dtype) != shapes[key]:
                    return False
        incs = [first.__inc__(k, v) for k, v in first if isinstance(v, Tensor)]
        return all(isinstance(i, (int, float)) for i in incs)

    def _make(self, idx: Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        b, n = idx.numel(), self.num_nodes
        out: dict[str, Any] = {}
        for key, (stack, dim, inc) in self._stacks.items():
            x = stack.index_select(0, idx)  # (b, ...): one graph's tensor per row
            if inc:
                x = x + (torch.arange(b) * inc).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            if dim is None:  # PyG stacks along a new first axis
                out[key] = x
            else:  # joined along `dim`: bring the graphs next to it, then merge both
                out[key] = x.movedim(0, dim).flatten(dim, dim + 1)
        for key, values in self._lists.items():
            out[key] = [values[int(i)] for i in idx]
        batch = Batch(**out)
        batch.batch = torch.arange(b).repeat_interleave(n)
        batch.ptr = torch.arange(b + 1) * n
        batch._num_graphs = b
        return batch

    def batches(
        self,
        batch_size: int | None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` graphs (all of them for :obj:`None`)."""
        n = len(self)
        size = n if batch_size is None else batch_size
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, size):
            yield self._make(order[start : start + size])


def batches(
    data: Any,
    batch_size: int | None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Data]:
    """Batches of a :class:`DenseForceData`, :class:`StackedGraphs` or PyG data set (collated
    by its loader)."""
    if isinstance(data, (DenseForceData, StackedGraphs)):
        yield from data.batches(batch_size, shuffle, generator)
        return
    from torch_geometric.loader import DataLoader

    size = len(data) if batch_size is None else batch_size
    yield from DataLoader(data, batch_size=size, shuffle=shuffle, generator=generator)
