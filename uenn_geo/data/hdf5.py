r"""Data sets larger than memory: structure files prepared once into HDF5 shards, read lazily.

:func:`prepare` reads extended-XYZ (or anything ASE reads) in a stream (one frame at a time,
in constant memory: :func:`_atoms_of`), checks each frame as
:func:`~uenn_geo.data.read_frames` does, assigns it to the training, validation or test set
(a seeded draw per frame), and writes each set as
HDF5 shards of at most ``shard_frames`` frames (h5py; one file per shard, contiguous arrays so
that a frame is a few small reads). The statistics training needs are computed in the same
pass and stored in ``meta.json`` per set (see :class:`PreparedStats`), so that training needs
no pass over the data at start. Isolated-atom frames (``config_type`` ``IsolatedAtom``) are
kept out of the sets; their energies are stored as E0s. Everything is written into a temporary
directory beside the target, renamed into place at the end (a prepared directory is complete or
absent). Memory is bounded by one shard per set, whatever the size of the input.

:class:`H5Frames` is the lazy data set (a :class:`torch_geometric.data.Dataset`): ``len`` and
the shard index come from ``meta.json``; each frame is read from its shard on access (of an
open shard only its small per-frame columns are kept in memory, see :class:`_OpenShard`), the
files being opened per process (so DataLoader worker
processes each open their own handles) and at most :data:`MAX_OPEN_FILES` at a time.

Layout of a shard ``<set>-NNNNN.h5`` with :math:`F` frames and :math:`A` atoms: ``offsets``
:math:`(F+1)` int64, ``pos`` and ``forces`` :math:`(A, 3)` float64 (A, eV/A), ``z``
:math:`(A)` uint8, ``cell`` :math:`(F, 3, 3)`, ``pbc`` :math:`(F, 3)` bool, ``config_type``
:math:`(F)` strings, and where present ``energy`` :math:`(F)` (eV), ``stress`` :math:`(F, 3,
3)` with ``stress_weight`` :math:`(F)`.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, Dataset

from uenn_geo.data.extxyz import _frame_to_data

__all__ = ["prepare", "H5Frames", "PreparedStats", "read_meta", "is_prepared", "SETS"]

#: The sets of a prepared directory.
SETS = ("train", "val", "test")

#: Version of the prepared layout (``meta.json`` ``"format_version"``).
FORMAT_VERSION = 1

#: Shard files a process keeps open at once (least recently used closed first): about
#: 0.2 MB each, while a file opened anew costs about 1 ms, and frames are drawn at random.
MAX_OPEN_FILES = 128


@dataclass
class PreparedStats:
    """The statistics of one set, computed while it is written (``meta.json``).

    Attributes:
        frames, atoms: how many.
        species: the atomic numbers present, sorted; ``atoms_per_species`` their counts.
        force_sq_sum, force_components: :math:`\\sum F^2` and the number of components;
            ``force_rms`` their ratio's root (eV/A, the models' force scale).
        energies: frames with an energy; ``mean_energy_per_atom`` the mean of :math:`E/N`.
        gram, rhs: the normal equations :math:`A^\\top A`, :math:`A^\\top b` of the per-species
            least squares :math:`E_g \\approx \\sum_z n_{gz} \\mu_z` (rows and columns in
            ``species`` order); ``e0s_lstsq`` their solution ``{Z: eV}``.
        edges: neighbour pairs within ``cutoff``; ``avg_num_neighbors`` = edges / atoms.
        has_stress: whether any frame carries a stress.
    """

    frames: int = 0
    atoms: int = 0
    species: list[int] = field(default_factory=list)
    atoms_per_species: dict[str, int] = field(default_factory=dict)
    force_sq_sum: float = 0.0
    force_components: int = 0
    force_rms: float = 0.0
    energies: int = 0
    energy_per_atom_sum: float = 0.0
    mean_energy_per_atom: float | None = None
    gram: dict[str, dict[str, float]] = field(default_factory=dict)
    rhs: dict[str, float] = field(default_factory=dict)
    e0s_lstsq: dict[str, float] | None = None
    cutoff: float = 0.0
    edges: int = 0
    avg_num_neighbors: float = 0.0
    has_stress: bool = False

    def add(self, data: Data, edges: int) -> None:
        """Count one frame (with its number of neighbour pairs)."""
        n = int(data.pos.shape[0])
        self.frames += 1
        self.atoms += n
        self.edges += edges
        zs, counts = np.unique(data.z.numpy(), return_counts=True)
        for z, c in zip(zs.tolist(), counts.tolist(), strict=True):
            self.atoms_per_species[str(z)] = self.atoms_per_species.get(str(z), 0) + c
        f = data.forces.numpy()
        self.force_sq_sum += float(np.square(f).sum())
        self.force_components += f.size
        self.has_stress |= getattr(data, "stress", None) is not None
        energy = getattr(data, "energy", None)
        if energy is None:
            return
        e = float(energy.reshape(-1)[0])
        self.energies += 1
        self.energy_per_atom_sum += e / n
        for z1, c1 in zip(zs.tolist(), counts.tolist(), strict=True):
            row = self.gram.setdefault(str(z1), {})
            for z2, c2 in zip(zs.tolist(), counts.tolist(), strict=True):
                row[str(z2)] = row.get(str(z2), 0.0) + float(c1 * c2)
            self.rhs[str(z1)] = self.rhs.get(str(z1), 0.0) + c1 * e

    def finish(self) -> None:
        """Derive the means, the force RMS and the least-squares E0s from the sums."""
        self.species = sorted(int(z) for z in self.atoms_per_species)
        if self.force_components:
            self.force_rms = float(np.sqrt(self.force_sq_sum / self.force_components))
        if self.atoms:
            self.avg_num_neighbors = self.edges / self.atoms
        if not self.energies:
            return
        self.mean_energy_per_atom = self.energy_per_atom_sum / self.energies
        keys = [str(z) for z in self.species]
        a = torch.tensor(
            [[self.gram.get(i, {}).get(j, 0.0) for j in keys] for i in keys], dtype=torch.float64
        )
        b = torch.tensor([self.rhs.get(i, 0.0) for i in keys], dtype=torch.float64)
        mu = torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        self.e0s_lstsq = {k: float(v) for k, v in zip(keys, mu.tolist(), strict=True)}


#: Frames whose arrays a shard writer packs into one array each (see :class:`_ShardWriter`).
PACK_FRAMES = 1024


class _ShardWriter:
    """Buffers one set's frames and writes them as shards of ``shard_frames`` frames.

    The arrays of every :data:`PACK_FRAMES` frames are packed into one array per field (a few
    small arrays kept per frame cost several times their size in memory: about 12 KB
    against 4 KB per 35-atom frame), and a shard's packs are written into its datasets one
    after another, without a copy of the whole shard.
    """

    def __init__(self, directory: Path, name: str, shard_frames: int) -> None:
        self.directory, self.name, self.shard_frames = directory, name, shard_frames
        self.loose: list[tuple[np.ndarray, ...]] = []  # pos, forces, z, cell, pbc per frame
        self.packs: list[tuple[np.ndarray, ...]] = []
        self.sizes: list[int] = []
        self.types: list[str] = []
        self.energy: list[float | None] = []
        self.stress: list[np.ndarray | None] = []
        self.shards: list[dict[str, Any]] = []

    def add(self, data: Data) -> None:
        energy, stress = getattr(data, "energy", None), getattr(data, "stress", None)
        self.loose.append((
            data.pos.numpy(), data.forces.numpy(), data.z.numpy().astype(np.uint8),
            data.cell.numpy().reshape(1, 3, 3), data.pbc.numpy().reshape(1, 3),
        ))  # fmt: skip
        self.sizes.append(int(data.pos.shape[0]))
        self.types.append(data.config_type)
        self.energy.append(None if energy is None else float(energy.reshape(-1)[0]))
        self.stress.append(None if stress is None else stress.numpy().reshape(3, 3))
        if len(self.loose) >= PACK_FRAMES:
            self._pack()
        if len(self.sizes) >= self.shard_frames:
            self.flush()

    def _pack(self) -> None:
        if self.loose:
            self.packs.append(tuple(np.concatenate(a) for a in zip(*self.loose, strict=True)))
            self.loose = []

    def flush(self) -> None:
        if not self.sizes:
            return
        import h5py

        self._pack()
        file = f"{self.name}-{len(self.shards):05d}.h5"
        packs, sizes, types = self.packs, self.sizes, self.types
        energy, stress = self.energy, self.stress
        self.packs, self.sizes, self.types, self.energy, self.stress = [], [], [], [], []
        with h5py.File(self.directory / file, "w") as f:
            f["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            for k, name in enumerate(("pos", "forces", "z", "cell", "pbc")):
                first = packs[0][k]
                rows = sum(len(pack[k]) for pack in packs)
                out = f.create_dataset(name, (rows, *first.shape[1:]), dtype=first.dtype)
                start = 0
                for pack in packs:
                    out[start : start + len(pack[k])] = pack[k]
                    start += len(pack[k])
            f.create_dataset("config_type", data=types, dtype=h5py.string_dtype())
            if energy[0] is not None:
                f["energy"] = np.array(energy, dtype=np.float64)
            if any(x is not None for x in stress):
                zero = np.zeros((3, 3))
                f["stress"] = np.stack([zero if x is None else x for x in stress])
                f["stress_weight"] = np.array([float(x is not None) for x in stress])
        self.shards.append({"file": file, "frames": len(sizes), "atoms": sum(sizes)})


#: Frames whose distance checks and neighbour counts share one neighbour search.
CHUNK_FRAMES = 64


def _edges_per_frame(frames: Sequence[Data], r_cut: float) -> list[int]:
    """The number of neighbour pairs within ``r_cut`` of each frame, in one
    :func:`~uenn_geo.neighbors.radius_graph` call for all of them (free clusters: one
    vectorised search; the same edges as a call per frame)."""
    from uenn_geo.neighbors import radius_graph

    pos = torch.cat([d.pos for d in frames])
    sizes = torch.tensor([d.pos.shape[0] for d in frames])
    batch = torch.repeat_interleave(torch.arange(len(frames)), sizes)
    cell = torch.cat([d.cell.reshape(1, 3, 3) for d in frames])
    pbc = torch.cat([d.pbc.reshape(1, 3) for d in frames])
    edges = radius_graph(pos, r_cut, batch=batch, cell=cell, pbc=pbc, return_shifts=False)
    return torch.bincount(batch[edges[0]], minlength=len(frames)).tolist()


def _check_distances_of(chunk: list[tuple[int, Data]], where: str, dmin: float) -> None:
    """The distance check of :func:`~uenn_geo.data.read_frames` on many frames at once: one
    search finds the first frame with a pair closer than ``dmin``, whose own check then
    raises the message naming the frame, the atoms and the distance."""
    from uenn_geo.data.extxyz import _check_distances

    if dmin <= 0 or not chunk:
        return
    try:
        counts = _edges_per_frame([d for _, d in chunk], dmin)
        first = next((i for i, c in enumerate(counts) if c), None)
    except ValueError:  # e.g. a degenerate cell: frame by frame, for the message
        first = 0
    if first is None:
        return
    for k, data in chunk[first:]:
        _check_distances(data.pos, data.cell, data.pbc, f"{where}, frame {k}", dmin)


def _stream(
    paths: Sequence[str | os.PathLike],
    keys: dict[str, str | None],
    min_distance: float,
    cutoff: float,
) -> Iterable[tuple[Data, int]]:
    """Checked frames of every file in turn, each with its number of neighbour pairs within
    ``cutoff``. The files are read one frame at a time (:func:`_atoms_of`); the distance
    checks and the neighbour counts run on chunks of :data:`CHUNK_FRAMES` frames: a frame is
    passed on once its whole chunk is checked (so a pair too close is reported before the
    caller sees the chunk's frames; among the checks, the first bad frame's error)."""
    for path in paths:
        where = os.fspath(path)
        frames = _read(where, keys)
        chunk: list[tuple[int, Data]] = []
        while True:
            try:
                item = next(frames, None)
            except Exception:
                _check_distances_of(chunk, where, min_distance)  # an earlier frame's first
                raise
            if item is not None:
                chunk.append(item)
            if chunk and (item is None or len(chunk) >= CHUNK_FRAMES):
                _check_distances_of(chunk, where, min_distance)
                data = [d for _, d in chunk]
                edges = _edges_per_frame(data, cutoff) if cutoff > 0 else [0] * len(data)
                yield from zip(data, edges, strict=True)
                chunk = []
            if item is None:
                break


def _read(where: str, keys: dict[str, str | None]) -> Iterable[tuple[int, Data]]:
    """The frames of one file with their index, checked as :func:`~uenn_geo.data.read_frames`
    checks them but for the distances (:func:`_check_distances_of`)."""
    if not os.path.isfile(where):
        raise FileNotFoundError(f"No such file: {where!r}")
    try:
        for k, atoms in enumerate(_atoms_of(where)):
            yield k, _frame_to_data(atoms, k, where, keys, 0.0)
    except ValueError:
        raise
    except Exception as err:  # ASE raises many kinds for a malformed file
        raise ValueError(f"{where}: cannot be read as a structure file: {err}") from err


def _atoms_of(where: str) -> Iterator[Any]:
    """The ASE frames of one file, one at a time, in constant memory.

    An extended-XYZ file (``.xyz``, ``.extxyz``) is cut into frames here (the atom count,
    the comment line, the atoms and any ``VEC`` lines, until a blank line as ASE stops) and
    each frame is parsed by ASE's own reader, :func:`ase.io.extxyz.read_xyz`:
    :func:`ase.io.iread` would first scan the whole file and keep an index entry per frame,
    a pass and a list that grow with the file. Other formats go through
    :func:`ase.io.iread`.
    """
    import ase.io
    from ase.io.extxyz import XYZError, read_xyz

    if not where.lower().endswith((".xyz", ".extxyz")):
        yield from ase.io.iread(where, index=":")
        return
    with open(where) as f:
        header = f.readline()
        while header.strip():
            try:
                natoms = int(header)
            except ValueError as err:
                raise XYZError(f"ase.io.extxyz: Expected xyz header but got: {err}") from None
            block = [header, *itertools.islice(f, natoms + 1)]
            header = f.readline()
            while header.lstrip().startswith("VEC"):
                block.append(header)
                header = f.readline()
            yield next(read_xyz(io.StringIO("".join(block)), 0))


def prepare(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cutoff: float = 5.0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    seed: int = 0,
    shard_frames: int = 50_000,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    min_distance: float = 0.5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare structure files into HDF5 shards with their statistics (one streaming pass).

    Args:
        paths: one or more ASE-readable files with forces (extended XYZ, ...).
        out: the prepared directory (created; must not exist unless ``overwrite``).
        cutoff: radius (A) of the stored average neighbour count.
        val_fraction, test_fraction: each frame goes to validation or test with these
            probabilities (a seeded draw per frame, so the split does not depend on order of
            arrival or memory); the rest to training.
        seed: seed of that draw.
        shard_frames: frames per shard file (bounds the memory of the pass).
        energy_key, forces_key, stress_key, min_distance: as in
            :func:`~uenn_geo.data.read_frames`.
        overwrite: replace an existing prepared directory.

    Returns:
        The contents of ``meta.json``: per set its shards and :class:`PreparedStats`, the
        isolated-atom energies ``isolated_e0s`` ``{Z: eV}`` and the settings.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must lie in [0, 1) and leave training")
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
    target = Path(out)
    if target.exists() and not overwrite and any(target.iterdir()):
        raise ValueError(f"{target} exists and is not empty; pass overwrite=True (--overwrite)")
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        meta = _write_sets(paths, tmp, cutoff, (val_fraction, test_fraction), seed, shard_frames,
                           {"energy": energy_key, "forces": forces_key, "stress": stress_key},
                           min_distance)  # fmt: skip
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _write_sets(
    paths: Sequence[Any],
    tmp: Path,
    cutoff: float,
    fractions: tuple[float, float],
    seed: int,
    shard_frames: int,
    keys: dict[str, str | None],
    min_distance: float,
) -> dict[str, Any]:
    from uenn_geo.data.e0s import is_isolated_atom, isolated_atom_energies

    writers = {name: _ShardWriter(tmp, name, shard_frames) for name in SETS}
    stats = {name: PreparedStats(cutoff=float(cutoff)) for name in SETS}
    rng = np.random.default_rng(seed)
    isolated: dict[int, float] = {}
    with_energy: bool | None = None
    for k, (data, edges) in enumerate(_stream(paths, keys, min_distance, cutoff)):
        has = getattr(data, "energy", None) is not None
        if with_energy is None:
            with_energy = has
        elif has != with_energy:
            raise ValueError(
                f"frame {k} (counted over all files): energy given for some frames but not "
                "others; give it for all frames or for none"
            )
        if is_isolated_atom(data):
            isolated.update(isolated_atom_energies([data], f"frame {k}"))
            continue
        draw = rng.random()
        name = "val" if draw < fractions[0] else "test" if draw < sum(fractions) else "train"
        stats[name].add(data, edges)
        writers[name].add(data)
    for name in SETS:
        writers[name].flush()
        stats[name].finish()
    if stats["train"].frames == 0:
        raise ValueError("no frames left for training")
    meta = {
        "format": "uenn-geo-prepared",
        "format_version": FORMAT_VERSION,
        "sources": [str(Path(p).resolve()) for p in paths],
        "settings": {"cutoff": cutoff, "val_fraction": fractions[0],
                     "test_fraction": fractions[1], "seed": seed, "shard_frames": shard_frames,
                     "min_distance": min_distance, **{f"{k}_key": v for k, v in keys.items()}},
        "isolated_e0s": {str(z): e for z, e in sorted(isolated.items())},
        "sets": {name: {"shards": writers[name].shards, "stats": asdict(stats[name])}
                 for name in SETS},
    }  # fmt: skip
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by :func:`prepare`."""
    return (Path(path) / "meta.json").is_file()


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a prepared directory (checked)."""
    file = Path(path) / "meta.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a prepared directory (no meta.json)")
    meta = json.loads(file.read_text())
    if meta.get("format") != "uenn-geo-prepared" or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: not a uenn-geo prepared directory of version {FORMAT_VERSION}")
    return meta


class _OpenShard:
    """One open shard: the per-atom arrays and the cells stay on disk, and a frame is four
    small reads (its slices of positions, species and forces, its cell). The small per-frame
    columns (offsets, energies, periodic flags, config types as codes: 19 bytes a frame, 190 KB
    for a shard of 10,000 frames) are read once at opening, since reading them row by row
    cost most of a frame's time; what a reader keeps is bounded by the open shards, whatever
    the number of frames."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.file = h5py.File(path, "r")
        f = self.file
        self.pos, self.z, self.forces, self.cell = f["pos"], f["z"], f["forces"], f["cell"]
        self.offsets = f["offsets"][:]
        self.pbc = f["pbc"][:].astype(bool)
        types, codes = np.unique(f["config_type"][:], return_inverse=True)
        self.type_names = [t.decode() if isinstance(t, bytes) else str(t) for t in types]
        self.type_codes = codes.astype(np.uint16 if len(types) > 255 else np.uint8)
        self.energy = f["energy"][:] if "energy" in f else None
        self.stress = f["stress"] if "stress" in f else None
        self.stress_weight = f["stress_weight"] if "stress" in f else None

    def close(self) -> None:
        self.file.close()


