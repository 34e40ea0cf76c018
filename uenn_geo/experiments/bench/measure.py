r"""What ``uenn-geo bench`` measures of one call: wall and CPU time, and peak memory.

**Peak memory** is the extra memory one call needs on top of what was resident before it.
On the CPU: the resident set size (RSS) high-water mark of this process, reset right before
the call (``/proc/self/clear_refs``, Linux >= 4.0) after returning freed heap to the system
(``malloc_trim``), minus the RSS before the call; where the reset is not possible, the growth
of ``getrusage`` max RSS, a lower bound (the method used is recorded). On a GPU:
:func:`torch.cuda.max_memory_allocated` minus the memory allocated before the call.

Units: seconds, MiB.
"""

from __future__ import annotations

import ctypes
import gc
import math
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["cpu_memory_method", "available_bytes", "peak_memory_mib", "timed"]


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the system and reset the RSS high-water mark (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS may include freed heap, which only makes peaks smaller
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def cpu_memory_method() -> str:
    """``"rss_hwm_reset"`` where the RSS peak can be reset, else the ``getrusage`` bound."""
    if _reset_peak_rss():
        return "rss_hwm_reset"
    return "ru_maxrss_delta_lower_bound"


def available_bytes(device: str) -> float:
    """Memory available on ``device`` (``MemAvailable`` on the CPU; inf if unknown)."""
    if device == "cuda":
        return float(torch.cuda.mem_get_info()[0])
    kib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    kib = int(line.split()[1])
    except OSError:
        return math.inf
    return math.inf if kib is None else kib * 1024.0


def peak_memory_mib(fn: Callable[[], Any], device: str, method: str) -> float:
    """Extra memory (MiB) needed by one call of ``fn`` on top of what is resident before."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if method == "rss_hwm_reset":
        _reset_peak_rss()
        base = _proc_status_kib("VmRSS")
        fn()
        return (_proc_status_kib("VmHWM") - base) / 1024.0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu
