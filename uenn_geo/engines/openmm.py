r"""uenn-geo force models in OpenMM, as an openmm-ml potential: ``MLPotential("uenn-geo")``.

.. code-block:: python

    from openmmml import MLPotential

    potential = MLPotential("uenn-geo", model="model.pt")  # a path or a ForceModel
    system = potential.createSystem(topology)               # or createMixedSystem(...)

openmm-ml finds the potential through the entry point ``uenn-geo`` of the group
``openmmml.potentials`` (declared by the package, in :mod:`uenn_geo.engines.openmm_plugin`,
whose :func:`~uenn_geo.engines.openmm_plugin.register` also registers it by hand, for source
checkouts without the entry point).

The forces are an :class:`openmm.PythonForce` (OpenMM >= 8.6) that calls a
:class:`~uenn_geo.engines.evaluator.Evaluator` (neighbour list with a Verlet skin,
:func:`torch.compile` with an eager fallback), on all atoms or on the subset ``atoms`` of
:meth:`MLPotential.createMixedSystem`, with periodic boxes when the topology has one. Units are
converted here and only here: positions and box vectors nm -> Angstrom, energies eV -> kJ/mol,
forces eV/A -> kJ/mol/nm.

``createSystem`` options (beside openmm-ml's own): ``model`` (required, given to
:class:`MLPotential`), ``device`` (default ``"cpu"``), ``skin`` (Angstrom, default 1.0) and
``compile`` (``True``, ``False`` or ``"auto"``, the default); each may be given to
:class:`MLPotential` or to ``createSystem``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import openmm
import openmm.app
from openmm import unit
from openmmml.mlpotential import MLPotentialImpl

from uenn_geo.engines.evaluator import Evaluator

__all__ = [
    "UENNPotentialImpl",
    "UENNForceFunction",
    "EV_TO_KJ_PER_MOL",
]

#: One eV per particle in kJ/mol (exact in the SI: :math:`e N_A / 1000`).
EV_TO_KJ_PER_MOL = 1.602176634e-19 * 6.02214076e23 / 1000.0
#: Angstrom per nm.
ANGSTROM_PER_NM = 10.0
_OPTIONS = ("device", "skin", "compile")


class UENNForceFunction:
    r"""The computation of the :class:`openmm.PythonForce`: an OpenMM ``State`` in, energy
    (kJ/mol) and forces (kJ/mol/nm) out.

    Args:
        evaluator (Evaluator): the model's evaluator.
        numbers: atomic numbers of the particles the force acts on, in order.
        periodic (bool): whether the box is periodic.
    """

    def __init__(self, evaluator: Evaluator, numbers: Iterable[int], periodic: bool) -> None:
        self.evaluator = evaluator
        self.numbers = np.asarray(list(numbers), dtype=np.int64)
        self.periodic = bool(periodic)

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        nm = unit.nanometer
        pos = state.getPositions(asNumpy=True).value_in_unit(nm) * ANGSTROM_PER_NM
        cell = None
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(nm)
            cell = np.asarray(box) * ANGSTROM_PER_NM
        out = self.evaluator(pos, self.numbers, cell)
        energy = 0.0 if out.energy is None else out.energy * EV_TO_KJ_PER_MOL
        return energy, out.forces * (EV_TO_KJ_PER_MOL * ANGSTROM_PER_NM)


class UENNPotentialImpl(MLPotentialImpl):
    """openmm-ml's implementation of ``MLPotential("uenn-geo", model=...)``.

    Args:
        name (str): the potential's name.
        model: a :class:`~uenn_geo.models.ForceModel` or a model file; a list of them
            for a committee (:class:`~uenn_geo.models.committee.Committee`: their mean).
        **options: ``device``, ``skin``, ``compile`` (see the module docstring).
    """

    def __init__(self, name: str, model: Any = None, **options: Any) -> None:
        if model is None:
            raise ValueError(
                'MLPotential("uenn-geo") needs model=: a model file written by '
                "uenn_geo.save_model (e.g. uenn-geo train's model.pt) or a ForceModel"
            )
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"unknown options {unknown} for {name}; known: {list(_OPTIONS)}")
        self.name = name
        self.model = model
        self.options = options

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Iterable[int] | None,
        forceGroup: int,
        **args: Any,
    ) -> None:
        options = {**self.options, **{k: v for k, v in args.items() if k in _OPTIONS}}
        included = list(topology.atoms())
        if atoms is not None:
            atoms = [int(i) for i in atoms]
            included = [included[i] for i in atoms]
        if any(atom.element is None for atom in included):
            raise ValueError(f"every atom {self.name} acts on needs an element in the Topology")
        numbers = [atom.element.atomic_number for atom in included]
        evaluator = Evaluator(self.model, **options)
        known = evaluator.model.atomic_numbers
        if known is not None and not set(numbers) <= set(known):
            raise ValueError(
                f"the topology holds atomic numbers {sorted(set(numbers) - set(known))} "
                f"that the model does not know (it knows {known})"
            )
        if not evaluator.has_energy:
            warnings.warn(
                f"{type(evaluator.model).__name__} predicts forces directly and has no energy: "
                "OpenMM reports its energy as 0 (train with conservative=True for energies)",
                RuntimeWarning,
                stacklevel=2,
            )
        periodic = topology.getPeriodicBoxVectors() is not None
        force = openmm.PythonForce(UENNForceFunction(evaluator, numbers, periodic))
        force.setForceGroup(forceGroup)
        force.setUsesPeriodicBoundaryConditions(periodic)
        if atoms is not None:
            force.setParticles(atoms)
        system.addForce(force)
