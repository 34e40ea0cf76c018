"""Writing files so that nothing is lost: every file uenn-geo writes goes through here.

A file is written to a temporary name beside its target and renamed over it, so a crash or an
exception part-way leaves any previous file untouched and no partial file under the final
name. The file gets the mode that a plain ``open`` would give it (``0o666`` less the umask, so
``0o644`` under the usual umask 022), not the owner-only mode of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write", "write_csv", "read_csv"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it over ``path``.

    Args:
        path: the final file; its folder is created if missing.
        write: writes the content to the open file object it is given.
        mode: ``"wb"`` (default) or ``"w"`` for text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` atomically (temporary file, then rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_csv(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]
) -> None:
    """Write ``rows`` (dictionaries) as a CSV file with the header ``fields``, atomically."""

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write, mode="w")


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file written by :func:`write_csv` (values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
