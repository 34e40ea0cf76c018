r"""The paths users run, for ``uenn-geo bench``: the ASE calculator as MD drives it, and MACE.

* ``uenn_calc``: :class:`~uenn_geo.calculator.UENNCalculator` (its defaults: Verlet skin 1 A,
  ``compile="auto"``) with a direct-force :class:`~uenn_geo.models.UENNForceField`;
* ``uenn_cons_calc``: the same calculator with ``conservative=True`` (forces from the energy,
  and the stress, which the calculator computes with every call on a periodic cell);
* ``mace``: a small MACE (``mace-torch``, an optional extra: ``pip install mace-torch``):
  hidden irreps 64x0e+64x1o, ``max_L`` 1, 2 interactions, correlation 3, 8 Bessel functions,
  ``r_max`` the system's cutoff, forces by autograd, given the same neighbour list as the
  other bare networks. Where ``mace`` is not importable the row is skipped with the reason.

A calculator row moves the atoms before every call as MD does: each atom has a velocity from
the Maxwell-Boltzmann distribution at the system's temperature and moves by it over 1 fs per
call, reversing every :data:`MDMotion.HALF_PERIOD` calls (so the structure does not drift
apart over many calls), and the calculator's Verlet skin decides when the list is rebuilt, as
in an MD run. Both of its timings (``model`` and ``total``) are such calls; ``nl_builds`` in
the row counts the rebuilds.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from uenn_geo.edges import Edges
from uenn_geo.experiments.bench.runners import BenchSystem, Runner, Unsupported, uenn_model

__all__ = ["CALCULATOR_MODELS", "MDMotion", "mace_model"]


class MDMotion:
    """Positions as in MD: thermal velocities, 1 fs per call, reversed every
    ``HALF_PERIOD`` calls (Angstrom, K)."""

    HALF_PERIOD = 10

    def __init__(self, positions: np.ndarray, masses: np.ndarray, temperature: float, seed=0):
        from ase import units

        rng = np.random.default_rng(seed)
        sigma = np.sqrt(units.kB * temperature / masses)[:, None]  # ASE velocity units
        self.velocity = rng.normal(size=positions.shape) * sigma * units.fs  # A per fs
        self.start = positions.copy()
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        phase = self.calls % (2 * self.HALF_PERIOD)
        steps = phase if phase <= self.HALF_PERIOD else 2 * self.HALF_PERIOD - phase
        return self.start + steps * self.velocity


class CalculatorRunner(Runner):
    """:class:`~uenn_geo.calculator.UENNCalculator` with its defaults, atoms moved as in MD."""

    conservative = False
    path = "calculator"
    compiled = None  # _start times the first call (compilation, where compile="auto" does)

    def __init__(self, system: BenchSystem) -> None:
        from ase import Atoms

        from uenn_geo.calculator import UENNCalculator

        if system.batch is not None:
            raise Unsupported("the ASE calculator takes one structure, not a batch")
        super().__init__(system)
        pos = system.pos
        self.model = uenn_model(system, self.conservative)
        periodic = system.cell is not None
        self.atoms = Atoms(
            numbers=system.z.cpu().numpy(),
            positions=pos.detach().cpu().double().numpy(),
            cell=system.cell[0].cpu().double().numpy() if periodic else None,
            pbc=periodic,
        )
        self.calc = UENNCalculator(self.model, device=pos.device)
        self.atoms.calc = self.calc
        self.motion = MDMotion(self.atoms.positions, self.atoms.get_masses(), system.temperature)

    @property
    def nl_builds(self) -> int:
        return self.calc.num_builds

    def forces(self, prepared: object) -> Tensor:
        self.atoms.positions = self.motion()
        return torch.from_numpy(self.atoms.get_forces())


class ConservativeCalculatorRunner(CalculatorRunner):
    """The calculator with ``conservative=True``: forces from the energy, and the stress."""

    conservative = True


def mace_model(cutoff: float, species: list[int], dtype: torch.dtype) -> torch.nn.Module:
    """A small MACE (64x0e+64x1o, L = 1, 2 interactions) with random weights."""
    previous = torch.get_default_dtype()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript annotations, e3nn's torch.load
            return _build_mace(cutoff, species, dtype)
    finally:
        torch.set_default_dtype(previous)


def _build_mace(cutoff: float, species: list[int], dtype: torch.dtype) -> torch.nn.Module:
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch.set_default_dtype(dtype)
    return modules.MACE(
        r_max=cutoff,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(species),
        hidden_irreps=o3.Irreps("64x0e+64x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(species)),
        avg_num_neighbors=30.0,
        atomic_numbers=species,
        correlation=3,
        gate=torch.nn.functional.silu,
    )


class MACERunner(Runner):
    """A small MACE on the shared neighbour list, forces by autograd."""

    def __init__(self, system: BenchSystem) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import mace  # noqa: F401
        except ImportError as err:
            raise Unsupported(
                f"mace-torch is not installed ({err}): pip install mace-torch"
            ) from err
        super().__init__(system)
        pos = system.pos
        species = system.species
        self.model = mace_model(system.cutoff, species, pos.dtype).to(pos.device).eval()
        self.model.requires_grad_(False)
        index = torch.as_tensor([species.index(int(z)) for z in system.z.tolist()])
        self.node_attrs = torch.nn.functional.one_hot(index, len(species)).to(pos).to(pos.device)
        batch = system.batch if system.batch is not None else torch.zeros_like(system.z)
        counts = torch.bincount(batch)
        self.batch, self.ptr = batch, torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def prepare(self, edges: Edges) -> dict[str, Tensor]:
        system = self.system
        shifts = (
            edges.shifts if edges.shifts is not None else system.pos.new_zeros(edges.num_edges, 3)
        )
        cell = system.cell if system.cell is not None else system.pos.new_zeros(1, 3, 3)
        unit = shifts @ torch.linalg.pinv(cell[0]) if system.cell is not None else shifts
        return {
            "positions": system.pos,
            "node_attrs": self.node_attrs,
            "edge_index": edges.index,  # (sender = centre i, receiver = j): r = x_j - x_i + s
            "shifts": shifts,
            "unit_shifts": torch.round(unit),
            "cell": cell.reshape(-1, 3),
            "batch": self.batch,
            "ptr": self.ptr,
        }

    def forces(self, prepared: dict[str, Tensor] | None) -> Tensor:
        inputs = self.prepare(self.system.neighbors()) if prepared is None else prepared
        out = self.model(dict(inputs), training=False, compute_force=True)
        return out["forces"].detach()


#: The models of this module, by name (added to ``BENCH_MODELS``).
CALCULATOR_MODELS = {
    "uenn_calc": CalculatorRunner,
    "uenn_cons_calc": ConservativeCalculatorRunner,
    "mace": MACERunner,
}
