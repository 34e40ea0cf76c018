r"""Any extended-XYZ (or other ASE-readable) file with forces as a PyG data set.

Frames are read with :func:`ase.io.read` (``index=":"``), so every format ASE reads with
energies and forces works: extended XYZ from most ML-potential workflows, VASP ``OUTCAR`` and
``vasprun.xml``, ASE trajectories, ... ASE stores energies in eV, positions and cells in
Angstrom and forces in eV/Angstrom, which are this library's units: nothing is converted.

Units: positions and cells in Angstrom, energies in eV, forces in eV/Angstrom.

XYZ files are checked line by line before ASE reads them (:func:`check_xyz`): an empty file,
a frame cut short (too few atom lines or columns), an unknown element symbol or a bad atom
count is an error naming the frame and the line, as is a file that ends inside a number
(no final newline, fewer decimals than the line before); other files without a final newline
get a warning.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from uenn_geo.files import atomic_save, atomic_write

__all__ = [
    "ExtXYZDataset",
    "read_frames",
    "write_extxyz",
    "file_sha1",
    "read_atoms",
    "check_xyz",
    "ISOLATED_ATOM_TYPES",
]


def file_sha1(path: str | os.PathLike) -> str:
    r"""Hexadecimal SHA-1 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Version of the processed files (part of their names): bumped when the graphs change.
CACHE_VERSION = 2

#: ``config_type`` of the frames that hold isolated atoms (their energies are the E0s).
ISOLATED_ATOM_TYPES = ("IsolatedAtom", "isolated_atom")


def _results(atoms: Any) -> dict:
    calc = atoms.calc
    return dict(getattr(calc, "results", {}) or {}) if calc is not None else {}


def _lookup(atoms: Any, key: str | None, default: str, table: str) -> Any:
    """A quantity where ASE >= 3.23 puts it (calculator results) or in ``info``/``arrays``;
    an explicit ``key`` (e.g. ``REF_energy``) is looked up in ``info``/``arrays`` first."""
    results, stored = _results(atoms), getattr(atoms, table)
    if key is None:
        return results.get(default, stored.get(default))
    return stored.get(key, results.get(key))


def _full_stress(value: Any, here: str) -> Tensor:
    import numpy as np
    from ase.stress import voigt_6_to_full_3x3_stress

    value = np.asarray(value, dtype=np.float64).reshape(-1)
    if value.shape == (6,):
        value = voigt_6_to_full_3x3_stress(value)
    elif value.shape != (9,):
        raise ValueError(f"{here}: expected a stress of 6 (Voigt) or 9 values, got {value.size}")
    return torch.as_tensor(value).reshape(1, 3, 3)


def _check_finite(here: str, **values: Tensor) -> None:
    for name, value in values.items():
        if not bool(torch.isfinite(value).all()):
            bad = (~torch.isfinite(value)).nonzero()[0].tolist()
            raise ValueError(f"{here}: non-finite {name} (NaN or inf) at index {bad}")


def _check_distances(pos: Tensor, cell: Tensor, pbc: Tensor, here: str, dmin: float) -> None:
    from uenn_geo.neighbors import radius_graph

    if dmin <= 0 or (pos.shape[0] < 2 and not bool(pbc.any())):
        return
    try:
        edge_index, shifts = radius_graph(pos, dmin, cell=cell, pbc=pbc)
    except ValueError as err:  # e.g. a degenerate cell in a periodic direction
        raise ValueError(f"{here}: {err}") from err
    if edge_index.shape[1] > 0:
        i, j = edge_index[:, 0].tolist()
        d = (pos[j] - pos[i] + shifts[0]).norm().item()
        image = " (periodic images)" if bool(shifts[0].ne(0).any()) else ""
        raise ValueError(
            f"{here}: atoms {i} and {j} are {d:.4g} Angstrom apart{image}, closer than "
            f"min_distance={dmin}"
        )


def _forces_of(atoms: Any, key: str | None, here: str) -> Tensor:
    import numpy as np

    n = len(atoms)
    forces = _lookup(atoms, key, "forces", "arrays")
    if forces is None:
        if n == 1:  # an isolated atom feels no force
            return torch.zeros(1, 3, dtype=torch.float64)
        looked = "calculator results and arrays 'forces'" if key is None else repr(key)
        raise ValueError(
            f"{here}: no forces found (looked for {looked}); name the key with --forces-key"
        )
    forces = torch.as_tensor(np.asarray(forces, dtype=np.float64))
    if forces.shape != (n, 3):
        raise ValueError(
            f"{here}: expected forces of shape ({n}, 3) for {n} atoms, got {tuple(forces.shape)}"
        )
    return forces


