"""Batches for training: equal-size structures as dense tensors, or PyG data sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

__all__ = ["DenseForceData", "batches"]


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


def batches(
    data: Any,
    batch_size: int | None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Data]:
    """Batches of a :class:`DenseForceData` or of a PyG data set (collated by its loader)."""
    if isinstance(data, DenseForceData):
        yield from data.batches(batch_size, shuffle, generator)
        return
    from torch_geometric.loader import DataLoader

    size = len(data) if batch_size is None else batch_size
    yield from DataLoader(data, batch_size=size, shuffle=shuffle, generator=generator)
