"""Data sets by name or file: what ``uenn-geo train --data`` accepts.

A spec is either a structure file (extended XYZ or anything ASE reads, with forces) or the name
of a built-in data set; processed data are cached under ``root``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch_geometric.data import InMemoryDataset

from uenn_geo.data.clusters import LJClusters
from uenn_geo.data.extxyz import ExtXYZDataset
from uenn_geo.data.paper import PaperArgon

__all__ = ["DATASET_NAMES", "load_dataset"]


def _paper_argon(root: Path) -> InMemoryDataset:
    return PaperArgon(str(root / "paper_argon"), log=False)


def _lj_clusters(root: Path) -> InMemoryDataset:
    return LJClusters(str(root / "lj_clusters"), log=False)


#: The built-in data sets: name -> ``f(root)`` building it under ``root``.
_DATASETS: dict[str, Callable[[Path], InMemoryDataset]] = {
    "paper": _paper_argon,
    "lj-clusters": _lj_clusters,
}

#: Names accepted by :func:`load_dataset` (and ``uenn-geo train --data``) besides a file.
DATASET_NAMES = tuple(_DATASETS)


def load_dataset(
    spec: str | Path,
    root: str | Path = "datasets",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> InMemoryDataset:
    """A data set from a structure file or a built-in name (one of :data:`DATASET_NAMES`).

    Args:
        spec: an extended-XYZ (or other ASE-readable) file with forces, or a built-in name.
        root: folder of the processed-data cache; a file's data go to
            ``root/extxyz/<file stem>``, a built-in set's to its own subfolder.
        energy_key, forces_key, stress_key: where a file keeps its references
            (:class:`~uenn_geo.data.ExtXYZDataset`).

    Raises:
        ValueError: ``spec`` is neither an existing file nor a built-in name.
    """
    path = Path(spec)
    if path.is_file():
        return ExtXYZDataset(
            str(path),
            root=str(Path(root) / "extxyz" / path.stem),
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            log=False,
        )
    if str(spec) not in _DATASETS:
        raise ValueError(
            f"--data {str(spec)!r} is neither a file nor a built-in data set; built-in: "
            f"{sorted(_DATASETS)}"
        )
    return _DATASETS[str(spec)](Path(root))