def _energy_of(atoms: Any, key: str | None, here: str) -> Tensor | None:
    import numpy as np

    energy = _lookup(atoms, key, "energy", "info")
    if energy is None:
        return None
    energy = torch.as_tensor(np.asarray(energy, dtype=np.float64)).reshape(-1)
    if energy.shape != (1,):
        raise ValueError(f"{here}: expected one energy, got shape {tuple(energy.shape)}")
    if not math.isfinite(energy.item()):
        raise ValueError(f"{here}: non-finite energy {energy.item()}")
    return energy


def _frame_to_data(
    atoms: Any, frame: int, where: str, keys: dict[str, str | None], min_distance: float
) -> Data:
    r"""One checked ASE frame as a ``Data`` (``energy`` and ``stress`` when found)."""
    import numpy as np

    here = f"{where}, frame {frame}"
    n = len(atoms)
    if n == 0:
        raise ValueError(f"{here}: expected at least one atom, got 0")
    pos = torch.as_tensor(np.asarray(atoms.positions, dtype=np.float64))
    cell = torch.as_tensor(np.asarray(atoms.cell.array, dtype=np.float64)).reshape(1, 3, 3)
    pbc = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool)).reshape(1, 3)
    forces = _forces_of(atoms, keys["forces"], here)
    _check_finite(here, positions=pos, forces=forces, cell=cell)
    _check_distances(pos, cell, pbc, here, min_distance)
    data = Data(
        pos=pos,
        z=torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long),
        forces=forces,
        cell=cell,
        pbc=pbc,
        num_atoms=torch.tensor([n]),
        config_type=str(atoms.info.get("config_type", "Default")),
    )
    energy = _energy_of(atoms, keys["energy"], here)
    if energy is not None:
        data.energy = energy
    stress = _lookup(atoms, keys["stress"], "stress", "info")
    if stress is not None:
        data.stress = _full_stress(stress, here)
        _check_finite(here, stress=data.stress)
    return data


def read_frames(
    path: str | os.PathLike,
    energy_key: str | None = None,
    forces_key: str | None = None,
    min_distance: float = 0.5,
    format: str | None = None,
    stress_key: str | None = None,
) -> list[Data]:
    r"""Read and check every frame of an ASE-readable file as PyG ``Data`` objects.

    The graphs are those of :class:`ExtXYZDataset` (see there for the fields and checks); a
    :class:`ValueError` naming the file and the 0-based frame index is raised for a bad frame.

    Args:
        path (str): The file.
        energy_key (str, optional): Key of the energy in ``atoms.info``.
            (default: :obj:`None`, the calculator's ``"energy"``, then ``info["energy"]``)
        forces_key (str, optional): Key of the forces in ``atoms.arrays``.
            (default: :obj:`None`, the calculator's ``"forces"``, then ``arrays["forces"]``)
        min_distance (float, optional): Smallest allowed distance between two atoms (or
            periodic images) in Angstrom; :obj:`0` disables the check. (default: :obj:`0.5`)
        format (str, optional): ASE format name. (default: :obj:`None`, from the file name)
        stress_key (str, optional): Key of the stress (eV/A\ :sup:`3`, 6 Voigt or 9 values)
            in ``atoms.info``. (default: :obj:`None`, the calculator's ``"stress"``, then
            ``info["stress"]``)

    Returns:
        list[Data]: one graph per frame, with ``energy`` on every graph or on none.
    """

    if not min_distance >= 0:
        raise ValueError(f"Expected min_distance >= 0 (Angstrom), got {min_distance}")
    where = os.fspath(path)
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    frames = read_atoms(where, ":", format)
    data_list = [_frame_to_data(a, k, where, keys, min_distance) for k, a in enumerate(frames)]
    if not data_list:
        raise ValueError(f"{where}: no frames")
    _check_all_or_none(data_list, where, "energy", energy_key or "energy")
    _fill_stress(data_list)
    return data_list


