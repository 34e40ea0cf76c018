r"""The models under test of ``uenn-geo bench``: one runner per model, all on the same box.

A runner evaluates the forces on one periodic argon box (:class:`BenchSystem`) in two ways:
with a neighbour list prepared outside the timing (``forces(prepare(edges))``, the model
alone) and with the list built in the call (``forces(None)``, as in MD without a skin). All
lists are :class:`~uenn_geo.edges.Edges` of :func:`~uenn_geo.edges.build_edges` at the same
cutoff; the models see them only through their own contract
(:class:`~uenn_geo.models.base.ForceModel`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

from uenn_geo.data.lj import lennard_jones_pairs
from uenn_geo.edges import Edges, build_edges

__all__ = ["BENCH_MODELS", "BenchSystem", "Runner"]

#: Neighbours per atom that PyG's ``SchNet`` keeps by default (``max_num_neighbors``).
SCHNET_MAX_NEIGHBORS = 32


@dataclass
class BenchSystem:
    """One box on the device, in the benchmark dtype (Angstrom)."""

    pos: Tensor  # (N, 3)
    cell: Tensor  # (1, 3, 3)
    pbc: Tensor  # (1, 3)
    z: Tensor  # (N,)
    cutoff: float

    def neighbors(self) -> Edges:
        """Every pair within the cutoff, periodic images included."""
        return build_edges(self.pos, self.cutoff, cell=self.cell, pbc=self.pbc)

    def data(self) -> Data:
        """The box as a PyG ``Data`` (no neighbour list: a model builds its own)."""
        return Data(pos=self.pos, z=self.z, cell=self.cell, pbc=self.pbc)


class Runner:
    """A model under test.

    ``prepare(edges)`` turns the shared neighbour list into the model's input once, outside
    the timing; ``forces(prepared)`` evaluates with it, ``forces(None)`` builds the list too.
    """

    def __init__(self, system: BenchSystem) -> None:
        self.system = system

    def prepare(self, edges: Edges) -> Any:
        return edges

    def forces(self, prepared: Any) -> Tensor:
        raise NotImplementedError


class LJRunner(Runner):
    """Analytic shifted-force Lennard-Jones (argon), vectorised over the pair list."""

    def forces(self, prepared: Edges | None) -> Tensor:
        edges = self.system.neighbors() if prepared is None else prepared
        with torch.no_grad():
            return lennard_jones_pairs(
                self.system.pos,
                edges.index,
                edges.shifts,
                cutoff=self.system.cutoff,
                check=False,
            )[1]


class UENNRunner(Runner):
    """:class:`~uenn_geo.models.UENNForceField` (default constructor), forces predicted
    directly; the model lays the list out (:meth:`~uenn_geo.edges.Edges.chunked`) in the call."""

    def __init__(self, system: BenchSystem) -> None:
        from uenn_geo.models.forcefield import UENNForceField

        super().__init__(system)
        pos = system.pos
        model = UENNForceField(cutoff=system.cutoff, dtype=pos.dtype)
        self.model = model.to(pos.device).eval()
        self.data = system.data()

    def forces(self, prepared: Edges | None) -> Tensor:
        with torch.no_grad():
            return self.model(self.data, prepared)


class UENNCompiledRunner(UENNRunner):
    """The same force field, its network (``compute_forces``) under :func:`torch.compile`.

    ``fullgraph=True, dynamic=True``: one graph for any number of atoms and edges, as MD
    needs (the neighbour list changes every step). The compilation happens in the untimed
    first call (its duration is reported as ``compile_s``); checks, neighbour search and the
    chunk layout (:meth:`~uenn_geo.edges.Edges.chunked`) stay eager, as in
    :meth:`~uenn_geo.models.UENNForceField.energy_forces`.
    """

    def __init__(self, system: BenchSystem) -> None:
        super().__init__(system)
        self.compiled = torch.compile(self.model.compute_forces, fullgraph=True, dynamic=True)

    def forces(self, prepared: Edges | None) -> Tensor:
        model, data = self.model, self.data
        num_atoms = data.pos.shape[0]
        with torch.no_grad():
            species = model.species_index(data.z, num_atoms)
            edges = model.edges(data, prepared).chunked(num_atoms)
            return self.compiled(data.pos, species, edges)


class SchNetRunner(Runner):
    r"""PyG's ``SchNet`` with its default sizes (128 channels and filters, 6 interactions,
    50 Gaussians) as a force field, :math:`\mathbf{F} = -\partial E / \partial \mathbf{r}`:
    :class:`~uenn_geo.models.schnet.SchNetForceField`, every neighbour within the cutoff."""

    max_num_neighbors: int | None = None

    def __init__(self, system: BenchSystem) -> None:
        from uenn_geo.models.schnet import SchNetForceField

        super().__init__(system)
        pos = system.pos
        model = SchNetForceField(
            cutoff=system.cutoff,
            hidden_channels=128,
            num_filters=128,
            num_interactions=6,
            num_gaussians=50,
            max_num_neighbors=self.max_num_neighbors,
            dtype=pos.dtype,
        )
        self.model = model.to(pos.device).eval().requires_grad_(False)
        self.data = system.data()

    def forces(self, prepared: Edges | None) -> Tensor:
        return self.model.energy_forces(self.data, prepared)["forces"]


class SchNet32Runner(SchNetRunner):
    """SchNet as it comes: the 32 nearest neighbours of each atom, selected in every call
    (:func:`~uenn_geo.edges.nearest_edges`, inside :class:`SchNetForceField`)."""

    max_num_neighbors = SCHNET_MAX_NEIGHBORS


#: Models the benchmark knows, by name: a class taking the box.
BENCH_MODELS: dict[str, Callable[[BenchSystem], Runner]] = {
    "uenn": UENNRunner,
    "uenn_compiled": UENNCompiledRunner,
    "schnet": SchNetRunner,
    "schnet32": SchNet32Runner,
    "lj": LJRunner,
}