class H5Frames(Dataset):
    r"""One set of a prepared directory as a lazy PyG data set: frames read on access.

    The graphs are those of :class:`~uenn_geo.data.ExtXYZDataset` (``pos``, ``z``,
    ``forces``, ``cell``, ``pbc``, ``num_atoms``, ``config_type``, and ``energy``, ``stress``
    with ``stress_weight`` where present). Nothing but ``meta.json`` is read at construction;
    HDF5 files are opened on first access in each process (DataLoader workers open their own).

    Args:
        path: the prepared directory (:func:`prepare`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to every graph on access.
        num_workers: worker processes that the training loop's DataLoaders use to read this
            set (a hint carried by the data set; 0 reads in the main process).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        transform: Any = None,
        num_workers: int = 0,
    ) -> None:
        if split not in SETS:
            raise ValueError(f"split must be one of {SETS}, got {split!r}")
        self.directory = Path(path)
        self.meta = read_meta(path)
        entry = self.meta["sets"][split]
        self.split = split
        self.stats = entry["stats"]
        self.files = [s["file"] for s in entry["shards"]]
        self.starts = np.concatenate([[0], np.cumsum([s["frames"] for s in entry["shards"]])])
        self.num_workers = num_workers
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()
        super().__init__(None, transform=transform, log=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # h5py handles do not cross processes
        return state

    def len(self) -> int:
        return int(self.starts[-1])

    def _shard(self, k: int) -> _OpenShard:
        if self._pid != os.getpid():  # a forked worker: open files anew
            self._handles, self._pid = OrderedDict(), os.getpid()
        shard = self._handles.get(k)
        if shard is None:
            if len(self._handles) >= MAX_OPEN_FILES:
                self._handles.popitem(last=False)[1].close()
            shard = _OpenShard(self.directory / self.files[k])
            self._handles[k] = shard
        self._handles.move_to_end(k)
        return shard

    def get(self, idx: int) -> Data:
        shard = bisect.bisect_right(self.starts, idx) - 1
        i = idx - int(self.starts[shard])
        f = self._shard(shard)
        lo, hi = int(f.offsets[i]), int(f.offsets[i + 1])
        data = Data(
            pos=torch.from_numpy(f.pos[lo:hi]),
            z=torch.from_numpy(f.z[lo:hi].astype(np.int64)),
            forces=torch.from_numpy(f.forces[lo:hi]),
            cell=torch.from_numpy(f.cell[i]).reshape(1, 3, 3),
            pbc=torch.from_numpy(f.pbc[i].copy()).reshape(1, 3),
            num_atoms=torch.tensor([hi - lo]),
            config_type=f.type_names[f.type_codes[i]],
        )
        if f.energy is not None:
            data.energy = torch.tensor([float(f.energy[i])], dtype=torch.float64)
        if self.stats["has_stress"]:
            known = f.stress is not None
            stress = f.stress[i] if known else np.zeros((3, 3))
            data.stress = torch.from_numpy(np.asarray(stress, dtype=np.float64)).reshape(1, 3, 3)
            weight = float(f.stress_weight[i]) if known else 0.0
            data.stress_weight = torch.tensor([weight], dtype=torch.float64)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.directory}, {self.split}, {len(self)} frames)"
