r"""``uenn-geo bench``'s driver: the settings, the boxes, the interleaved timing, the report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from uenn_geo.dtypes import REAL_DTYPES
from uenn_geo.edges import Edges
from uenn_geo.experiments.bench.measure import (
    available_bytes,
    cpu_memory_method,
    peak_memory_mib,
    timed,
)
from uenn_geo.experiments.bench.paths import CALCULATOR_MODELS
from uenn_geo.experiments.bench.report import ratios, scaling
from uenn_geo.experiments.bench.runners import BENCH_MODELS, BenchSystem, Runner, Unsupported
from uenn_geo.experiments.bench.systems import SYSTEMS, make_system, system_sizes
from uenn_geo.files import atomic_write
from uenn_geo.perf import freed_memory_kept

__all__ = ["BenchConfig", "QUICK_SIZES", "run_bench"]

BENCH_MODELS.update(CALCULATOR_MODELS)

#: Sizes of the quick preset (for tests): 4 * 2^3 atoms.
QUICK_SIZES = (32,)


@dataclass(frozen=True)
class BenchConfig:
    r"""Settings of :func:`run_bench`.

    Args:
        sizes: atoms per argon box, multiples of 4 (default: 864 = 4 * 6^3 and
            10,368 = 4 * 12^2 * 18).
        dtypes: ``"float32"`` and/or ``"float64"``.
        models: names from :data:`~uenn_geo.experiments.bench.BENCH_MODELS` (default: all).
        devices: ``"cpu"`` and/or ``"cuda"`` (default: the CPU, and the GPU when present).
        systems: names from :data:`~uenn_geo.experiments.bench.systems.SYSTEMS` (default:
            argon only; copper, ethanol and ethanol32 have their own size and cutoff).
        cutoff: cutoff of every model on argon in Angstrom (default: 10.2 = 3 r_0).
        repeats: timed calls per measurement; the median is reported.
        warmup: untimed calls of each model before its timed calls in every round.
        threads: torch CPU threads (default: leave torch's setting).
        memory_fraction: skip a configuration whose extrapolated peak memory exceeds this
            fraction of the available memory.
        seed: seed of the displacements and of the model weights.
        out: JSON file to write (default: none).
    """

    sizes: tuple[int, ...] = (864, 10368)
    dtypes: tuple[str, ...] = REAL_DTYPES
    models: tuple[str, ...] = tuple(BENCH_MODELS)
    devices: tuple[str, ...] = field(
        default_factory=lambda: ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    )
    cutoff: float = 10.2
    systems: tuple[str, ...] = ("argon",)
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    memory_fraction: float = 0.5
    seed: int = 0
    out: str | None = None

    def validate(self) -> None:
        """Raise a :class:`ValueError` naming the first bad setting."""
        unknown = sorted(set(self.models) - set(BENCH_MODELS))
        if unknown or not self.models:
            raise ValueError(f"models must be among {sorted(BENCH_MODELS)}, got {self.models}")
        bad = sorted(set(self.dtypes) - set(REAL_DTYPES))
        if bad or not self.dtypes:
            raise ValueError(f"dtypes must be among {list(REAL_DTYPES)}, got {self.dtypes}")
        bad = sorted(set(self.systems) - set(SYSTEMS))
        if bad or not self.systems:
            raise ValueError(f"systems must be among {list(SYSTEMS)}, got {self.systems}")
        bad = sorted(set(self.devices) - {"cpu", "cuda"})
        if bad or not self.devices:
            raise ValueError(f"devices must be among ['cpu', 'cuda'], got {self.devices}")
        if "cuda" in self.devices and not torch.cuda.is_available():
            raise ValueError("devices includes 'cuda' but torch.cuda.is_available() is False")
        if not self.sizes or any(n < 4 or n % 4 for n in self.sizes):
            raise ValueError(f"sizes must be multiples of 4 (fcc boxes), got {self.sizes}")
        if not (self.cutoff > 0 and self.repeats >= 1 and self.warmup >= 0):
            raise ValueError(
                f"need cutoff > 0, repeats >= 1, warmup >= 0; got cutoff={self.cutoff}, "
                f"repeats={self.repeats}, warmup={self.warmup}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _machine(config: BenchConfig, memory_method: str) -> dict[str, Any]:
    import torch_geometric
    import torch_geometric.typing
    import vesin

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "torch_scatter": bool(torch_geometric.typing.WITH_TORCH_SCATTER),
        "vesin": vesin.__version__,
        "memory_method_cpu": memory_method,
        # allocator settings change CPU timings a lot (page faults on fresh allocations)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_"))},
        "ld_preload": os.environ.get("LD_PRELOAD"),
        # uenn_geo.perf.keep_freed_memory (the uenn-geo command applies it; None: not called)
        "freed_memory_kept": freed_memory_kept(),
        "load_average_start": _load_average(),
    }
    if "cuda" in config.devices:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _too_big(config: BenchConfig, prior: tuple[float, int] | None, num_edges: int, device: str):
    """Why a model is skipped (its memory, extrapolated from the previous size), or None."""
    if prior is None:
        return None
    estimate = prior[0] * num_edges / prior[1]
    available = available_bytes(device)
    if estimate * 2**20 <= available * config.memory_fraction:
        return None
    return (
        f"estimated peak memory {estimate:.0f} MiB (linear in edges from {prior[1]} edges) "
        f"exceeds {config.memory_fraction:.0%} of the available {available / 2**20:.0f} MiB"
    )


def _start(runner: Runner, prepared: Any, row: dict[str, Any], device: str, method: str) -> bool:
    """Compile (if the runner does) and measure the peak memory of a first whole call.

    Returns False, with the row marked skipped, where compilation fails.
    """
    if hasattr(runner, "compiled"):  # compile first, so that memory is that of a call
        start = time.perf_counter()
        try:
            runner.forces(prepared)
        except Exception as err:  # e.g. no C++ compiler for inductor on this machine
            row["status"] = "skipped"
            row["reason"] = f"torch.compile failed: {type(err).__name__}: {err}"[:300]
            return False
        row["compile_s"] = time.perf_counter() - start
    row["peak_memory_mib"] = peak_memory_mib(lambda: runner.forces(None), device, method)
    return True


def _time_rounds(
    config: BenchConfig, system: BenchSystem, runners: dict[str, tuple[Runner, Any]], device: str
) -> tuple[dict[str, dict[str, float]], float]:
    """Median times per runner (repeats interleaved across runners) and of the list alone."""
    times: dict[str, dict[str, list[float]]] = {
        name: {"model": [], "total": [], "model_cpu": [], "total_cpu": []} for name in runners
    }
    nl_times: list[float] = []
    for _ in range(config.repeats):
        nl_times.append(timed(system.neighbors, device)[0])
        for name, (runner, prepared) in runners.items():
            for _ in range(config.warmup):  # re-warm caches and heap after the other models
                runner.forces(prepared)
            for kind, arg in (("model", prepared), ("total", None)):
                wall, cpu = timed(lambda r=runner, a=arg: r.forces(a), device)
                times[name][kind].append(wall)
                times[name][kind + "_cpu"].append(cpu)
    medians = {
        name: {kind: statistics.median(t) for kind, t in series.items()}
        for name, series in times.items()
    }
    return medians, statistics.median(nl_times)


def _make_runner(name: str, system: BenchSystem, row: dict[str, Any], seed: int):
    """The runner of model ``name`` on ``system``, or None with the row marked skipped."""
    torch.manual_seed(seed)
    try:
        runner = BENCH_MODELS[name](system)
    except Unsupported as why:
        row.update(status="skipped", reason=str(why))
        return None
    row["path"] = getattr(runner, "path", "network")
    return runner


def _bench_group(
    config: BenchConfig,
    device: str,
    dtype: str,
    num_atoms: int,
    method: str,
    prior: dict,
    system_name: str = "argon",
) -> list[dict[str, Any]]:
    """All models on one box (device, dtype, size), repeats interleaved across models."""
    system = make_system(system_name, num_atoms, device, dtype, config.cutoff, config.seed)
    edges: Edges = system.neighbors()
    num_edges = edges.num_edges
    common = {"device": device, "dtype": dtype, "atoms": num_atoms, "edges": num_edges}
    common.update(system=system_name, cutoff=system.cutoff)
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, tuple[Runner, Any]] = {}
    for name in config.models:
        row = rows[name] = {"model": name, **common, "status": "ok"}
        key = (system_name, device, dtype, name)
        reason = _too_big(config, prior.get(key), num_edges, device)
        if reason is not None:
            row.update(status="skipped", reason=reason)
            continue
        runner = _make_runner(name, system, row, config.seed)
        if runner is None:
            continue
        prepared = runner.prepare(edges)
        if _start(runner, prepared, row, device, method):
            prior[key] = (max(row["peak_memory_mib"], 1.0), num_edges)
            runners[name] = (runner, prepared)
    medians, t_nl = _time_rounds(config, system, runners, device)
    for name, med in medians.items():
        rows[name].update(
            time_model_s=med["model"],
            time_total_s=med["total"],
            time_neighbors_s=t_nl,
            rate_model=num_atoms / med["model"],
            rate_total=num_atoms / med["total"],
            cpu_time_model_s=med["model_cpu"],
            cpu_time_total_s=med["total_cpu"],
            rate_model_cpu=num_atoms / med["model_cpu"],
            rate_total_cpu=num_atoms / med["total_cpu"],
        )
        runner = runners[name][0]
        if hasattr(runner, "nl_builds"):  # calculator rows: list rebuilds over all calls
            rows[name].update(nl_builds=runner.nl_builds, calls=runner.motion.calls)
    return list(rows.values())


def run_bench(config: BenchConfig) -> dict[str, Any]:
    r"""Time every model of ``config`` on fcc argon boxes; return (and optionally write) a report.

    Returns:
        A JSON-serialisable dict with ``config``, ``machine`` (versions, threads, torch-scatter,
        load average, memory method), ``results`` (one row per device, dtype, size and model:
        ``edges``, ``time_model_s``, ``time_total_s``, ``time_neighbors_s``, ``rate_model`` and
        ``rate_total`` in atoms per second, ``peak_memory_mib``, ``status``), ``ratios`` (our
        force field against SchNet and the LJ floor per box) and ``scaling`` (exponent
        :math:`p` of :math:`t \propto N^p` per model).
    """
    config.validate()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        method = cpu_memory_method()
        machine = _machine(config, method)
        results: list[dict[str, Any]] = []
        prior: dict = {}
        for device in config.devices:
            for dtype in config.dtypes:
                for name in config.systems:
                    for num_atoms in system_sizes(name, config.sizes):
                        results += _bench_group(
                            config, device, dtype, num_atoms, method, prior, name
                        )
    finally:
        torch.set_num_threads(threads)
    machine["load_average_end"] = _load_average()
    report = {
        "config": asdict(config),
        "machine": machine,
        "results": results,
        "ratios": ratios(results),
        "scaling": scaling(results),
    }
    if config.out:
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(config.out, lambda f: f.write(text), mode="w")
    return report
