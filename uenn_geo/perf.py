"""Process-level settings that make the CPU force evaluations faster.

PyTorch has no caching allocator on the CPU: every tensor comes from ``malloc`` and goes back
with ``free``. For blocks above glibc's mmap threshold (128 KiB, raised dynamically up to
32 MiB) that means a fresh ``mmap`` per tensor and a page fault per 4 KiB page on first touch,
and glibc returns freed memory at the top of the heap to the system above its trim
threshold. The graph layers create tensors of tens of megabytes per call, so on Linux the
page faults can cost more than their arithmetic; :func:`keep_freed_memory` has glibc keep and
reuse freed memory instead (measurements: docs/bench.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

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
