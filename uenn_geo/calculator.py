r"""An ASE calculator for uenn-geo force models, with a Verlet-skin neighbour list.

Units are ASE's, which are the library's: positions in Angstrom, energies in eV, forces in
eV/A, stress in eV/A\ :sup:`3` (6 components in ASE's Voigt order
:math:`xx, yy, zz, yz, xz, xy`). No conversion happens here.

Example:
    >>> from ase import Atoms
    >>> from uenn_geo.models import UENNForceField
    >>> atoms = Atoms("Ar4", positions=[[3, 0, 0.1], [-3, -0.1, 0], [0.1, 2.5, 0], [0, -2.5, -0.1]])
    >>> atoms.calc = UENNCalculator(UENNForceField(dtype="float64", conservative=True))
    >>> atoms.get_forces().shape
    (4, 3)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from torch import nn

from uenn_geo.engines.evaluator import Evaluator, NeighbourCache
from uenn_geo.perf import warn_graph_memory

#: The neighbour list of the calculator (now shared by every engine).
_NeighbourCache = NeighbourCache

__all__ = ["UENNCalculator"]


class UENNCalculator(Calculator):
    r"""ASE calculator for any uenn-geo force model (:class:`~uenn_geo.models.ForceModel`).

    Implements ``forces`` for every model, and ``energy``, ``free_energy`` (equal to the
    energy) and ``stress`` (periodic cells) for models with an energy (``has_energy``:
    :class:`~uenn_geo.models.UENNForceField` built with ``conservative=True``,
    :class:`~uenn_geo.models.SchNetForceField`). Asking a direct-force model for an energy
    raises
    :class:`~ase.calculators.calculator.PropertyNotImplementedError`; this includes ASE's
    geometry optimisers, which log the energy. MD integrators (``VelocityVerlet``,
    ``Langevin``) need only forces and work with both kinds.

    The neighbour list is built with cutoff :math:`r_c` + ``skin`` and reused until an atom
    has moved more than ``skin / 2`` since the build or the cell, periodicity or atoms
    changed; every call filters it to :math:`r_c`, so results equal those of a fresh build
    (``skin=0`` rebuilds at every call). ``num_builds`` counts the builds. A model without a
    cutoff (:class:`~uenn_geo.models.PaperForceModel`) sees every atom and gets no list. For
    models with an energy the stress is computed with every call on a periodic cell of
    nonzero volume.

    The evaluation is :class:`uenn_geo.engines.Evaluator`'s, shared with the OpenMM and
    LAMMPS interfaces: with ``compile="auto"`` (the default) a model on structures of at least
    :data:`~uenn_geo.engines.evaluator.COMPILE_MIN_ATOMS` atoms runs through
    :func:`torch.compile` (compiled once per model and process, dynamic shapes, eager
    fallback); ``compile=True`` compiles on every structure; ``compile=False`` keeps the model
    eager. Several models (a list of models or files) make a committee
    (:class:`~uenn_geo.models.committee.Committee`): ``energy``, ``forces`` and ``stress`` are
    the members' means, and the results also hold, as MACE's calculator names them,
    ``energy_comm`` (every member's energy, :obj:`(M)`), ``energy_var`` (their variance),
    ``forces_comm`` (:obj:`(M, N, 3)`) and ``stress_var`` (the variance of the stress, Voigt
    order). Eager results equal
    :meth:`~uenn_geo.models.ForceModel.energy_forces` bit for bit, compiled ones to float
    round-off.

    Units: Angstrom, eV, eV/A, eV/A\ :sup:`3` (ASE's). Positions are converted to the model's
    dtype, results back to float64 NumPy arrays.

    Args:
        model_or_path (nn.Module or path): a model, or a file written by
            :func:`uenn_geo.models.save_model`; a list of them for a committee; a folder of
            ``uenn-geo train`` (with ``--committee``: its members).
        device (str or torch.device): where the model runs (default: ``"cpu"``).
        skin (float): Verlet skin :math:`\delta` in Angstrom (default: :obj:`1.0`).
        compile (bool or str): ``True``, ``False`` or ``"auto"`` (default), see above.
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.
    """

    def __init__(
        self,
        model_or_path: nn.Module | str | os.PathLike | list | tuple,
        device: str | torch.device = "cpu",
        skin: float = 1.0,
        compile: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.evaluator = Evaluator(model_or_path, device=device, skin=skin, compile=compile)
        self.device = self.evaluator.device
        self.model = self.evaluator.model
        self.has_energy = self.evaluator.has_energy
        self.implemented_properties = (
            ["energy", "free_energy", "forces", "stress"] if self.has_energy else ["forces"]
        )
        if len(self.evaluator.members) > 1:  # a committee: the members' results too
            self.implemented_properties.append("forces_comm")
            if self.has_energy:
                self.implemented_properties += ["energy_comm", "energy_var", "stress_var"]
        self.neighbours = self.evaluator.neighbours

    @property
    def num_builds(self) -> int:
        """How many times the neighbour list was built."""
        return self.evaluator.num_builds

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        if name in ("energy", "free_energy", "stress", "energies") and not self.has_energy:
            raise PropertyNotImplementedError(
                f"{name} is not available: {type(self.model).__name__} predicts forces "
                "directly and has no energy; train a model with conservative=True for "
                "energy, free_energy and stress"
            )
        return super().get_property(name, atoms, allow_calculation)

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | None = None,
        system_changes: list[str] | None = None,
    ) -> None:
        from ase.stress import full_3x3_to_voigt_6_stress

        properties = properties or ["forces"]
        system_changes = system_changes or all_changes
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if "numbers" in system_changes or "cell" in system_changes:  # a new structure
            skin = 0.0 if self.evaluator.neighbours is None else self.evaluator.neighbours.skin
            warn_graph_memory(atoms, self.model.cutoff, skin, self.model.dtype)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        # The stress costs little beside the forces: compute it whenever it is defined.
        want_stress = self.has_energy and bool(pbc.any()) and atoms.cell.rank == 3
        if "stress" in properties and not want_stress:
            raise PropertyNotImplementedError(
                "stress needs a periodic cell of nonzero volume (atoms.pbc and atoms.cell)"
            )
        cell = atoms.cell.array if pbc.any() else None
        out = self.evaluator(atoms.positions, atoms.numbers, cell, pbc, stress=want_stress)
        if out.energy is not None:
            self.results["energy"] = out.energy
            self.results["free_energy"] = out.energy
        if out.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out.stress)
        self.results["forces"] = out.forces
        if out.forces_comm is not None:  # a committee: the members' spread (MACE's names)
            self.results["forces_comm"] = out.forces_comm
        if out.energy_comm is not None:
            self.results["energy_comm"] = out.energy_comm
            self.results["energy_var"] = float(np.var(out.energy_comm))
        if out.stress_comm is not None:
            self.results["stress_var"] = full_3x3_to_voigt_6_stress(np.var(out.stress_comm, 0))
