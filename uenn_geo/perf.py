r"""Process-level settings that make the CPU force evaluations faster.

PyTorch has no caching allocator on the CPU: every tensor comes from ``malloc`` and goes back
with ``free``. For blocks above glibc's mmap threshold (128 KiB, raised dynamically up to
32 MiB) that means a fresh ``mmap`` per tensor and a page fault per 4 KiB page on first touch,
and glibc returns freed memory at the top of the heap to the system above its trim
threshold. The graph layers create tensors of tens of megabytes per call, so on Linux the
page faults can cost more than their arithmetic; :func:`keep_freed_memory` has glibc keep and
reuse freed memory instead (measurements: docs/bench.md).

Floats too small for their format's normal range (denormals, below about 1.2e-38 in float32)
take the CPU's slow path, tens of times slower per operation; Gaussian radial bases make many
of them (:math:`e^{-\gamma (r - \mu)^2}` underflows through that range). :func:`flush_denormals`
has the CPU treat them as zero (measurements: docs/bench.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import warnings
from typing import Any

import numpy as np

__all__ = ["keep_freed_memory", "freed_memory_kept", "flush_denormals", "warn_graph_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: bool | None = None


def keep_freed_memory(max_block: int = 2**30) -> bool:
    r"""Tell glibc's ``malloc`` to reuse freed memory instead of returning it to the system.

    Sets ``M_MMAP_THRESHOLD`` to ``max_block`` bytes (blocks up to that size come from the heap,
    not from a fresh ``mmap``) and ``M_TRIM_THRESHOLD`` to the largest value (the heap is not
    shrunk), with ``mallopt``: the runtime form of
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...``. The
    process then keeps its peak heap size until it exits, which suits a training, MD or
    benchmark process. It changes the whole process, so the library never calls it on import;
    the ``uenn-geo`` commands do. A no-op (returning :obj:`False`) where the C library is not
    glibc (macOS, musl, Windows).

    Args:
        max_block (int): largest block served from the heap, in bytes (default: 1 GiB; at
            most :math:`2^{31} - 1`).

    Returns:
        Whether the settings were applied.
    """
    global _applied
    if not 0 < max_block < 2**31:
        raise ValueError(f"max_block must be in (0, 2**31) bytes, got {max_block}")
    if not sys.platform.startswith("linux"):
        _applied = False
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        _applied = False
        return False
    del gnu_get_libc_version
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, max_block) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    _applied = ok
    return ok


def freed_memory_kept() -> bool | None:
    """Whether :func:`keep_freed_memory` was applied in this process (:obj:`None`: not called)."""
    return _applied


def flush_denormals() -> bool:
    """Have the CPU flush denormal floats to zero (FTZ and DAZ on x86 with SSE3), through
    :func:`torch.set_flush_denormal`.

    Values below the normal range (about 1.2e-38 in float32, 2.2e-308 in float64) change
    nothing a force field computes but can make a step several times slower. The setting is
    the calling thread's (threads started later inherit it), so, like
    :func:`keep_freed_memory`, the library never calls it on import; the ``uenn-geo``
    commands do, before any work. Returns whether the CPU supports it.
    """
    import torch

    return bool(torch.set_flush_denormal(True))


#: Memory per neighbour pair of a graph model's force evaluation in float32 (bytes): edge
#: features, radial basis, messages and their gradients; measured, about 1 kB (19,652
#: copper atoms at 10.2 A, 7.4 million pairs, took 7.4 GB).
BYTES_PER_EDGE_FLOAT32 = 1000


def _available_memory(device: Any = "cpu") -> float | None:
    """Free memory in bytes (``MemAvailable`` of ``/proc/meminfo``; the GPU's free memory
    for a CUDA device); :obj:`None` where unknown."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def warn_graph_memory(
    atoms: Any,
    cutoff: float | None,
    skin: float = 0.0,
    dtype: Any = None,
    available: float | None = None,
) -> tuple[float, float]:
    """Estimate the neighbour pairs of ``atoms`` within ``cutoff + skin`` (from the number
    density: the cell's volume, or the bounding box of a free cluster, at most all pairs)
    and the memory a force evaluation needs for them; warn when that is above half of the
    ``available`` memory (default: what is free now). Returns (pairs, bytes)."""
    import torch

    n = len(atoms)
    if cutoff is None or n < 2:
        return 0.0, 0.0
    radius = cutoff + skin
    if atoms.pbc.all() and atoms.cell.rank == 3:
        volume = float(atoms.get_volume())
        pairs = n * (n / volume) * 4.0 / 3.0 * math.pi * radius**3
    else:
        extent = np.ptp(atoms.positions, axis=0) + radius
        pairs = min(n * (n / float(np.prod(extent))) * 4.0 / 3.0 * math.pi * radius**3, n * (n - 1))
    itemsize = torch.empty(0, dtype=dtype or torch.float32).element_size()
    needed = pairs * BYTES_PER_EDGE_FLOAT32 * itemsize / 4
    available = _available_memory() if available is None else available
    if available is not None and needed > 0.5 * available:
        warnings.warn(
            f"{n} atoms at the cutoff {cutoff:g} A (+ skin {skin:g} A) make about {pairs:.3g} "
            f"neighbour pairs, which need about {needed / 1e9:.3g} GB, more than half of the "
            f"{available / 1e9:.3g} GB free: use a smaller cutoff, evaluate fewer atoms at a "
            "time (chunks), or a machine with more memory",
            RuntimeWarning,
            stacklevel=2,
        )
    return pairs, needed
