"""Running uenn-geo force models inside MD engines: ASE, OpenMM and LAMMPS (docs/engines.md).

* :class:`~uenn_geo.engines.evaluator.Evaluator`: the one force evaluation that every engine
  calls (neighbour list with a Verlet skin, :func:`torch.compile` with an eager fallback);
* :mod:`uenn_geo.engines.openmm`: ``MLPotential("uenn-geo", model=...)`` of openmm-ml
  (needs ``openmm`` and ``openmmml``);
* :mod:`uenn_geo.engines.lammps`: a model as LAMMPS ``fix external`` through the library
  interface of the ``lammps`` package.

The engine modules import their engine only when used.
"""

from uenn_geo.engines.evaluator import (
    COMPILE_MIN_ATOMS,
    Evaluator,
    EvaluatorResult,
    NeighbourCache,
    load_force_model,
)

__all__ = [
    "Evaluator",
    "EvaluatorResult",
    "NeighbourCache",
    "COMPILE_MIN_ATOMS",
    "load_force_model",
]
