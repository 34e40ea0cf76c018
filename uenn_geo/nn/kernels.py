r"""A fused CPU kernel for the neighbour sums of :class:`~uenn_geo.nn.VectorGaussianConv`.

The sums :math:`h_i = \sum_j \mathrm{feat}_{ij} \otimes e_{ij}` of the vector graph layer
(Ma & Chan, sec. 4, eqs. 29-31) are most of the cost of a force call. The plain PyTorch path
writes the radial functions :math:`e` (:math:`E \times B`) and the rows :math:`\mathrm{feat}`
of every edge to memory and multiplies them chunk by chunk (:func:`torch.bmm`);
``neighbour_sums.cpp`` instead gathers each atom's edges into buffers that stay in the cache
and multiplies them there, in one pass over the list, and its backward does the same for the
gradients of the positions, shifts and node features. The numbers are the same to float
round-off (float32 Gaussians by ATen's ``exp_u20``, within 20 ulp). Both use torch's threads
(:func:`torch.set_num_threads`) on a list sorted by centre, split into ranges of whole
centres. The backward is first order only, so :class:`~uenn_geo.nn.VectorGaussianConv`
takes the kernel where no gradient flows through the sums (forces predicted directly) or
where one flows but no second derivative can follow (layers in eval mode: forces and stress
from the energy in the ASE calculator, ``uenn-geo md``, OpenMM and LAMMPS, evaluation); on
the CPU, in three dimensions, with plain Gaussians, never under :func:`torch.export`; in a
:func:`torch.compile`\ d graph that needs gradients only where autograd differentiates the
graph from outside (:func:`differentiated_outside`, which the evaluator uses), not under
:func:`torch.func.grad` inside it.
Training (a force loss differentiates the forces again) keeps the plain path. Speed:
docs/bench.md.

The kernel is compiled with :func:`torch.utils.cpp_extension.load` (a C++ compiler and ninja,
as :func:`torch.compile` needs a compiler on the CPU) the first time a process needs it, in
torch's extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``):
about 30 s once per machine and version, then a fraction of a second per process. Where it
cannot be built, the layers warn once and use the plain path (built without OpenMP, it warns
and runs on one thread). ``UENN_GEO_KERNELS=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "attach",
    "available",
    "differentiated_outside",
    "enabled",
    "neighbour_sums",
    "plain_path",
    "takes_kernel",
]

#: The C++ source, shipped inside the package.
SOURCE = Path(__file__).with_name("neighbour_sums.cpp")
#: Environment variable that turns the kernel off when set to ``0``.
ENV = "UENN_GEO_KERNELS"

#: Seconds after which a build's lock file counts as left by a build that never finished (a
#: killed process): torch's lock has no owner, so its waiters would wait for ever. A build
#: takes about a minute on two busy cores.
STALE_LOCK_SECONDS = 600.0

_lock = threading.Lock()
_extension: ModuleType | None = None
_error: str | None = None


def enabled() -> bool:
    """Whether the kernel may be used (``UENN_GEO_KERNELS`` is not ``0``)."""
    return os.environ.get(ENV, "1").strip() != "0"


def _compiler_flags() -> tuple[str, list[str]]:
    """The extension's name and flags for the vector instructions torch itself uses here."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    isa = {
        "AVX2": ["-mavx2", "-mfma", "-mf16c"],
        "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    }.get(capability)
    # -fno-tree-vectorize: the hot loops are written with ATen's vector classes; the
    # compiler's own vectorisation of the short per-edge loops (a few features long) made
    # the kernels 5-15% slower (docs/bench.md, sixteenth round)
    flags = ["-O3", "-fno-tree-vectorize"]
    if isa is not None:  # at::vec's vector classes for this instruction set
        flags += [*isa, f"-DCPU_CAPABILITY_{capability}", f"-DCPU_CAPABILITY={capability}"]
    else:
        capability = "default"
    return f"uenn_geo_neighbour_sums_{capability.lower()}", flags


