"""Statistics of a training set that set the defaults of ``uenn-geo train`` for files: the
mean size of a structure, its compositions, the shortest distance and the mean number of
neighbours within the cutoff, each from up to a few hundred structures spread over the set."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from uenn_geo.neighbors import edge_vectors, radius_graph

__all__ = ["R_MIN_MARGIN", "compositions", "gaussians_start", "mean_atoms", "mean_neighbours"]

#: The first Gaussian of models trained on files sits this far (Angstrom) below the training
#: structures' shortest distance (:func:`gaussians_start`): the Gaussians resolve distances
#: that occur, not the empty range from 0; shorter ones meet the first Gaussians' tails. On
#: EMT copper (shortest distance 1.99 A) it lowered the test force RMSE (docs/training.md).
R_MIN_MARGIN = 0.5


def picks(data: Any, sample: int) -> list[int]:
    """Up to ``sample`` indices spread evenly over ``data``."""
    return np.unique(np.linspace(0, len(data) - 1, min(sample, len(data))).astype(int)).tolist()


def _edges(frame: Any, cutoff: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    cell, pbc = getattr(frame, "cell", None), getattr(frame, "pbc", None)
    return radius_graph(frame.pos, cutoff, cell=cell, pbc=pbc)


def gaussians_start(data: Any, cutoff: float, sample: int = 256) -> float:
    """The first Gaussian centre for ``data``: :data:`R_MIN_MARGIN` below the shortest
    distance within ``cutoff`` in up to ``sample`` structures spread over it (Angstrom,
    rounded to 0.01; 0 when none has two atoms that close)."""
    shortest = math.inf
    for i in picks(data, sample):
        frame = data[i]
        edge_index, shifts = _edges(frame, cutoff)
        if edge_index.shape[1]:
            vectors = edge_vectors(frame.pos, edge_index, shifts)
            shortest = min(shortest, float(vectors.norm(dim=1).min()))
    if not math.isfinite(shortest):
        return 0.0
    return max(0.0, round(shortest - R_MIN_MARGIN, 2))


def mean_neighbours(data: Any, cutoff: float, sample: int = 256) -> float:
    """The mean number of neighbours within ``cutoff`` of an atom (periodic images
    included) over up to ``sample`` structures spread over ``data``, rounded to 0.01; 1 when
    no atom has any (so that dividing by it changes nothing)."""
    edges = atoms = 0
    for i in picks(data, sample):
        frame = data[i]
        edges += _edges(frame, cutoff)[0].shape[1]
        atoms += frame.num_nodes
    return round(edges / atoms, 2) if edges else 1.0


def mean_atoms(data: Any, sample: int = 64) -> float:
    """The mean number of atoms of up to ``sample`` structures spread over ``data``."""
    if len(data) == 0:
        return 0.0
    return float(np.mean([data[i].num_nodes for i in picks(data, sample)]))


def compositions(data: Any, sample: int = 64) -> int:
    """How many compositions (atoms of each element) up to ``sample`` structures spread over
    ``data`` have."""
    if len(data) == 0:
        return 0
    return len({tuple(torch.bincount(data[i].z).tolist()) for i in picks(data, sample)})
