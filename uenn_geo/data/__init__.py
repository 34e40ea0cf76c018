"""Data: the Lennard-Jones reference, the paper's argon set and other data sets.

Units: positions in Angstrom, energies in eV, forces in eV/Angstrom.
"""

from uenn_geo.data.lj import (
    ARGON_EPSILON,
    ARGON_MASS,
    ARGON_SIGMA,
    ARGON_Z,
    lennard_jones,
    lennard_jones_pairs,
)
from uenn_geo.data.paper import PaperArgon, sample_paper_configurations, split_indices

__all__ = [
    "ARGON_EPSILON",
    "ARGON_MASS",
    "ARGON_SIGMA",
    "ARGON_Z",
    "lennard_jones",
    "lennard_jones_pairs",
    "PaperArgon",
    "sample_paper_configurations",
    "split_indices",
]