def _load() -> ModuleType | None:
    global _extension, _error
    with _lock:
        if _extension is not None or _error is not None:
            return _extension
        from torch.utils.cpp_extension import load

        name, flags = _compiler_flags()
        # -fopenmp: at::parallel_for's threads (ATen's header is OpenMP pragmas, ignored
        # without it; the extension then shares the libgomp torch loaded). A compiler without
        # OpenMP (Apple's clang) gets the kernel on one thread instead.
        for openmp in (["-fopenmp"], []):
            try:
                _wait_for_build(_lock_file(name + ("" if openmp else "_serial")))
                _extension = load(
                    name + ("" if openmp else "_serial"),
                    [str(SOURCE)],
                    extra_cflags=flags + openmp,
                    extra_ldflags=openmp,
                    verbose=False,
                )
                break
            except Exception as exc:  # no compiler, no ninja, a read-only cache, ...
                _error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        if _extension is not None:
            if not openmp:  # built, but without threads
                warnings.warn(
                    f"uenn-geo: the CPU kernel of the neighbour sums was built without OpenMP "
                    f"({_error}); it runs on one thread. A compiler with OpenMP (GCC, or clang "
                    "with libomp) gives it torch's threads.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            _error = None
        else:
            warnings.warn(
                f"uenn-geo: the CPU kernel of the neighbour sums could not be built ({_error}); "
                "the graph layers use the plain PyTorch path (the same numbers, slower). "
                f"Install a C++ compiler and ninja, or set {ENV}=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
        return _extension


def _lock_file(name: str) -> Path | None:
    """The lock file torch's builder takes for the extension ``name`` (None if unknown)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False)) / "lock"
    except Exception:  # a torch that builds elsewhere: its own waiting applies
        return None


def _wait_for_build(lock: Path | None, stale: float = STALE_LOCK_SECONDS) -> None:
    """Wait while another process builds (``lock`` exists); remove a lock older than
    ``stale`` seconds, with a warning, rather than wait on it for ever."""
    said = False
    while lock is not None:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if not said and age > 10.0:
            print(
                f"uenn-geo: waiting for another process's build of the CPU kernel ({lock}; "
                f"removed if older than {stale / 60:.0f} minutes)",
                file=sys.stderr,
                flush=True,
            )
            said = True
        if age > stale:
            warnings.warn(
                f"uenn-geo: removing {lock}, left {age / 60:.0f} minutes ago by a build of the "
                "CPU kernel that did not finish (a killed process); building again",
                RuntimeWarning,
                stacklevel=4,
            )
            lock.unlink(missing_ok=True)
            return
        time.sleep(0.5)


def available() -> bool:
    """Whether the kernel is enabled and built (builds it on the first call)."""
    return enabled() and _load() is not None


def attach(module: torch.nn.Module) -> bool:
    """Decide now, eagerly, for every graph layer in ``module`` whose choice is still open
    (``kernel`` :obj:`None`) whether it uses the kernel; before :func:`torch.compile`, which
    cannot build it mid-trace. Returns :func:`available`."""
    use = available()
    for layer in module.modules():
        if hasattr(layer, "kernel") and layer.kernel is None:
            layer.kernel = use
    return use


def takes_kernel(
    layer: torch.nn.Module, pos: Tensor, v: Tensor, x: Tensor | None, shifts: Tensor | None
) -> bool:
    """Whether the graph layer ``layer`` (a :class:`~uenn_geo.nn.VectorGaussianConv`) computes
    its sums here: on the CPU, in three dimensions, plain Gaussians, not under
    :func:`torch.export`; with a gradient through the sums only in eval mode (the backward is
    first order; training differentiates forces again), never one for the Gaussians
    themselves, and inside a compiled graph only where autograd differentiates it from
    outside (:func:`differentiated_outside`). Decides ``layer.kernel`` at the first eager call."""
    if layer.kernel is False or layer.radial is not None or torch.compiler.is_exporting():
        return False
    if getattr(layer, "bond_quartics", False):  # columns the kernel does not compute
        return False
    if pos.shape[1] != 3 or pos.device.type != "cpu":
        return False
    if torch.is_grad_enabled():
        if layer.basis.rs.requires_grad or layer.basis.log_eta.requires_grad:
            return False
        inputs = (pos, v, x, shifts)
        if layer.training and any(t is not None and t.requires_grad for t in inputs):
            return False
        # torch.func.grad inside a compiled graph cannot take the operator (and its inputs
        # need not look as if they required gradients there)
        if torch.compiler.is_compiling() and not layer.kernel_compiled_grad:
            return False
    if layer.kernel is None:
        if torch.compiler.is_compiling():
            return False  # decided eagerly (attach) before compiling
        layer.kernel = available()
    return layer.kernel


@contextlib.contextmanager
def plain_path(module: torch.nn.Module) -> Iterator[None]:
    """Every graph layer of ``module`` on the plain PyTorch path for the duration (e.g. for
    :mod:`torch.export`, whose programs must run without uenn-geo's operators)."""
    layers = [m for m in module.modules() if hasattr(m, "kernel")]
    before = [m.kernel for m in layers]
    for m in layers:
        m.kernel = False
    try:
        yield
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.kernel = flag


@contextlib.contextmanager
def differentiated_outside(module: torch.nn.Module) -> Iterator[None]:
    r"""Let the graph layers of ``module`` take the kernel inside :func:`torch.compile`\ d
    graphs that need gradients, for the duration: right where the compiled graph is
    differentiated by autograd from outside (the evaluator of an energy model), wrong under
    :func:`torch.func.grad` inside the graph, which cannot take the operator (so, by default,
    compiled graphs that need gradients take the plain path)."""
    layers = [m for m in module.modules() if hasattr(m, "kernel_compiled_grad")]
    for m in layers:
        m.kernel_compiled_grad = True
    try:
        yield
    finally:
        for m in layers:
            m.kernel_compiled_grad = False


@torch.library.custom_op("uenn_geo::neighbour_sums", mutates_args=())
def neighbour_sums(
    pos: Tensor,
    index: Tensor,
    shifts: Tensor | None,
    v: Tensor,
    x: Tensor | None,
    rs: Tensor,
    eta: Tensor,
    cutoff: float,
    eps: float,
    vector_rows: bool,
    scalar_row: bool,
    centre_vectors: bool,
    bond_vectors: bool,
    bond_cubes: bool,
) -> Tensor:
    r"""The neighbour sums :obj:`(N, R, B W)` of :meth:`VectorGaussianConv.neighbour_sums
    <uenn_geo.nn.VectorGaussianConv.neighbour_sums>` for positions :obj:`(N, 3)`, a list
    ``index`` :obj:`(2, E)` (centres first; best sorted by centre), image ``shifts``
    :obj:`(E, 3)`, node features ``v`` :obj:`(N, F)` and ``x`` :obj:`(N, 3, F_v)`, and the
    Gaussians' centres ``rs`` and widths ``eta`` :obj:`(B)`. No autograd; a
    :func:`torch.compile`\ d graph calls it as one opaque operation."""
    extension = _load()
    if extension is None:
        raise RuntimeError(f"the neighbour-sum kernel is not available: {_error}")
    return extension.neighbour_sums(
        pos, index, shifts, v, x, rs, eta, cutoff, eps,
        vector_rows, scalar_row, centre_vectors, bond_vectors, bond_cubes,
    )  # fmt: skip


@neighbour_sums.register_fake
def _(pos, index, shifts, v, x, rs, eta, cutoff, eps, vector_rows, scalar_row, centre_vectors,
      bond_vectors, bond_cubes):  # fmt: skip
    vector_channels = 0 if x is None else x.shape[2]
    extra = int(centre_vectors) + int(bond_vectors) + int(bond_cubes) if vector_channels else 0
    width = v.shape[1] + vector_channels * (1 + extra)
    rows = 3 * int(vector_rows) + int(scalar_row)
    return pos.new_empty(pos.shape[0], rows, rs.shape[0] * width)


@torch.library.custom_op("uenn_geo::neighbour_sums_backward", mutates_args=())
def neighbour_sums_backward(
    grad: Tensor,
    pos: Tensor,
    index: Tensor,
    shifts: Tensor | None,
    v: Tensor,
    x: Tensor | None,
    rs: Tensor,
    eta: Tensor,
    cutoff: float,
    eps: float,
    vector_rows: bool,
    scalar_row: bool,
    centre_vectors: bool,
    bond_vectors: bool,
    bond_cubes: bool,
) -> list[Tensor]:
    """The gradients of :func:`neighbour_sums` in ``pos``, ``shifts``, ``v`` and ``x`` for
    the gradient ``grad`` of its output (empty tensors for absent ``shifts`` and ``x``); first
    order only (a second derivative through it raises)."""
    extension = _load()
    if extension is None:
        raise RuntimeError(f"the neighbour-sum kernel is not available: {_error}")
    return extension.neighbour_sums_backward(
        grad, pos, index, shifts, v, x, rs, eta, cutoff, eps,
        vector_rows, scalar_row, centre_vectors, bond_vectors, bond_cubes,
    )  # fmt: skip


@neighbour_sums_backward.register_fake
def _(grad, pos, index, shifts, v, x, rs, eta, cutoff, eps, vector_rows, scalar_row,
      centre_vectors, bond_vectors, bond_cubes):  # fmt: skip
    empty = pos.new_empty(0)
    return [
        torch.empty_like(pos),
        empty if shifts is None else torch.empty_like(shifts),
        torch.empty_like(v),
        empty if x is None else torch.empty_like(x),
    ]


def _setup_context(ctx, inputs, output):
    pos, index, shifts, v, x, rs, eta, *options = inputs
    ctx.save_for_backward(pos, index, shifts, v, x, rs, eta)
    ctx.options = options


def _backward(ctx, grad):
    pos, index, shifts, v, x, rs, eta = ctx.saved_tensors
    gpos, gshifts, gv, gx = neighbour_sums_backward(
        grad, pos, index, shifts, v, x, rs, eta, *ctx.options
    )
    return (
        gpos, None, None if shifts is None else gshifts, gv, None if x is None else gx,
        None, None, None, None, None, None, None, None, None,
    )  # fmt: skip


neighbour_sums.register_autograd(_backward, setup_context=_setup_context)


def _no_second_derivative(ctx, *grads):
    raise RuntimeError(
        "a second derivative through the fused neighbour-sum kernel is not implemented (its "
        "backward is first order); take it with the layers in training mode, or on the plain "
        "path: `with uenn_geo.nn.kernels.plain_path(model): ...` or UENN_GEO_KERNELS=0"
    )


neighbour_sums_backward.register_autograd(
    _no_second_derivative, setup_context=lambda ctx, inputs, output: None
)