_XYZ_SUFFIXES = (".xyz", ".extxyz")
_PROPERTIES = re.compile(r"""Properties=["']?([^\s"']+)""", re.IGNORECASE)


def read_atoms(path: str | os.PathLike, index: str | int = ":", format: str | None = None) -> Any:
    """``ase.io.read(path, index, format)`` after :func:`check_xyz` for XYZ files; every
    failure a :class:`ValueError` naming the file."""
    import ase.io

    where = os.fspath(path)
    if not os.path.isfile(where):
        raise FileNotFoundError(f"no structure file at {where}")
    xyz = format in ("xyz", "extxyz") or (format is None and where.endswith(_XYZ_SUFFIXES))
    if xyz:
        check_xyz(where)
    elif os.path.getsize(where) == 0:
        raise ValueError(f"{where}: the file is empty")
    try:
        return ase.io.read(where, index=index, format=format)
    except Exception as err:  # ASE raises many kinds for a malformed file
        kind = format or "a structure file"
        raise ValueError(f"{where}: cannot be read as {kind}: {err}") from err


def _columns(comment: str) -> int | None:
    """Columns per atom line that the comment's ``Properties=`` declares (None: plain XYZ)."""
    match = _PROPERTIES.search(comment)
    if match is None:
        return None
    fields = match.group(1).split(":")
    try:
        return sum(int(n) for n in fields[2::3])
    except ValueError:
        return None


def _check_atom_line(line: str, columns: int | None, here: str) -> None:
    from ase.data import atomic_numbers

    words = line.split()
    expected = columns if columns is not None else 4
    if len(words) < expected or (columns is not None and len(words) > columns):
        raise ValueError(f"{here}: expected {expected} columns, got {len(words)}: {line[:80]!r}")
    symbol = words[0]
    if symbol not in atomic_numbers and not symbol.isdigit():
        raise ValueError(f"{here}: unknown element symbol {symbol!r}")


def _decimals(line: str) -> int:
    """Digits after the decimal point of the last number of ``line`` (-1 without one)."""
    words = line.split()
    last = words[-1] if words else ""
    return len(last) - last.index(".") - 1 if "." in last else -1


def check_xyz(path: str | os.PathLike) -> int:
    """Check the line structure of an (extended) XYZ file: every frame's atom count, its
    atom lines, their columns (as ``Properties=`` declares) and element symbols; return the
    number of frames.

    Raises:
        ValueError: naming the frame (0-based) and the line (1-based) of the first problem:
            an empty file, a frame cut short, a missing or bad atom count, a line with too
            few or too many columns, an unknown element symbol.

    A file that does not end with a newline is an error when its last number has fewer
    decimals than the one above it (cut inside it), else it gets a warning.
    """
    where = os.fspath(path)
    with open(where, errors="replace") as f:
        lines = f.read().split("\n")
    if not any(line.strip() for line in lines):
        raise ValueError(f"{where}: the file is empty (no frames)")
    cut = lines[-1] != ""
    lines = lines[:-1] if not cut else lines
    frame = i = 0
    while i < len(lines):
        if not lines[i].strip() and not any(line.strip() for line in lines[i:]):
            break  # trailing blank lines
        here = f"{where}, frame {frame} (line {i + 1})"
        try:
            n = int(lines[i].strip())
        except ValueError:
            got = lines[i][:80]
            raise ValueError(f"{here}: expected the number of atoms, got {got!r}") from None
        if n < 0 or i + 1 + n >= len(lines):
            have = max(len(lines) - i - 2, 0)
            raise ValueError(f"{here}: the frame is cut short: {have} of {n} atom lines")
        columns = _columns(lines[i + 1])
        for k in range(i + 2, i + 2 + n):
            _check_atom_line(lines[k], columns, f"{where}, frame {frame} (line {k + 1})")
        i, frame = i + 2 + n, frame + 1
    if cut and _decimals(lines[-1]) < _decimals(lines[-2] if len(lines) > 1 else ""):
        raise ValueError(
            f"{where}, frame {frame - 1} (line {len(lines)}): the file ends inside a number "
            "(fewer decimals than the line before, and no final newline): it was cut short"
        )
    if cut:
        warnings.warn(
            f"{where} does not end with a newline: its last line (frame {frame - 1}, line "
            f"{len(lines)}) may have been cut, e.g. inside its last number; check that the "
            "file is complete",
            UserWarning,
            stacklevel=3,
        )
    return frame


