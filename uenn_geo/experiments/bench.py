r"""Speed benchmark: our graph force field against PyG's SchNet and the exact Lennard-Jones forces.

``uenn-geo bench`` measures, in one run on one machine, the cost of one force evaluation on
periodic liquid-argon boxes (Rahman 1964: 1.374 g/cm\ :sup:`3`, an fcc lattice at that density
with small random displacements) for every model of :data:`BENCH_MODELS`:

* ``uenn``: :class:`~uenn_geo.models.UENNForceField` (default constructor, ``cutoff`` set),
  which predicts forces directly;
* ``schnet``: :class:`torch_geometric.nn.models.SchNet` (default constructor, ``cutoff`` set),
  used as a force field: :math:`\mathbf{F} = -\partial E / \partial \mathbf{r}` by autograd;
  its edges come from our periodic neighbour list (:class:`PeriodicInteractionGraph`), since
  its own ``radius_graph`` needs torch-cluster and knows no periodic images;
* ``schnet32``: the same SchNet with at most 32 neighbours per atom (the nearest), which is
  what ``SchNet(cutoff=...)`` does out of the box (``max_num_neighbors=32``); at 10.2 A liquid
  argon has about 86 neighbours, so this drops most of them;
* ``lj``: the analytic shifted-force Lennard-Jones forces of
  :func:`~uenn_geo.data.lj.lennard_jones_pairs`, the floor for any pair model.

All models use the same cutoff and the same full neighbour list of
:func:`uenn_geo.neighbors.radius_graph` (vesin, on the CPU). For each model the benchmark
reports atoms per second :math:`N / t` from the median :math:`t` of ``repeats`` timed
calls, both for the model alone (neighbour list given) and for the whole evaluation
(neighbour list built in the call, as in MD without a skin), by wall clock and by process
CPU time (all threads; with one thread it is barely affected by other processes sharing
the CPU). Repeats are interleaved across models (round robin), so that a change of machine
load hits every model alike and the ratios measured in one run stay meaningful on a shared
machine; before its timed calls in each round a model makes ``warmup`` untimed calls, so that
it is timed warm, as in MD, not right after another model has churned caches and heap.

**Peak memory** is the extra memory one whole evaluation (neighbour list included) needs on
top of what was resident before it (model, positions). On the CPU: the resident set size
(RSS) high-water mark of this process, reset right before the call (``/proc/self/clear_refs``,
Linux >= 4.0) after returning freed heap to the system (``malloc_trim``), minus the RSS before
the call; where the reset is not possible, the growth of ``getrusage`` max RSS, a lower bound
(the method used is recorded). On a GPU: :func:`torch.cuda.max_memory_allocated` minus the
memory allocated before the call. Sizes run from small to large, and a configuration whose
memory, extrapolated linearly in the number of edges from the previous size, would exceed
``memory_fraction`` of the available memory is skipped (and recorded as skipped).

Units: Angstrom, eV, eV/Angstrom; times in seconds, memory in MiB.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.data.lj import ARGON_MASS, ARGON_Z, lennard_jones_pairs
from uenn_geo.neighbors import edge_vectors, radius_graph
from uenn_geo.perf import freed_memory_kept

__all__ = [
    "BENCH_MODELS",
    "BenchConfig",
    "PeriodicInteractionGraph",
    "nearest_neighbors",
    "argon_fcc",
    "format_table",
    "run_bench",
]

#: Avogadro's number (1/mol).
_AVOGADRO = 6.02214076e23
#: Liquid argon density of Rahman (1964) in g/cm^3 (at 94.4 K).
RAHMAN_DENSITY = 1.374
#: Sizes of the quick preset (for tests): 4 * 2^3 atoms.
QUICK_SIZES = (32,)


def _factor_cells(num_cells: int) -> tuple[int, int, int]:
    """The most cubic ``a <= b <= c`` with ``a * b * c == num_cells``."""
    best = (1, 1, num_cells)
    for a in range(1, round(num_cells ** (1 / 3)) + 2):
        if num_cells % a:
            continue
        for b in range(a, math.isqrt(num_cells // a) + 1):
            if (num_cells // a) % b == 0:
                c = num_cells // (a * b)
                if c / a < best[2] / best[0]:
                    best = (a, b, c)
    return best


def argon_fcc(
    num_atoms: int,
    density: float = RAHMAN_DENSITY,
    displacement: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""A periodic fcc box of argon at the given density, atoms displaced at random.

    The box holds :math:`a \times b \times c` conventional fcc cells (4 atoms each, the most
    cubic factorisation of :math:`N / 4`) of edge :math:`\ell = (4 / n)^{1/3}`, with number
    density :math:`n = \rho N_A / M_{\mathrm{Ar}}`; each coordinate is displaced by a normal
    random number of standard deviation ``displacement``.

    Args:
        num_atoms (int): :math:`N`, a multiple of 4 (864 = 4 * 6^3, 10,976 = 4 * 14^3, ...).
        density (float): mass density in g/cm^3 (default: :obj:`1.374`, Rahman 1964).
        displacement (float): standard deviation of the displacements in Angstrom
            (default: :obj:`0.05`).
        seed (int): seed of the displacements (default: :obj:`0`).

    Returns:
        ``(pos, cell)``: positions :obj:`(N, 3)` and cell :obj:`(3, 3)` (rows are the lattice
        vectors) in Angstrom, float64.
    """
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, int) or num_atoms < 4:
        raise ValueError(f"num_atoms must be an int >= 4, got {num_atoms!r}")
    if num_atoms % 4:
        raise ValueError(f"an fcc box holds a multiple of 4 atoms, got num_atoms={num_atoms}")
    if not density > 0:
        raise ValueError(f"density must be > 0 g/cm^3, got {density}")
    number_density = density * _AVOGADRO / ARGON_MASS * 1e-24  # atoms per Angstrom^3
    edge = (4.0 / number_density) ** (1.0 / 3.0)
    reps = _factor_cells(num_atoms // 4)
    basis = torch.tensor(
        [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]], dtype=torch.float64
    )
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(r, dtype=torch.float64) for r in reps), indexing="ij"),
        dim=-1,
    ).reshape(-1, 1, 3)
    pos = ((grid + basis) * edge).reshape(-1, 3)
    generator = torch.Generator().manual_seed(seed)
    pos = pos + displacement * torch.randn(pos.shape, generator=generator, dtype=torch.float64)
    cell = torch.diag(torch.tensor(reps, dtype=torch.float64) * edge)
    return pos, cell


