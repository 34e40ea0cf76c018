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
from torch import Tensor, nn

from uenn_geo.edges import Edges
from uenn_geo.models.base import ForceModel
from uenn_geo.neighbors import radius_graph

__all__ = ["UENNCalculator"]


def _canonical_order(edge_index: Tensor, shifts: Tensor, cell: Tensor | None) -> Tensor:
    """Permutation sorting edges by centre, neighbour and integer cell shift (stable)."""
    keys = [edge_index[0], edge_index[1]]
    if cell is not None and shifts.shape[0]:
        # Integer shifts S from the Cartesian s = S C (rows of non-periodic directions are 0).
        cells = torch.linalg.pinv(cell.to(torch.float64))
        integer = torch.round(shifts.to(torch.float64) @ cells).long()
        keys += [integer[:, 0], integer[:, 1], integer[:, 2]]
    order = torch.arange(edge_index.shape[1], device=edge_index.device)
    for key in reversed(keys):
        order = order[torch.argsort(key[order], stable=True)]
    return order


class _NeighbourCache:
    r"""A neighbour list built with cutoff :math:`r_c + \delta` and reused while it is valid.

    Valid until an atom moved more than :math:`\delta / 2` since the build (then no pair can
    have come from beyond :math:`r_c + \delta` to within :math:`r_c`) or the cell, the
    periodicity or the number of atoms changed. Each call filters the stored pairs to
    :math:`|\mathbf{r}_{ij}| < r_c`, so the edges are those of a fresh build at :math:`r_c`,
    in a canonical order (by :math:`i`, :math:`j`, then cell shift), so that the results do
    not depend on when the list was built.
    """

    def __init__(self, cutoff: float, skin: float) -> None:
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.num_builds = 0
        self._key: tuple | None = None
        self._pos: Tensor | None = None
        self._edge_index: Tensor | None = None
        self._shifts: Tensor | None = None

    def _valid(self, pos: Tensor, key: tuple) -> bool:
        if self._pos is None or key != self._key or self._pos.shape != pos.shape:
            return False
        moved = (pos - self._pos).square().sum(dim=1).max() if pos.shape[0] else 0.0
        return bool(moved <= (0.5 * self.skin) ** 2) and self.skin > 0

    def __call__(self, pos: Tensor, cell: Tensor | None, pbc: Tensor | None) -> Edges:
        key = (
            None if cell is None else tuple(cell.reshape(-1).tolist()),
            None if pbc is None else tuple(pbc.reshape(-1).tolist()),
        )
        if not self._valid(pos, key):
            edge_index, shifts = radius_graph(pos, self.cutoff + self.skin, cell=cell, pbc=pbc)
            order = _canonical_order(edge_index, shifts, cell)
            self._edge_index, self._shifts = edge_index[:, order], shifts[order]
            self._pos = pos.clone()
            self._key = key
            self.num_builds += 1
        edge_index, shifts = self._edge_index, self._shifts
        r = pos[edge_index[1]] - pos[edge_index[0]] + shifts
        keep = r.square().sum(dim=1) < self.cutoff**2
        return Edges(edge_index[:, keep], shifts[keep], self.cutoff)


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

    Units: Angstrom, eV, eV/A, eV/A\ :sup:`3` (ASE's). Positions are converted to the model's
    dtype, results back to float64 NumPy arrays.

    Args:
        model_or_path (nn.Module or path): a model, or a file written by
            :func:`uenn_geo.models.save_model`.
        device (str or torch.device): where the model runs (default: ``"cpu"``).
        skin (float): Verlet skin :math:`\delta` in Angstrom (default: :obj:`1.0`).
        **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.
    """

    def __init__(
        self,
        model_or_path: nn.Module | str | os.PathLike,
        device: str | torch.device = "cpu",
        skin: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(model_or_path, nn.Module):
            model = model_or_path
        elif isinstance(model_or_path, (str, os.PathLike)):
            from uenn_geo.models import load_model

            model = load_model(model_or_path, map_location=device)
        else:
            raise TypeError(
                f"model_or_path must be a torch model or a path to a model file, got "
                f"{type(model_or_path).__name__}"
            )
        if not float(skin) >= 0.0:
            raise ValueError(f"skin must be >= 0 Angstrom, got {skin}")
        if not isinstance(model, ForceModel):
            raise TypeError(
                f"{type(model).__name__} is not a uenn-geo force model (uenn_geo.models."
                "ForceModel); see uenn_geo.models.MODELS"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.has_energy = bool(model.has_energy)
        self.implemented_properties = (
            ["energy", "free_energy", "forces", "stress"] if self.has_energy else ["forces"]
        )
        self.neighbours = None if model.cutoff is None else _NeighbourCache(model.cutoff, skin)

    @property
    def num_builds(self) -> int:
        """How many times the neighbour list was built."""
        return 0 if self.neighbours is None else self.neighbours.num_builds

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
        from torch_geometric.data import Data

        properties = properties or ["forces"]
        super().calculate(atoms, properties, system_changes or all_changes)
        atoms = self.atoms
        dtype = self.model.dtype
        pos = torch.as_tensor(atoms.get_positions(), dtype=dtype, device=self.device)
        pbc_np = np.asarray(atoms.pbc, dtype=bool)
        periodic = bool(pbc_np.any())
        cell = pbc = None
        if periodic:
            cell = torch.as_tensor(atoms.cell.array, dtype=dtype, device=self.device)
            pbc = torch.as_tensor(pbc_np).reshape(1, 3)
        # The stress costs little beside the forces: compute it whenever it is defined.
        want_stress = self.has_energy and periodic and atoms.cell.rank == 3
        if "stress" in properties and not want_stress:
            raise PropertyNotImplementedError(
                "stress needs a periodic cell of nonzero volume (atoms.pbc and atoms.cell)"
            )
        edges = None if self.neighbours is None else self.neighbours(pos, cell, pbc)
        z = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        data = Data(pos=pos, z=z)
        if cell is not None:
            data.cell = cell.unsqueeze(0)
        with torch.no_grad():  # the models take their own derivatives
            out = self.model.energy_forces(data, edges, compute_stress=want_stress)
        if out["energy"] is not None:
            energy = float(out["energy"].detach().sum())
            self.results["energy"] = energy
            self.results["free_energy"] = energy
        if out["stress"] is not None:
            stress = out["stress"][0].detach().cpu().double().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
        self.results["forces"] = out["forces"].detach().cpu().double().numpy()