def _check_all_or_none(data_list: list[Data], where: str, name: str, key: str) -> None:
    has = [getattr(d, name, None) is not None for d in data_list]
    if any(has) and not all(has):
        missing, present = has.index(False), has.index(True)
        raise ValueError(
            f"{where}, frame {missing}: no {name} ({key!r}) although frame {present} has one; "
            f"{name} must be given for all frames or for none"
        )


def _fill_stress(data_list: list[Data]) -> None:
    """Frames without a stress beside frames with one get zeros and ``stress_weight`` 0."""
    if not any(getattr(d, "stress", None) is not None for d in data_list):
        return
    for d in data_list:
        known = getattr(d, "stress", None) is not None
        if not known:
            d.stress = torch.zeros(1, 3, 3, dtype=torch.float64)
        d.stress_weight = torch.tensor([1.0 if known else 0.0], dtype=torch.float64)


class ExtXYZDataset(InMemoryDataset):
    r"""Frames of an extended-XYZ (or any ASE-readable) file with forces, as a PyG data set.

    Every frame of :obj:`path` (read with ``ase.io.read(path, index=":")``) becomes a graph with

    * ``pos`` :math:`(N, 3)`, Angstrom, float64,
    * ``z`` :math:`(N)`, long, atomic numbers,
    * ``forces`` :math:`(N, 3)`, eV/Angstrom, float64,
    * ``energy`` :math:`(1)`, eV, float64, when every frame has one (none may miss it; when
      no frame has one the attribute is absent everywhere),
    * ``cell`` :math:`(1, 3, 3)`, Angstrom, float64, lattice vectors as rows, and ``pbc``
      :math:`(1, 3)`, bool: always present, zeros and :obj:`False` for free clusters, so that
      batches collate to :math:`(B, 3, 3)` and :math:`(B, 3)` as
      :func:`~uenn_geo.neighbors.radius_graph` reads them,
    * ``num_atoms`` :math:`(1)`, long.

    Energies and forces are taken from ASE's calculator results (the ``SinglePointCalculator``
    that ASE attaches when a file has ``energy=...`` and a ``forces`` column; read from the
    stored results, so constraints such as fixed atoms do not zero any force), falling back to
    ``atoms.info["energy"]`` and ``atoms.arrays["forces"]``; :obj:`energy_key` and
    :obj:`forces_key` select other entries (e.g. ``"REF_energy"``, ``"REF_forces"``), as
    :obj:`stress_key` does for the stress (``stress`` :math:`(1, 3, 3)` in eV/A\ :sup:`3`,
    ASE's sign, with ``stress_weight`` :math:`(1)` 0 on frames that lack one). Each graph keeps
    its ``config_type`` (``"Default"`` when the frame has none). A single-atom frame without
    forces (an isolated atom) gets zero forces. ASE's
    units are eV and Angstrom, so no conversion is done.

    Each frame is checked; a :class:`ValueError` naming the file and the 0-based frame index is
    raised for a frame without forces, forces of a shape other than :math:`(N, 3)`, NaN or inf
    in positions, forces, cell or energy, an energy missing in some but not all frames, or two
    atoms closer than :obj:`min_distance` (periodic images included, found with
    :func:`~uenn_geo.neighbors.radius_graph`).

    Neighbour lists are not stored; the force models build them (with ``cell`` and ``pbc``)
    when a graph has no ``edge_index``, or pass ``transform=RadiusGraph(r_cut)`` from
    :mod:`uenn_geo.neighbors`.

    The processed file ``<root>/processed/<stem>_<sha1>_e<energy_key>_f<forces_key>_dmin<d>.pt``
    holds the first 12 hexadecimal digits of the SHA-1 of the file's bytes, so an edited file
    is processed anew; it is written atomically.

    Args:
        path (str): The file to read.
        root (str, optional): Root directory. (default: ``datasets/extxyz/<stem>`` with
            ``<stem>`` the file name without its extension)
        energy_key (str, optional): Key of the energy in ``atoms.info``. (default:
            :obj:`None`, the calculator's ``"energy"``, then ``info["energy"]``)
        forces_key (str, optional): Key of the forces in ``atoms.arrays``. (default:
            :obj:`None`, the calculator's ``"forces"``, then ``arrays["forces"]``)
        min_distance (float, optional): Smallest allowed distance between atoms in Angstrom;
            :obj:`0` disables the check. (default: :obj:`0.5`)
        format (str, optional): ASE format name. (default: :obj:`None`, from the file name)
        stress_key (str, optional): Key of the stress in ``atoms.info``. (default:
            :obj:`None`, the calculator's ``"stress"``, then ``info["stress"]``)
        transform, pre_transform, pre_filter, log, force_reload: As in
            :class:`~torch_geometric.data.InMemoryDataset`.

    Example:
        >>> ds = ExtXYZDataset("water.extxyz")  # doctest: +SKIP
        >>> ds[0]  # doctest: +SKIP
        Data(pos=[192, 3], z=[192], forces=[192, 3], cell=[1, 3, 3], pbc=[1, 3], num_atoms=[1],
        energy=[1])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        root: str | None = None,
        energy_key: str | None = None,
        forces_key: str | None = None,
        min_distance: float = 0.5,
        format: str | None = None,
        stress_key: str | None = None,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        log: bool = True,
        force_reload: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"No such file: {self.path!r}")
        if not min_distance >= 0:
            raise ValueError(f"Expected min_distance >= 0 (Angstrom), got {min_distance}")
        self.stem = Path(self.path).stem
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.stress_key = stress_key
        self.min_distance = float(min_distance)
        self.format = format
        self.sha1 = file_sha1(self.path)
        if root is None:
            root = os.path.join("datasets", "extxyz", self.stem)
        super().__init__(root, transform, pre_transform, pre_filter, log, force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> str:
        fmt = "" if self.format is None else f"_fmt{self.format}"
        return (
            f"{self.stem}_{self.sha1[:12]}_v{CACHE_VERSION}_e{self.energy_key or 'auto'}"
            f"_f{self.forces_key or 'auto'}_s{self.stress_key or 'auto'}"
            f"_dmin{self.min_distance!r}{fmt}.pt"
        )

    def download(self) -> None:
        pass

    def process(self) -> None:
        data_list = read_frames(
            self.path,
            self.energy_key,
            self.forces_key,
            self.min_distance,
            self.format,
            self.stress_key,
        )
        if self.pre_filter is not None:
            data_list = [d for d in data_list if self.pre_filter(d)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__), self.processed_paths[0])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, path={self.path!r})"


def write_extxyz(path: str | os.PathLike, data: Iterable[Data]) -> None:
    r"""Write graphs (a data set or a list of ``Data``) as an extended-XYZ file, atomically.

    Each graph needs ``pos`` (Angstrom) and ``z``; ``forces`` (eV/Angstrom), ``energy`` (eV),
    ``cell`` (Angstrom, :math:`(1, 3, 3)` or :math:`(3, 3)`) and ``pbc`` are written when
    present, energy and forces through ASE's ``SinglePointCalculator``, so that
    :class:`ExtXYZDataset` and other ASE-based tools read them back. ASE writes positions and
    forces with 8 decimals and the energy in full precision.

    Args:
        path (str): Output file.
        data (iterable of Data): The graphs.
    """
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for k, d in enumerate(data):
        if getattr(d, "pos", None) is None or getattr(d, "z", None) is None:
            raise ValueError(f"graph {k}: expected attributes pos and z, got {d}")
        cell = getattr(d, "cell", None)
        pbc = getattr(d, "pbc", None)
        atoms = ase.Atoms(
            numbers=d.z.detach().cpu().numpy(),
            positions=d.pos.detach().cpu().double().numpy(),
            cell=None if cell is None else cell.detach().cpu().double().reshape(3, 3).numpy(),
            pbc=None if pbc is None else pbc.detach().cpu().reshape(3).numpy(),
        )
        results: dict[str, Any] = {}
        if getattr(d, "energy", None) is not None:
            results["energy"] = float(d.energy.reshape(-1)[0])
        if getattr(d, "forces", None) is not None:
            results["forces"] = d.forces.detach().cpu().double().numpy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        images.append(atoms)
    atomic_write(path, lambda f: ase.io.write(f, images, format="extxyz"), mode="w")
