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

__all__ = ["BENCH_MODELS", "BenchSystem", "Runner", "Unsupported"]

#: Neighbours per atom that PyG's ``SchNet`` keeps by default (``max_num_neighbors``).
SCHNET_MAX_NEIGHBORS = 32


@dataclass
class BenchSystem:
    """One box (or a batch of molecules) on the device, in the benchmark dtype (Angstrom).

    ``cell`` and ``pbc`` are :obj:`None` for free molecules, ``batch`` is :obj:`None` for
    one structure; ``temperature`` (K) sets how the calculator rows move the atoms.
    """

    pos: Tensor  # (N, 3)
    cell: Tensor | None  # (1, 3, 3)
    pbc: Tensor | None  # (1, 3)
    z: Tensor  # (N,)
    cutoff: float
    batch: Tensor | None = None  # (N,)
    name: str = "argon"
    temperature: float = 94.4

    @property
    def species(self) -> list[int]:
        """The atomic numbers present, sorted."""
        return sorted(set(self.z.tolist()))

    @property
    def num_graphs(self) -> int:
        return 1 if self.batch is None else int(self.batch.max()) + 1

    def neighbors(self) -> Edges:
        """Every pair within the cutoff, periodic images included."""
        return build_edges(self.pos, self.cutoff, batch=self.batch, cell=self.cell, pbc=self.pbc)

    def data(self) -> Data:
        """The box as a PyG ``Data`` (no neighbour list: a model builds its own)."""
        data = Data(pos=self.pos, z=self.z)
        if self.cell is not None:
            data.cell, data.pbc = self.cell, self.pbc
        if self.batch is not None:
            data.batch = self.batch
            data.num_graphs = self.num_graphs
        return data


class Unsupported(Exception):
    """A model that cannot run on a system (the row is skipped with this reason)."""


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

    def __init__(self, system: BenchSystem) -> None:
        if system.name != "argon":
            raise Unsupported("Lennard-Jones is argon's potential")
        super().__init__(system)

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


def uenn_model(system: BenchSystem, conservative: bool) -> Any:
    """The default :class:`~uenn_geo.models.UENNForceField` for ``system``, in eval mode."""
    from uenn_geo.models.forcefield import UENNForceField

    model = UENNForceField(
        cutoff=system.cutoff,
        dtype=system.pos.dtype,
        conservative=conservative,
        atomic_numbers=system.species,
    )
    return model.to(system.pos.device).eval()


class UENNRunner(Runner):
    """:class:`~uenn_geo.models.UENNForceField` (default constructor), forces predicted
    directly; the model lays the list out (:meth:`~uenn_geo.edges.Edges.chunked`) in the call."""

    conservative = False

    def __init__(self, system: BenchSystem) -> None:
        super().__init__(system)
        self.model = uenn_model(system, self.conservative)
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
            batch = getattr(data, "batch", None)
            if batch is None:
                return self.compiled(data.pos, species, edges)
            return self.compiled(data.pos, species, edges, batch, self.system.num_graphs)


class SchNetRunner(Runner):
    r"""PyG's ``SchNet`` with its default sizes (128 channels and filters, 6 interactions,
    50 Gaussians) as a force field, :math:`\mathbf{F} = -\partial E / \partial \mathbf{r}`:
    :class:`~uenn_geo.models.schnet.SchNetForceField`, every neighbour within the cutoff."""

    max_num_neighbors: int | None = None
    hidden_channels: int = 128
    num_interactions: int = 6

    def __init__(self, system: BenchSystem) -> None:
        from uenn_geo.models.schnet import SchNetForceField

        super().__init__(system)
        pos = system.pos
        model = SchNetForceField(
            cutoff=system.cutoff,
            hidden_channels=self.hidden_channels,
            num_filters=self.hidden_channels,
            num_interactions=self.num_interactions,
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


class SchNetAccuracyRunner(SchNetRunner):
    """SchNet in the configuration of the accuracy comparisons (``docs/accuracy.md``):
    :class:`SchNetForceField` defaults, 64 channels and filters, 3 interactions, 50 Gaussians,
    every neighbour within the cutoff, forces by autograd."""

    hidden_channels = 64
    num_interactions = 3


class UENNConservativeRunner(UENNRunner):
    """:class:`~uenn_geo.models.UENNForceField` with ``conservative=True``: forces from the
    energy (:meth:`~uenn_geo.models.UENNForceField.energy_forces`, eager), the bare network."""

    conservative = True

    def forces(self, prepared: Edges | None) -> Tensor:
        with torch.no_grad():  # the model takes its own derivatives
            return self.model.energy_forces(self.data, prepared)["forces"]


#: Models the benchmark knows, by name: a class taking the box.
BENCH_MODELS: dict[str, Callable[[BenchSystem], Runner]] = {
    "uenn": UENNRunner,
    "uenn_compiled": UENNCompiledRunner,
    "schnet": SchNetRunner,
    "schnet32": SchNet32Runner,
    "lj": LJRunner,
    "uenn_cons": UENNConservativeRunner,
    "schnet_acc": SchNetAccuracyRunner,
}
