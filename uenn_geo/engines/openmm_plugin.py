"""The entry point that openmm-ml loads (group ``openmmml.potentials``, name ``uenn-geo``).

openmm-ml loads its plug-ins while its own module is being imported, so this module imports
nothing of OpenMM at import time: were the entry point in :mod:`uenn_geo.engines.openmm`,
``import uenn_geo.engines.openmm`` would import openmm-ml, which would import the half-built
module again. The factory builds the potential from :mod:`uenn_geo.engines.openmm` when asked.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UENNPotentialImplFactory", "register", "POTENTIAL_NAME"]

#: The name of the potential in openmm-ml's registry.
POTENTIAL_NAME = "uenn-geo"


class UENNPotentialImplFactory:
    """openmm-ml's ``MLPotentialImplFactory`` for ``MLPotential("uenn-geo", model=...)``."""

    def createImpl(self, name: str, **args: Any) -> Any:  # noqa: N802 - openmm-ml's name
        from uenn_geo.engines.openmm import UENNPotentialImpl

        return UENNPotentialImpl(name, **args)


def register(name: str = POTENTIAL_NAME) -> None:
    """Register the potential with openmm-ml under ``name`` by hand (the installed package
    does it through its entry point)."""
    from openmmml.mlpotential import MLPotential

    MLPotential.registerImplFactory(name, UENNPotentialImplFactory())
