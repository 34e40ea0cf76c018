"""Data: the Lennard-Jones reference, the paper's argon set and other data sets.

Units: positions in Angstrom, energies in eV, forces in eV/Angstrom.
"""

from uenn_geo.data.clusters import (
    ARGON_NN_DISTANCE,
    ClusterSample,
    LJClusters,
    fcc_sites,
    sample_lj_clusters,
)
from uenn_geo.data.extxyz import ExtXYZDataset, file_sha1, read_frames, write_extxyz
from uenn_geo.data.lj import (
    ARGON_EPSILON,
    ARGON_MASS,
    ARGON_SIGMA,
    ARGON_Z,
    lennard_jones,
    lennard_jones_pairs,
)
from uenn_geo.data.manakov import (
    cached_manakov_pairs,
    manakov_energy,
    manakov_norm,
    manakov_pairs,
    manakov_rhs,
    manakov_step,
    manakov_trajectory,
    random_manakov_states,
)
from uenn_geo.data.paper import PaperArgon, sample_paper_configurations, split_indices
from uenn_geo.data.registry import DATASET_NAMES, load_dataset
from uenn_geo.data.structures import argon_fcc, box_cells, fcc_box, fcc_lattice
from uenn_geo.data.transforms import CastFloats

__all__ = [
    "ARGON_NN_DISTANCE",
    "ClusterSample",
    "LJClusters",
    "fcc_sites",
    "sample_lj_clusters",
    "ExtXYZDataset",
    "file_sha1",
    "read_frames",
    "write_extxyz",
    "ARGON_EPSILON",
    "ARGON_MASS",
    "ARGON_SIGMA",
    "ARGON_Z",
    "lennard_jones",
    "lennard_jones_pairs",
    "cached_manakov_pairs",
    "manakov_energy",
    "manakov_norm",
    "manakov_pairs",
    "manakov_rhs",
    "manakov_step",
    "manakov_trajectory",
    "random_manakov_states",
    "PaperArgon",
    "sample_paper_configurations",
    "split_indices",
    "DATASET_NAMES",
    "load_dataset",
    "CastFloats",
    "argon_fcc",
    "box_cells",
    "fcc_box",
    "fcc_lattice",
]
