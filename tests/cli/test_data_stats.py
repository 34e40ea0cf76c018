"""The training-set statistics behind the defaults of ``uenn-geo train`` for files."""

import pytest
import torch
from torch_geometric.data import Data

from uenn_geo.cli.data_stats import (
    R_MIN_MARGIN,
    compositions,
    gaussians_start,
    mean_atoms,
    mean_neighbours,
)

PAIR = Data(pos=torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 3.0, 0.0]]))


def _crystal(a: float = 2.1) -> Data:
    """One atom in a cubic cell of side ``a``: its images ``a`` away."""
    cell = torch.eye(3).unsqueeze(0) * a
    return Data(pos=torch.zeros(1, 3), cell=cell, pbc=torch.ones(1, 3, dtype=torch.bool))


def test_mean_atoms_and_compositions():
    frames = [Data(pos=torch.zeros(n, 3)) for n in (3, 5, 10)]
    assert mean_atoms(frames) == 6.0 and mean_atoms([]) == 0.0
    water = [Data(z=torch.tensor([8, 1, 1])), Data(z=torch.tensor([1, 8, 1]))]
    assert compositions(water) == 1 and compositions([]) == 0
    assert compositions([*water, Data(z=torch.tensor([29] * 13))]) == 2


def test_gaussians_start_below_the_shortest_distance():
    """R_MIN_MARGIN below the shortest distance within the cutoff, through periodic images
    too; 0 without pairs or when that would be negative."""
    assert R_MIN_MARGIN == 0.5 and gaussians_start([PAIR], 5.0) == pytest.approx(0.7)
    assert gaussians_start([_crystal(), PAIR], 5.0) == pytest.approx(0.7)
    assert gaussians_start([_crystal()], 5.0) == pytest.approx(1.6)
    assert gaussians_start([Data(pos=torch.zeros(1, 3))], 5.0) == 0.0
    assert gaussians_start([], 5.0) == 0.0  # no structures
    assert gaussians_start([PAIR], 1.0) == 0.0  # nothing within the cutoff
    close = Data(pos=torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]))
    assert gaussians_start([close], 5.0) == 0.0


def test_mean_neighbours_counts_within_the_cutoff_and_through_images():
    """PAIR within 5 A: every atom sees the other two (mean 2); within 1.5 A only the
    1.2-A pair (2 of 3 atoms have one: 2/3); the lone atom of a 2.1-A cubic cell has 6
    images within 2.5 A, 18 within 3.0 A (face and edge diagonals, 2.97 A); none: 1."""
    assert mean_neighbours([PAIR], 5.0) == 2.0
    assert mean_neighbours([PAIR], 1.5) == pytest.approx(0.67)
    assert mean_neighbours([_crystal()], 2.5) == 6.0
    assert mean_neighbours([_crystal()], 3.0) == 18.0
    assert mean_neighbours([_crystal(), PAIR], 2.5) == pytest.approx((6 + 2) / 4)
    assert mean_neighbours([Data(pos=torch.zeros(1, 3))], 5.0) == 1.0
    assert mean_neighbours([], 5.0) == 1.0
