r"""Physical constants and the argon parameters of the paper, in the library's units.

Units everywhere: energies in eV, lengths in Angstrom, times in fs, masses in atomic mass units
(u), temperatures in K.
"""

from __future__ import annotations

__all__ = [
    "BOLTZMANN",
    "AMU_A2_PER_FS2",
    "AVOGADRO",
    "ARGON_EPSILON",
    "ARGON_SIGMA",
    "ARGON_MASS",
    "ARGON_Z",
    "ARGON_NN_DISTANCE",
    "RAHMAN_DENSITY",
]

#: Boltzmann's constant :math:`k_B` in eV/K (CODATA 2018).
BOLTZMANN: float = 8.617333262e-5
#: One u A\ :sup:`2`/fs\ :sup:`2` in eV: 1.66053906660e-27 kg * 1e-20 m^2 / 1e-30 s^2 /
#: 1.602176634e-19 J (CODATA 2018), so that :math:`\mathbf{a} = \mathbf{F} / (m \cdot
#: \mathrm{AMU\_A2\_PER\_FS2})` in A/fs\ :sup:`2` for forces in eV/A and masses in u.
AMU_A2_PER_FS2: float = 1.66053906660e-27 * 1e-20 / 1e-30 / 1.602176634e-19
#: Avogadro's number, per mol.
AVOGADRO: float = 6.02214076e23

#: Well depth of argon, :math:`\epsilon = k_B \cdot 120\,\mathrm{K}` (eV), Ma & Chan sec. 4.
ARGON_EPSILON: float = 120.0 * BOLTZMANN
#: Lennard-Jones length :math:`r_0` of argon (Angstrom), Ma & Chan sec. 4.
ARGON_SIGMA: float = 3.4
#: Mass of argon (u).
ARGON_MASS: float = 39.948
#: Atomic number of argon.
ARGON_Z: int = 18
#: Nearest-neighbour distance of the Lennard-Jones fcc crystal, :math:`2^{1/6} r_0` (Angstrom).
ARGON_NN_DISTANCE: float = 2.0 ** (1.0 / 6.0) * ARGON_SIGMA
#: Density of liquid argon in Rahman's 1964 simulation, g/cm\ :sup:`3`.
RAHMAN_DENSITY: float = 1.374