@dataclass
class _System:
    """One box on the device, in the benchmark dtype."""

    pos: Tensor
    cell: Tensor  # (1, 3, 3)
    pbc: Tensor  # (1, 3)
    z: Tensor
    cutoff: float

    def neighbors(self) -> tuple[Tensor, Tensor]:
        return radius_graph(self.pos, self.cutoff, cell=self.cell, pbc=self.pbc)


def nearest_neighbors(
    edge_index: Tensor, shifts: Tensor, pos: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    r"""Keep the :math:`k` nearest neighbours of every centre :math:`i` = ``edge_index[0]``.

    What SchNet's ``max_num_neighbors`` does (torch-cluster keeps *some* :math:`k` neighbours
    within the cutoff; here the nearest, ties broken by edge order). The result is no longer a
    symmetric list.

    Shapes:
        - input: edge_index :obj:`(2, E)`, shifts :obj:`(E, 3)`, pos :obj:`(N, 3)`
        - output: edge_index :obj:`(2, E')`, shifts :obj:`(E', 3)`, :math:`E' \leq N k`
    """
    dist = edge_vectors(pos.detach(), edge_index, shifts).norm(dim=-1)
    order = torch.argsort(dist)
    order = order[torch.argsort(edge_index[0, order], stable=True)]
    centre = edge_index[0, order]
    counts = torch.bincount(centre, minlength=pos.shape[0])
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - start[centre]
    keep = order[rank < k]
    return edge_index[:, keep], shifts[keep]


class PeriodicInteractionGraph(nn.Module):
    r"""SchNet's ``interaction_graph`` from our periodic neighbour list.

    SchNet calls ``interaction_graph(pos, batch)`` and expects ``(edge_index, edge_weight)``
    with :math:`w_{ij} = r_{ij}`. This module returns the list set with :meth:`use` (kept
    fixed, as with a Verlet list) or, when none is set, builds it with
    :func:`~uenn_geo.neighbors.radius_graph` from ``cell`` and ``pbc``; the distances
    :math:`r_{ij} = |\mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_e|` are computed from ``pos``
    so that forces follow by autograd.

    Args:
        cutoff (float): cutoff in Angstrom.
        cell (Tensor): lattice vectors as rows, :obj:`(3, 3)` or :obj:`(B, 3, 3)`.
        pbc (Tensor, optional): periodicity flags (default: periodic in all directions).
        max_num_neighbors (int, optional): keep only the nearest neighbours of each atom when
            building the list (:func:`nearest_neighbors`), like SchNet's own default of 32
            (default: :obj:`None`, every neighbour within the cutoff).
    """

    def __init__(
        self,
        cutoff: float,
        cell: Tensor,
        pbc: Tensor | None = None,
        max_num_neighbors: int | None = None,
    ) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.cell = cell
        self.pbc = pbc
        self.max_num_neighbors = max_num_neighbors
        self.edges: tuple[Tensor, Tensor] | None = None

    def use(self, edges: tuple[Tensor, Tensor] | None) -> None:
        """Fix the list ``(edge_index, shifts)`` as given, or :obj:`None` to build it per call."""
        self.edges = edges

    def build(self, pos: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The list ``(edge_index, shifts)`` of ``pos``, truncated to ``max_num_neighbors``."""
        edges = radius_graph(pos, self.cutoff, batch=batch, cell=self.cell, pbc=self.pbc)
        if self.max_num_neighbors is not None:
            edges = nearest_neighbors(*edges, pos, self.max_num_neighbors)
        return edges

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        edge_index, shifts = self.build(pos, batch) if self.edges is None else self.edges
        return edge_index, edge_vectors(pos, edge_index, shifts).norm(dim=-1)


class _Runner:
    """A model under test.

    ``prepare(edges)`` turns the shared neighbour list into the model's input once, outside
    the timing; ``forces(prepared)`` evaluates with it, ``forces(None)`` builds the list too.
    """

    def __init__(self, system: _System, cutoff: float) -> None:
        self.system = system
        self.cutoff = cutoff

    def prepare(self, edges: tuple[Tensor, Tensor]) -> Any:
        return edges

    def forces(self, prepared: Any) -> Tensor:
        raise NotImplementedError


class _LJRunner(_Runner):
    """Analytic shifted-force Lennard-Jones (argon), vectorised over the pair list."""

    def forces(self, prepared: tuple[Tensor, Tensor] | None) -> Tensor:
        edge_index, shifts = self.system.neighbors() if prepared is None else prepared
        with torch.no_grad():
            return lennard_jones_pairs(
                self.system.pos, edge_index, shifts, cutoff=self.cutoff, check=False
            )[1]


class _UENNRunner(_Runner):
    """:class:`~uenn_geo.models.UENNForceField`, forces predicted directly."""

    def __init__(self, system: _System, cutoff: float) -> None:
        from torch_geometric.data import Data

        from uenn_geo.models.forcefield import UENNForceField

        super().__init__(system, cutoff)
        s = system
        self.model = UENNForceField(cutoff=cutoff, dtype=s.pos.dtype).to(s.pos.device).eval()
        self.data = Data(pos=s.pos, z=s.z, cell=s.cell, pbc=s.pbc)

    def prepare(self, edges: tuple[Tensor, Tensor]) -> Any:
        data = self.data.clone()
        data.edge_index, data.shifts = edges
        return data

    def forces(self, prepared: Any) -> Tensor:
        with torch.no_grad():
            return self.model(self.data if prepared is None else prepared)


class _UENNCompiledRunner(_UENNRunner):
    """The same force field, its network (``compute_forces``) under :func:`torch.compile`.

    ``fullgraph=True, dynamic=True``: one graph for any number of atoms and edges, as MD
    needs (the neighbour list changes every step). The compilation happens in the untimed
    first call (its duration is reported as ``compile_s``); checks, neighbour search and the
    edges' chunk layout (:meth:`UENNForceField.chunk_edges`) stay in Python, as in
    :meth:`UENNForceField.forward`.
    """

    def __init__(self, system: _System, cutoff: float) -> None:
        super().__init__(system, cutoff)
        self.compiled = torch.compile(self.model.compute_forces, fullgraph=True, dynamic=True)

    def forces(self, prepared: Any) -> Tensor:
        data = self.data if prepared is None else prepared
        with torch.no_grad():
            pos, species, edge_index, shifts, _, _ = self.model._inputs(data)
            edge_index, shifts, chunked = self.model.chunk_edges(edge_index, shifts, pos.shape[0])
            return self.compiled(pos, species, edge_index, shifts, chunked=chunked)


class _SchNetRunner(_Runner):
    """PyG's SchNet as a force field: :math:`-\\partial E / \\partial \\mathbf{r}`."""

    max_num_neighbors: int | None = None

    def __init__(self, system: _System, cutoff: float) -> None:
        from torch_geometric.nn.models import SchNet

        super().__init__(system, cutoff)
        s = system
        self.graph = PeriodicInteractionGraph(cutoff, s.cell, s.pbc, self.max_num_neighbors)
        self.model = SchNet(cutoff=cutoff, interaction_graph=self.graph)
        self.model = self.model.to(device=s.pos.device, dtype=s.pos.dtype).eval()
        self.model.requires_grad_(False)

    def prepare(self, edges: tuple[Tensor, Tensor]) -> Any:
        if self.max_num_neighbors is None:
            return edges
        return nearest_neighbors(*edges, self.system.pos, self.max_num_neighbors)

    def forces(self, prepared: tuple[Tensor, Tensor] | None) -> Tensor:
        self.graph.use(prepared)
        pos = self.system.pos.detach().requires_grad_(True)
        energy = self.model(self.system.z, pos)
        (grad,) = torch.autograd.grad(energy.sum(), pos)
        return -grad


class _SchNet32Runner(_SchNetRunner):
    """SchNet as it comes: at most 32 neighbours per atom (PyG's ``max_num_neighbors``)."""

    max_num_neighbors = 32


#: Models the benchmark knows, by name: a class taking ``(system, cutoff)``.
BENCH_MODELS: dict[str, Callable[[_System, float], _Runner]] = {
    "uenn": _UENNRunner,
    "uenn_compiled": _UENNCompiledRunner,
    "schnet": _SchNetRunner,
    "schnet32": _SchNet32Runner,
    "lj": _LJRunner,
}


@dataclass(frozen=True)
class BenchConfig:
    r"""Settings of :func:`run_bench`.

    Args:
        sizes: atoms per box, multiples of 4 (default: 864 = 4 * 6^3 and 10,368 = 4 * 12^2 * 18,
            the issue's calibration sizes).
        dtypes: ``"float32"`` and/or ``"float64"``.
        models: names from :data:`BENCH_MODELS` (default: all).
        devices: ``"cpu"`` and/or ``"cuda"`` (default: the CPU, and the GPU when present).
        cutoff: cutoff of every model in Angstrom (default: 10.2 = 3 r_0).
        repeats: timed calls per measurement; the median is reported.
        warmup: untimed calls of each model before its timed calls in every round.
        threads: torch CPU threads (default: leave torch's setting).
        memory_fraction: skip a configuration whose extrapolated peak memory exceeds this
            fraction of the available memory.
        seed: seed of the displacements and of the model weights.
        out: JSON file to write (default: none).
    """

    sizes: tuple[int, ...] = (864, 10368)
    dtypes: tuple[str, ...] = ("float32", "float64")
    models: tuple[str, ...] = tuple(BENCH_MODELS)
    devices: tuple[str, ...] = field(
        default_factory=lambda: ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    )
    cutoff: float = 10.2
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    memory_fraction: float = 0.5
    seed: int = 0
    out: str | None = None

    def validate(self) -> None:
        unknown = sorted(set(self.models) - set(BENCH_MODELS))
        if unknown or not self.models:
            raise ValueError(f"models must be among {sorted(BENCH_MODELS)}, got {self.models}")
        bad = sorted(set(self.dtypes) - {"float32", "float64"})
        if bad or not self.dtypes:
            raise ValueError(f"dtypes must be among ['float32', 'float64'], got {self.dtypes}")
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


# --- memory -------------------------------------------------------------------------------


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


def _cpu_memory_method() -> str:
    if _reset_peak_rss():
        return "rss_hwm_reset"
    return "ru_maxrss_delta_lower_bound"


def _available_bytes(device: str) -> float:
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


def _peak_memory_mib(fn: Callable[[], Any], device: str, method: str) -> float:
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


# --- timing -------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """Wall and process CPU seconds of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def _machine(config: BenchConfig, memory_method: str) -> dict[str, Any]:
    import torch_geometric
    import torch_geometric.typing

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
        "memory_method_cpu": memory_method,
        # allocator settings change CPU timings a lot (page faults on fresh allocations)
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_"))},
        "ld_preload": os.environ.get("LD_PRELOAD"),
        # uenn_geo.perf.keep_freed_memory (the uenn-geo command applies it; None: not called)
        "freed_memory_kept": freed_memory_kept(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import vesin

        info["vesin"] = vesin.__version__
    except ImportError:  # pragma: no cover - vesin is needed by radius_graph anyway
        info["vesin"] = None
    if "cuda" in config.devices:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _bench_group(
    config: BenchConfig, device: str, dtype: str, num_atoms: int, memory_method: str, prior: dict
) -> list[dict[str, Any]]:
    """All models on one box (device, dtype, size), repeats interleaved across models."""
    pos, cell = argon_fcc(num_atoms, seed=config.seed)
    dt = getattr(torch, dtype)
    system = _System(
        pos=pos.to(device=device, dtype=dt),
        cell=cell.to(device=device, dtype=dt).unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool, device=device),
        z=torch.full((num_atoms,), ARGON_Z, dtype=torch.long, device=device),
        cutoff=config.cutoff,
    )
    edges = system.neighbors()
    num_edges = edges[0].shape[1]
    common = {"device": device, "dtype": dtype, "atoms": num_atoms, "edges": num_edges}
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, _Runner] = {}
    prepared: dict[str, Any] = {}
    available = _available_bytes(device) * config.memory_fraction
    for name in config.models:
        row = {"model": name, **common, "status": "ok"}
        rows[name] = row
        key = (device, dtype, name)
        if key in prior:  # extrapolate from the previous (smaller) size
            estimate = prior[key][0] * num_edges / prior[key][1]
            if estimate * 2**20 > available:
                row["status"] = "skipped"
                row["reason"] = (
                    f"estimated peak memory {estimate:.0f} MiB (linear in edges from "
                    f"{prior[key][1]} edges) exceeds {config.memory_fraction:.0%} of the "
                    f"available {available / config.memory_fraction / 2**20:.0f} MiB"
                )
                continue
        torch.manual_seed(config.seed)
        runner = BENCH_MODELS[name](system, config.cutoff)
        prepared[name] = runner.prepare(edges)
        if hasattr(runner, "compiled"):  # compile first, so that memory is that of a call
            start = time.perf_counter()
            try:
                runner.forces(prepared[name])
            except Exception as err:  # e.g. no C++ compiler for inductor on this machine
                row["status"] = "skipped"
                row["reason"] = f"torch.compile failed: {type(err).__name__}: {err}"[:300]
                continue
            row["compile_s"] = time.perf_counter() - start
        # the first call: peak memory of a whole evaluation (neighbour list included)
        peak = _peak_memory_mib(lambda r=runner: r.forces(None), device, memory_method)
        row["peak_memory_mib"] = peak
        prior[key] = (max(peak, 1.0), num_edges)
        runners[name] = runner

    times: dict[str, dict[str, list[float]]] = {
        name: {"model": [], "total": [], "model_cpu": [], "total_cpu": []} for name in runners
    }
    nl_times: list[float] = []
    for _ in range(config.repeats):
        nl_times.append(_timed(system.neighbors, device)[0])
        for name, runner in runners.items():
            for _ in range(config.warmup):  # re-warm caches and heap after the other models
                runner.forces(prepared[name])
            for kind, arg in (("model", prepared[name]), ("total", None)):
                wall, cpu = _timed(lambda r=runner, a=arg: r.forces(a), device)
                times[name][kind].append(wall)
                times[name][kind + "_cpu"].append(cpu)
    t_nl = statistics.median(nl_times)
    for name in runners:
        med = {kind: statistics.median(t) for kind, t in times[name].items()}
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
    return list(rows.values())


#: Rates compared in the ratios: wall clock and CPU time, without and with the neighbour list.
_RATES = ("rate_model", "rate_total", "rate_model_cpu", "rate_total_cpu")


def _ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our force field against SchNet (speed-up) and against the LJ floor (slow-down), per box."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        if r["status"] == "ok":
            groups.setdefault((r["device"], r["dtype"], r["atoms"]), {})[r["model"]] = r
    out = []
    for (device, dtype, atoms), by in groups.items():
        for ours in ("uenn", "uenn_compiled"):
            if ours not in by:
                continue
            entry: dict[str, Any] = {"device": device, "dtype": dtype, "atoms": atoms}
            entry["model"] = ours
            u = by[ours]
            for ref in ("schnet", "schnet32"):
                if ref in by:
                    for rate in _RATES:
                        entry[f"uenn_over_{ref}_{rate[5:]}"] = u[rate] / by[ref][rate]
                    entry[f"target_10x_{ref}"] = entry[f"uenn_over_{ref}_total"] >= 10.0
            if "lj" in by:
                for rate in _RATES:
                    entry["lj_over_uenn_" + rate[5:]] = by["lj"][rate] / u[rate]
                entry["target_within_5x_lj"] = entry["lj_over_uenn_total"] <= 5.0
            out.append(entry)
    return out


def _exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``log t`` against ``log N``."""
    x = [math.log(n) for n, _ in points]
    y = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / sum((a - mx) ** 2 for a in x)


def _scaling(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r"""Exponent :math:`p` of :math:`t \propto N^p` per model (model-only wall and CPU times)."""
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if r["status"] == "ok":
            series.setdefault((r["model"], r["device"], r["dtype"]), []).append(r)
    out = []
    for (model, device, dtype), rows in series.items():
        if len(rows) < 2:
            continue
        out.append(
            {
                "model": model,
                "device": device,
                "dtype": dtype,
                "exponent": _exponent([(r["atoms"], r["time_model_s"]) for r in rows]),
                "exponent_cpu": _exponent([(r["atoms"], r["cpu_time_model_s"]) for r in rows]),
                "atoms": [r["atoms"] for r in rows],
            }
        )
    return out


def format_table(report: dict[str, Any]) -> str:
    """The results of :func:`run_bench` as a plain-text table (rates in atoms per second)."""
    m = report["machine"]
    load = [f"{x:.1f}" for x in m["load_average_start"] or []]
    load_end = [f"{x:.1f}" for x in m["load_average_end"] or []]
    lines = [
        f"uenn-geo bench: cutoff {report['config']['cutoff']} A, {m['torch_threads']} torch "
        f"thread(s), torch-scatter {'yes' if m['torch_scatter'] else 'no'}, freed memory kept "
        f"{'yes' if m.get('freed_memory_kept') else 'no'}, load average "
        f"{'/'.join(load)} -> {'/'.join(load_end)}",
        "atoms/s = atoms / median wall time of one force evaluation; cpu = per CPU second; "
        "+NL = neighbour list built in the call",
        f"{'device':6} {'dtype':7} {'atoms':>6} {'edges':>9} {'model':13} {'atoms/s':>10} "
        f"{'+NL':>10} {'cpu':>10} {'cpu +NL':>10} {'ms +NL':>9} {'NL ms':>7} {'peak MiB':>9}",
    ]
    for r in report["results"]:
        head = f"{r['device']:6} {r['dtype']:7} {r['atoms']:>6} {r['edges']:>9} {r['model']:13}"
        if r["status"] != "ok":
            lines.append(f"{head} skipped: {r['reason']}")
            continue
        rates = " ".join(f"{r[k]:>10,.0f}" for k in _RATES)
        lines.append(
            f"{head} {rates} {1e3 * r['time_total_s']:>9.1f} "
            f"{1e3 * r['time_neighbors_s']:>7.1f} {r['peak_memory_mib']:>9.1f}"
        )
    for q in report["ratios"]:
        head = f"{q['device']} {q['dtype']} {q['atoms']} atoms:"
        ours = q.get("model", "uenn")
        for key, what, target in (
            ("uenn_over_schnet", f"{ours}/schnet speed", ">= 10"),
            ("uenn_over_schnet32", f"{ours}/schnet32 speed", ">= 10"),
            ("lj_over_uenn", f"lj/{ours} speed", "<= 5"),
        ):
            if key + "_total" in q:
                vals = ", ".join(f"{q[key + '_' + r[5:]]:.2f}" for r in _RATES)
                lines.append(f"{head} {what} {vals} (as columns; target +NL {target})")
    for s in report["scaling"]:
        lines.append(
            f"scaling {s['model']:13} {s['device']} {s['dtype']}: t ~ N^{s['exponent']:.2f} "
            f"(wall), N^{s['exponent_cpu']:.2f} (cpu) over {s['atoms']} atoms"
        )
    return "\n".join(lines)


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
        memory_method = _cpu_memory_method()
        machine = _machine(config, memory_method)
        results: list[dict[str, Any]] = []
        prior: dict = {}
        for device in config.devices:
            for dtype in config.dtypes:
                for num_atoms in sorted(config.sizes):
                    results += _bench_group(config, device, dtype, num_atoms, memory_method, prior)
    finally:
        torch.set_num_threads(threads)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "config": asdict(config),
        "machine": machine,
        "results": results,
        "ratios": _ratios(results),
        "scaling": _scaling(results),
    }
    if config.out:
        path = Path(config.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    return report
