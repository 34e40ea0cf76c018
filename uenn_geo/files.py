"""Writing files so that nothing is lost: every file uenn-geo writes goes through here.

A file is written to a temporary name beside its target and renamed over it, so a crash or an
exception part-way leaves any previous file untouched and no partial file under the final
name. The file gets the mode that a plain ``open`` would give it (``0o666`` less the umask, so
``0o644`` under the usual umask 022), not the owner-only mode of :func:`tempfile.mkstemp`.

A run directory is owned by one run at a time (:class:`RunLock`); at its start the
temporaries of killed writes are swept (:func:`sweep_temporaries`) and the directory is
checked to be writable (:func:`check_output_dir`). Files that grow during a run are appended
record by record (:func:`append_record`), so a crash leaves a readable prefix. JSON is written
without ``NaN``/``Infinity`` (:func:`write_json`). See ``docs/reliability.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_save",
    "atomic_write",
    "write_csv",
    "read_csv",
    "csv_row",
    "write_json",
    "finite_json",
    "append_record",
    "check_output_dir",
    "sweep_temporaries",
    "RunLock",
    "RunLockedError",
    "LOCK_NAME",
]

#: Name of the lock file in a run directory (see :class:`RunLock`).
LOCK_NAME = "run.lock"


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


def csv_row(row: Mapping[str, Any], fields: Sequence[str]) -> str:
    """One CSV line of ``row`` in the column order ``fields`` (for appending to a log)."""
    line = io.StringIO()
    csv.DictWriter(line, fieldnames=list(fields), extrasaction="ignore").writerow(row)
    return line.getvalue()


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file written by :func:`write_csv` (values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by :obj:`None`, recursively
    (dictionaries, lists, tuples), so that it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
    """Write ``value`` as strict JSON atomically: NaN and infinities become ``null``."""
    text = json.dumps(finite_json(value), indent=indent, allow_nan=False)
    atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def append_record(f: Any, text: str) -> None:
    """Append one complete record (``text``, ending with a newline) to the open file ``f``
    and force it to disk, so that a crash leaves whole records and at most one partial
    record at the end (which the reader drops)."""
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output directory ``path`` if needed and check that files can be written
    into it, before any work is done.

    Raises:
        ValueError: ``path`` (or a parent) is a file, or the directory is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory; choose another {flag}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {path} is not a writable directory: {err}") from err
    return path


def sweep_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (``.<name>.<random>.tmp``) that killed :func:`atomic_write`
    calls left in ``directory``; call it only while holding the directory's
    :class:`RunLock` (another run's writes in progress look the same). Returns them."""
    directory = Path(directory)
    swept = []
    for tmp in directory.glob(".*.tmp") if directory.is_dir() else []:
        if tmp.is_file() and tmp.name.count(".") >= 3:
            tmp.unlink(missing_ok=True)
            swept.append(tmp)
    return swept


class RunLockedError(ValueError):
    """The run directory is owned by another live run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """Own a run directory for the time of a ``with`` block: the file ``run.lock`` holds the
    owner's pid, host, command and start time.

    A second run on the same directory gets a :class:`RunLockedError` naming the owner. A
    lock left by a process that no longer exists on this host (killed, crashed) is taken
    over with a message on stderr; a lock from another host is never taken over (its pid
    cannot be checked from here): remove the file once that run is known to be gone.
    The lock file is created complete (written beside, then hard-linked), so a reader never
    sees half of it, and removed when the block ends, also on errors.
    """

    def __init__(self, directory: str | os.PathLike, command: str = "run") -> None:
        self.path = Path(directory) / LOCK_NAME
        self.command = command
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                self.held = True
                return
            owner = self._read_owner()
            if owner == {}:  # released meanwhile: try again
                continue
            if owner is None or self._is_stale(owner):
                who = "an unreadable lock" if owner is None else self._describe(owner)
                print(
                    f"uenn-geo {self.command}: taking over {self.path}: {who} is no longer running",
                    file=sys.stderr,
                )
                self.path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"{self.path.parent} is in use by {self._describe(owner)} (lock file "
                f"{self.path}); wait for it to finish or choose another --out"
            )
        raise RunLockedError(f"could not take {self.path}: other runs keep taking it")

    def release(self) -> None:
        if self.held and (self._read_owner() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def _try_create(self) -> bool:
        text = json.dumps(self.owner)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{LOCK_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~_umask())
            os.link(tmp, self.path)  # atomic, and fails if the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    @staticmethod
    def _is_stale(owner: dict[str, Any]) -> bool:
        return owner.get("host") == socket.gethostname() and not _pid_alive(owner["pid"])

    @staticmethod
    def _describe(owner: dict[str, Any]) -> str:
        return (
            f"uenn-geo {owner.get('command', '?')} (pid {owner.get('pid')} on host "
            f"{owner.get('host')}, started {owner.get('started')})"
        )
