r"""One force evaluation for every engine: positions, cell and atomic numbers in, results out.

The ASE calculator (:class:`uenn_geo.calculator.UENNCalculator`), OpenMM
(:mod:`uenn_geo.engines.openmm`) and LAMMPS (:mod:`uenn_geo.engines.lammps`) all call an
:class:`Evaluator`; only the unit conversion at each engine's boundary differs. It holds

* the model, in evaluation mode on its device;
* a Verlet-skin neighbour list (:class:`NeighbourCache`), rebuilt only when an atom moved more
  than half the skin, and robust to the engines' wrapping of atoms back into the box;
* optionally :func:`torch.compile` of the network (:meth:`UENNForceField.compute_forces` for
  direct forces, :meth:`UENNForceField.atomic_energies` under
  :func:`uenn_geo.models.response.energy_response` for energy, forces and stress); energy
  models are compiled for the first structure's shape, with the neighbour list padded to a
  length kept from call to call (:data:`EDGE_SLACK`), so that MD runs one specialised graph
  (a structure of another shape compiles once more, for any shape), direct models for any
  shape; an eager fallback when compilation fails.

Units: the library's (Angstrom, eV, eV/A, eV/A\ :sup:`3`); the stress has ASE's sign,
:math:`\sigma = \frac{1}{V} \partial E / \partial \varepsilon` (positive under tension).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from uenn_geo.edges import Edges
from uenn_geo.models.base import ForceModel
from uenn_geo.models.committee import Committee, mean_of_members, model_files
from uenn_geo.models.response import energy_response
from uenn_geo.neighbors import radius_graph
from uenn_geo.nn import kernels

__all__ = [
    "Evaluator",
    "EvaluatorResult",
    "NeighbourCache",
    "COMPILE_MIN_ATOMS",
    "load_force_model",
]

log = logging.getLogger(__name__)

#: With ``compile="auto"``, models on structures of at least this many atoms run compiled
#: (below it, one compilation costs more than a short run saves; docs/engines.md).
COMPILE_MIN_ATOMS = 256

#: Spare room for edges in the compiled path of energy models: the list is padded to this fraction
#: above its length when first seen (then kept until it no longer fits), so that MD steps,
#: whose lists change length a little from step to step, all have one shape.
EDGE_SLACK = 0.05

#: Compiled functions per model, shared by every evaluator of the model in this process.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def load_force_model(model_or_path: Any, device: str | torch.device = "cpu") -> ForceModel:
    """A :class:`~uenn_geo.models.ForceModel` given as a model or a file of
    :func:`uenn_geo.models.save_model`, on ``device``, in evaluation mode; a list or tuple of
    several gives their :class:`~uenn_geo.models.committee.Committee`; a folder, its model
    files (:func:`~uenn_geo.models.committee.model_files`)."""
    if isinstance(model_or_path, (str, os.PathLike)) and os.path.isdir(model_or_path):
        model_or_path = model_files(model_or_path)  # a training folder (or a committee's)
    if isinstance(model_or_path, (list, tuple)):
        members = [load_force_model(m, device) for m in model_or_path]
        model_or_path = members[0] if len(members) == 1 else Committee(members)
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
    if not isinstance(model, ForceModel):
        raise TypeError(
            f"{type(model).__name__} is not a uenn-geo force model (uenn_geo.models."
            "ForceModel); see uenn_geo.models.MODELS"
        )
    return model.to(torch.device(device)).eval()


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


class NeighbourCache:
    r"""A neighbour list built with cutoff :math:`r_c + \delta` and reused while it is valid.

    Valid until an atom moved more than :math:`\delta / 2` since the build (then no pair can
    have come from beyond :math:`r_c + \delta` to within :math:`r_c`) or the cell, the
    periodicity or the number of atoms changed. Displacements are taken modulo the periodic
    lattice: an atom that an engine wrapped back into the box (OpenMM, LAMMPS) keeps the list,
    whose image shifts follow it. Each call filters the stored pairs to
    :math:`|\mathbf{r}_{ij}| < r_c`, in a canonical order (by :math:`i`, :math:`j`, then cell
    shift), so the edges are those of a fresh build at :math:`r_c` and the results do not
    depend on when the list was built; they come laid out in chunks
    (:meth:`~uenn_geo.edges.Edges.chunked`) where that layout applies.
    """

    def __init__(self, cutoff: float, skin: float) -> None:
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.num_builds = 0
        self._key: tuple | None = None
        self._pos: Tensor | None = None
        self._edge_index: Tensor | None = None
        self._shifts: Tensor | None = None
        self._cell: Tensor | None = None
        self._inverse: Tensor | None = None  # pinv of the cell (float64), per build

    def _lattice_jumps(self, pos: Tensor, pbc: Tensor | None) -> Tensor | None:
        """Whole lattice vectors :obj:`(N, 3)` by which atoms jumped since the build."""
        if self._cell is None:
            return None
        frac = (pos - self._pos).to(torch.float64) @ self._inverse
        whole = torch.round(frac)
        if pbc is not None:
            whole = whole * pbc.reshape(1, 3).to(whole)
        if not bool(whole.any()):
            return None
        return (whole @ self._cell.double()).to(pos.dtype)

    def _valid(self, pos: Tensor, key: tuple, pbc: Tensor | None) -> bool:
        if self._pos is None or key != self._key or self._pos.shape != pos.shape:
            return False
        if self.skin <= 0:
            return False
        jumps = self._lattice_jumps(pos, pbc) if pos.shape[0] else None
        if jumps is not None:  # follow the wrapped atoms: s_e -> s_e + L_i - L_j
            index = self._edge_index
            shifts = self._shifts + jumps[index[0]] - jumps[index[1]]
            order = _canonical_order(index, shifts, self._cell)
            self._edge_index, self._shifts = index[:, order], shifts[order]
            self._pos = self._pos + jumps
        moved = (pos - self._pos).square().sum(dim=1).max() if pos.shape[0] else 0.0
        return bool(moved <= (0.5 * self.skin) ** 2)

    def __call__(
        self, pos: Tensor, cell: Tensor | None, pbc: Tensor | None, chunked: bool = True
    ) -> Edges:
        """The pairs within the cutoff, laid out in chunks (``chunked``) or as a plain list
        sorted by centre (what the fused kernel of :mod:`uenn_geo.nn.kernels` reads)."""
        key = (
            None if cell is None else tuple(cell.reshape(-1).tolist()),
            None if pbc is None else tuple(pbc.reshape(-1).tolist()),
        )
        if not self._valid(pos, key, pbc):
            edge_index, shifts = radius_graph(pos, self.cutoff + self.skin, cell=cell, pbc=pbc)
            order = _canonical_order(edge_index, shifts, cell)
            self._edge_index, self._shifts = edge_index[:, order], shifts[order]
            self._pos = pos.clone()
            self._key = key
            self._cell = None if cell is None else cell.clone()
            self._inverse = None if cell is None else torch.linalg.pinv(cell.double())
            self.num_builds += 1
        edge_index, shifts = self._edge_index, self._shifts
        # index_select and one list of kept positions: about half the time of boolean-mask
        # indexing of the three tensors (864 argon atoms, 1 thread: 2.7 against 5.1 ms)
        r = pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0]) + shifts
        keep = torch.nonzero(r.square().sum(dim=1) < self.cutoff**2).squeeze(1)
        # filtered and laid out in chunks (Edges.chunked) with one gather of the kept pairs
        edges = Edges(edge_index, shifts, self.cutoff)
        return edges.chunked(pos.shape[0], subset=keep) if chunked else edges._select(keep)


@dataclass(frozen=True)
class EvaluatorResult:
    """What one call of :class:`Evaluator` returns (float64 NumPy arrays).

    Attributes:
        energy: total energy in eV (:obj:`None` for a direct-force model).
        forces: :obj:`(N, 3)` in eV/A.
        stress: :obj:`(3, 3)` in eV/A\\ :sup:`3`, ASE's sign (:obj:`None` unless asked for
            and defined: an energy model on a periodic cell of nonzero volume).
        volume: the cell's volume in A\\ :sup:`3` (:obj:`None` without a stress).
        energy_comm, forces_comm, stress_comm: for a committee
            (:class:`~uenn_geo.models.committee.Committee`), every member's energy
            :obj:`(M)`, forces :obj:`(M, N, 3)` and stress :obj:`(M, 3, 3)`, of which
            ``energy``, ``forces`` and ``stress`` are the means (:obj:`None` for one model).
    """

    energy: float | None
    forces: np.ndarray
    stress: np.ndarray | None = None
    volume: float | None = None
    energy_comm: np.ndarray | None = None
    forces_comm: np.ndarray | None = None
    stress_comm: np.ndarray | None = None

    @property
    def virial(self) -> np.ndarray | None:
        r"""The virial :math:`W = -V \sigma` :obj:`(3, 3)` in eV (:obj:`None` without stress)."""
        return None if self.stress is None else -self.volume * self.stress


def _check_compile(compile: bool | str) -> bool | str:
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    return compile


class Evaluator:
    r"""Energy, forces and stress of a force model for positions, cell and atomic numbers.

    Args:
        model_or_path (nn.Module or path): a :class:`~uenn_geo.models.ForceModel`, or a file
            written by :func:`uenn_geo.models.save_model`; a list of them for a committee
            (:class:`~uenn_geo.models.committee.Committee`: the members' mean, every member
            compiled or eager like one model, one neighbour list for all).
        device (str or torch.device): where the model runs (default: ``"cpu"``).
        skin (float): Verlet skin :math:`\delta` of the neighbour list in Angstrom
            (default: :obj:`1.0`; :obj:`0` rebuilds at every call).
        compile (bool or str): run the network of a :class:`~uenn_geo.models.UENNForceField`
            through :func:`torch.compile` (``True``), eagerly (``False``), or (``"auto"``, the
            default) compiled on structures of at least :data:`COMPILE_MIN_ATOMS` atoms and
            eager otherwise (docs/engines.md). ``compile`` may be changed between calls.
            The first compiled call compiles (``compile_seconds``); for an energy model, for
            its number of atoms and its padded neighbour list, so that later calls of that
            shape (MD) reuse it and the first call of another shape compiles once more, for
            any shape (torch's automatic dynamic shapes); for direct forces, for any shape.
            Other evaluators of the same model share the compiled function.
            If compilation fails (e.g. no C++ compiler), the call runs eagerly, a
            :class:`RuntimeWarning` says why, and the evaluator stays eager.

    Eager results equal :meth:`ForceModel.energy_forces` bit for bit; compiled ones to
    float round-off.
    """

    def __init__(
        self,
        model_or_path: nn.Module | str | os.PathLike,
        device: str | torch.device = "cpu",
        skin: float = 1.0,
        compile: bool | str = "auto",
    ) -> None:
        if not float(skin) >= 0.0:
            raise ValueError(f"skin must be >= 0 Angstrom, got {skin}")
        self.compile = _check_compile(compile)
        self.device = torch.device(device)
        self.model = load_force_model(model_or_path, self.device)
        #: The models evaluated: the committee's members, or the model alone.
        committee = isinstance(self.model, Committee)
        self.members: list[nn.Module] = list(self.model.members) if committee else [self.model]
        self.has_energy = bool(self.model.has_energy)
        cutoff = self.model.cutoff
        self.neighbours = None if cutoff is None else NeighbourCache(cutoff, skin)
        #: Seconds the first compiled call took (compilation included; for a committee, the
        #: sum over its members of each one's first compiled call); :obj:`None` before.
        self.compile_seconds: float | None = None
        #: Calls that ran compiled.
        self.compiled_calls = 0
        self._edge_room: tuple[int, int] = (-1, 0)  # (atoms, edges) of the padded lists

    @property
    def num_builds(self) -> int:
        """How many times the neighbour list was built."""
        return 0 if self.neighbours is None else self.neighbours.num_builds

    def _use_compiled(self, num_atoms: int) -> bool:
        if self.compile is False or not all(hasattr(m, "atomic_energies") for m in self.members):
            return False
        if self.compile is True:
            return True
        return num_atoms >= COMPILE_MIN_ATOMS  # "auto"

    def _fused(self, num_atoms: int) -> bool:
        """Whether every graph layer of the compiled call takes the fused kernel (which reads
        the plain list, so the chunked layout is not made)."""
        if self.device.type != "cpu" or not self._use_compiled(num_atoms):
            return False
        layers = [m for model in self.members for m in model.modules() if hasattr(m, "kernel")]
        return all(kernels.attach(m) for m in self.members) and all(
            m.kernel and m.radial is None for m in layers
        )

    def _compiled(self, model: nn.Module) -> dict[str, Any]:
        entry = _COMPILED.get(model)
        if entry is None:
            # energy models: torch's default, compiled for the first shape and for any shape
            # (automatic dynamic shapes) once another comes, the padded lists keeping MD at
            # the first; direct forces: any shape from the start (one shape gained little)
            options = {"fullgraph": True, "dynamic": None if self.has_energy else True}
            fn = model.atomic_energies if self.has_energy else model.compute_forces
            if self.device.type == "cpu":
                kernels.attach(model)  # the fused neighbour sums (uenn_geo.nn.kernels)
            entry = {"fn": torch.compile(fn, **options), "seconds": None}
            _COMPILED[model] = entry
        return entry

    def __call__(
        self,
        positions: Any,
        numbers: Any,
        cell: Any = None,
        pbc: Any = None,
        stress: bool = False,
    ) -> EvaluatorResult:
        r"""Evaluate the model.

        Args:
            positions: :obj:`(N, 3)` in Angstrom (array or tensor).
            numbers: atomic numbers :obj:`(N)`.
            cell: lattice vectors as rows :obj:`(3, 3)` in Angstrom (:obj:`None`: a free
                cluster).
            pbc: periodic directions :obj:`(3)` (default: all three when ``cell`` is given).
            stress (bool): also compute the stress (energy models, periodic cells of nonzero
                volume; otherwise ignored and ``stress`` is :obj:`None`).
        """
        dtype, device = self.model.dtype, self.device
        pos = torch.as_tensor(np.asarray(positions), dtype=dtype, device=device)
        z = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=device)
        cell_t = pbc_t = None
        if cell is not None:
            pbc = np.ones(3, dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
            if pbc.any():
                cell_t = torch.as_tensor(np.asarray(cell), dtype=dtype, device=device)
                pbc_t = torch.as_tensor(pbc).reshape(1, 3)
        volume = None
        if stress and self.has_energy and cell_t is not None:
            volume = float(torch.linalg.det(cell_t.double()).abs())
        if volume is not None and volume <= 0.0:
            volume = None
        edges = None
        if self.neighbours is not None:
            chunked = not self._fused(pos.shape[0])
            edges = self.neighbours(pos, cell_t, pbc_t, chunked=chunked)
        if self._use_compiled(pos.shape[0]):
            out = self._run_compiled(pos, z, cell_t, edges, volume is not None)
        else:
            out = self._run_eager(pos, z, cell_t, edges, volume is not None)
        energy = None if out["energy"] is None else float(out["energy"].detach().sum())
        sigma = out["stress"]
        sigma = None if sigma is None else sigma.detach().reshape(3, 3).cpu().double().numpy()
        forces = out["forces"].detach().cpu().double().numpy()
        comm: dict[str, np.ndarray | None] = {}
        members = out.get("members")
        if members is not None:  # a committee: every member's results too
            shapes = {"energy": (-1,), "forces": (-1, pos.shape[0], 3), "stress": (-1, 3, 3)}
            for key, shape in shapes.items():
                value = members[key]
                if value is not None and (key != "stress" or sigma is not None):
                    comm[f"{key}_comm"] = value.detach().reshape(shape).cpu().double().numpy()
        volume = volume if sigma is not None else None
        return EvaluatorResult(energy, forces, sigma, volume, **comm)

    def _run_eager(
        self, pos: Tensor, z: Tensor, cell: Tensor | None, edges: Edges | None, stress: bool
    ) -> dict[str, Tensor | None]:
        from torch_geometric.data import Data

        data = Data(pos=pos, z=z)
        if cell is not None:
            data.cell = cell.unsqueeze(0)
        with torch.no_grad():  # the models take their own derivatives
            return self.model.energy_forces(data, edges, compute_stress=stress)

    def _run_compiled(
        self, pos: Tensor, z: Tensor, cell: Tensor | None, edges: Edges | None, stress: bool
    ) -> dict[str, Tensor | None]:
        entries = [self._compiled(m) for m in self.members]
        if any(entry.get("failed") for entry in entries):
            return self._run_eager(pos, z, cell, edges, stress)
        if not self._fused(pos.shape[0]):
            edges = edges.chunked(pos.shape[0])
        if self.has_energy:  # one length while it fits: one compiled shape in MD
            edges = self._padded(edges, pos.shape[0])
        outs = []
        for model, entry in zip(self.members, entries, strict=True):
            species = model.species_index(z, pos.shape[0])
            first = entry["seconds"] is None
            start = time.perf_counter()
            try:
                outs.append(
                    _network(model, entry["fn"], pos, species, edges, cell if stress else None)
                )
            except Exception as err:  # compilation failed (or the data is wrong: eager says)
                out = self._run_eager(pos, z, cell, edges, stress)
                entry["failed"] = True
                log.debug("torch.compile failed", exc_info=err)
                warnings.warn(
                    f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); the model "
                    "runs eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return out
            if first:
                entry["seconds"] = time.perf_counter() - start
                name = type(model).__name__
                log.info("torch.compile of %s took %.1f s", name, entry["seconds"])
        self.compile_seconds = sum(entry["seconds"] for entry in entries)
        self.compiled_calls += 1
        return outs[0] if len(outs) == 1 else mean_of_members(outs)

    def _padded(self, edges: Edges, num_atoms: int) -> Edges:
        """``edges`` padded with :data:`EDGE_SLACK` to spare, the length kept while it fits."""
        atoms, room = self._edge_room
        if atoms != num_atoms or edges.num_edges > room:
            unit = edges.chunk or 1
            room = math.ceil(edges.num_edges * (1 + EDGE_SLACK) / unit) * unit
            self._edge_room = (num_atoms, room)
        return pad_edges(edges, room)


def pad_edges(edges: Edges, num_edges: int) -> Edges:
    """``edges`` with self-pairs of the last centre (atom 0 for an empty list; zero shift)
    appended up to ``num_edges``: whole chunks of that atom in a chunked layout, and a list
    sorted by centre stays sorted. A pair of length zero contributes nothing to the graph
    layers (eq. 31 is zero at :math:`r = 0`, and so are its derivatives)."""
    extra = num_edges - edges.num_edges
    if extra <= 0:
        return edges
    last = edges.index[0, -1:] if edges.num_edges else edges.index.new_zeros(1)
    index = torch.cat([edges.index, last.expand(2, extra)], dim=1)
    shifts = edges.shifts
    if shifts is not None:
        shifts = torch.cat([shifts, shifts.new_zeros(extra, shifts.shape[1])])
    return Edges(index, shifts, edges.cutoff, edges.chunk)


def _network(
    model: nn.Module, fn: Any, pos: Tensor, species: Tensor, edges: Edges, cell: Tensor | None
) -> dict[str, Tensor | None]:
    """The compiled network ``fn`` of ``model``: direct forces, or the energy response."""
    with torch.no_grad():
        if not model.has_energy:
            return {"energy": None, "forces": fn(pos, species, edges), "stress": None}
        batch = species.new_zeros(pos.shape[0])
        cells = None if cell is None else cell.unsqueeze(0)

        def energy(x: Tensor, e: Edges) -> Tensor:
            return fn(x, species, e).sum().reshape(1)

        # the compiled graph is differentiated from outside (autograd), where the fused
        # kernel's backward applies (uenn_geo.nn.kernels)
        with _weights_frozen(model), kernels.differentiated_outside(model):
            return energy_response(energy, pos, edges, batch, cells)


@contextlib.contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without ``requires_grad`` for the duration of a call.

    The compiled backward of an energy model then computes the derivatives in the positions
    and shifts only: compiled while the weights require gradients, it also computes theirs
    (which the forces never use), whatever :func:`torch.autograd.grad` asks for."""
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)
