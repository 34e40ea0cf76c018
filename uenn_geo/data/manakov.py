r"""The discrete Manakov lattice (vector discrete nonlinear Schrodinger equation).

:math:`L` sites on a ring, each holding a vector :math:`\psi_j \in \mathbb{C}^n`:

.. math::
    i \frac{d \psi_j}{dt} = -(\psi_{j+1} + \psi_{j-1} - 2 \psi_j) - g \|\psi_j\|^2 \psi_j .

The flow map commutes with any :math:`U \in U(n)` applied at every site (the nonlinearity
only sees :math:`\|\psi_j\|`), so it is a natural test of the paper's unitary-equivariant
layer (eqs. 5-12) with complex weights: multiplication by :math:`i` commutes with
:math:`U(n)` but not with all of :math:`O(2n)`. The flow conserves the total norm
:math:`N = \sum_j \|\psi_j\|^2` (more generally the :math:`n \times n` matrix
:math:`\sum_j \psi_j \psi_j^\dagger`) and the energy

.. math::
    H = \sum_j \|\psi_{j+1} - \psi_j\|^2 - \frac{g}{2} \sum_j \|\psi_j\|^4 ,

with :math:`i \dot\psi_j = \partial H / \partial \psi_j^*`.

Units: this module is dimensionless (lattice units: hopping 1, time in inverse hopping),
unlike the rest of the library (eV, Angstrom, fs).

Layout follows the core layers: a state is a complex tensor of shape ``(..., n, L)``, the
vector index first and the sites as the :math:`M = L` channels.

Two integrators are provided: a fourth-order symplectic split-step (Yoshida composition of
Strang splitting; the hopping part is solved exactly by FFT on the ring and the on-site
nonlinearity exactly as a phase), which conserves the norm to round-off, and classical RK4
as an independent reference. The tests check that they agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from uenn_geo.files import atomic_save

__all__ = [
    "manakov_rhs",
    "manakov_norm",
    "manakov_energy",
    "manakov_step",
    "manakov_trajectory",
    "random_manakov_states",
    "manakov_pairs",
    "cached_manakov_pairs",
]

METHODS = ("split", "rk4")

# Yoshida (1990) weights for a 4th-order composition of a symmetric 2nd-order step.
_Y1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
_Y0 = 1.0 - 2.0 * _Y1


def _check_state(psi: Tensor) -> None:
    if not isinstance(psi, Tensor):
        raise TypeError(f"psi must be a torch.Tensor, got {type(psi).__name__}")
    if not psi.is_complex():
        raise TypeError(f"psi must have a complex dtype (complex64/complex128), got {psi.dtype}")
    if psi.dim() < 2:
        raise ValueError(f"psi must have shape (..., n, L), got {tuple(psi.shape)}")
    if psi.shape[-1] < 3:
        raise ValueError(f"the ring needs L >= 3 sites (last dimension), got L={psi.shape[-1]}")


def _laplacian(psi: Tensor) -> Tensor:
    return psi.roll(-1, dims=-1) + psi.roll(1, dims=-1) - 2.0 * psi


def _site_norm2(psi: Tensor) -> Tensor:
    # ||psi_j||^2, shape (..., 1, L)
    return (psi.real.square() + psi.imag.square()).sum(dim=-2, keepdim=True)


def manakov_rhs(psi: Tensor, g: float = 1.0) -> Tensor:
    r"""Time derivative of the Manakov lattice,
    :math:`\dot\psi_j = i(\psi_{j+1} + \psi_{j-1} - 2\psi_j + g\|\psi_j\|^2 \psi_j)`.

    Args:
        psi (torch.Tensor): complex state.
        g (float, optional): nonlinearity; :math:`g > 0` is focusing. (default: :obj:`1.0`)

    Shapes:
        :math:`(..., n, L) \to (..., n, L)`
    """
    _check_state(psi)
    return 1j * (_laplacian(psi) + g * _site_norm2(psi) * psi)


def manakov_norm(psi: Tensor) -> Tensor:
    r"""Total norm :math:`N = \sum_j \|\psi_j\|^2` (real).

    Shapes:
        :math:`(..., n, L) \to (...)`
    """
    _check_state(psi)
    return _site_norm2(psi).sum(dim=(-2, -1))


def manakov_energy(psi: Tensor, g: float = 1.0) -> Tensor:
    r"""Energy :math:`H = \sum_j \|\psi_{j+1}-\psi_j\|^2 - \frac{g}{2}\sum_j \|\psi_j\|^4`.

    Args:
        psi (torch.Tensor): complex state.
        g (float, optional): nonlinearity. (default: :obj:`1.0`)

    Shapes:
        :math:`(..., n, L) \to (...)`
    """
    _check_state(psi)
    hop = _site_norm2(psi.roll(-1, dims=-1) - psi).sum(dim=(-2, -1))
    onsite = _site_norm2(psi).square().sum(dim=(-2, -1))
    return hop - 0.5 * g * onsite


def _strang(psi: Tensor, h: float, g: float, phase_k: Tensor) -> Tensor:
    # N(h/2) K(h) N(h/2): the on-site part keeps ||psi_j|| fixed, so it is an exact phase.
    psi = psi * torch.exp(0.5j * h * g * _site_norm2(psi))
    psi = torch.fft.ifft(torch.fft.fft(psi, dim=-1) * torch.exp(1j * h * phase_k), dim=-1)
    return psi * torch.exp(0.5j * h * g * _site_norm2(psi))


def _rk4(psi: Tensor, h: float, g: float) -> Tensor:
    k1 = manakov_rhs(psi, g)
    k2 = manakov_rhs(psi + 0.5 * h * k1, g)
    k3 = manakov_rhs(psi + 0.5 * h * k2, g)
    k4 = manakov_rhs(psi + h * k3, g)
    return psi + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def manakov_step(
    psi: Tensor,
    dt: float,
    g: float = 1.0,
    max_substep: float = 0.005,
    method: str = "split",
) -> Tensor:
    r"""Advance the Manakov lattice by time :math:`dt` (the flow map :math:`\Phi_{dt}`).

    ``method="split"``: 4th-order Yoshida composition of Strang splitting, with the hopping
    term :math:`e^{i h \Delta}` applied exactly in Fourier space (eigenvalues
    :math:`-4\sin^2(\pi k / L)`) and the on-site term as the exact phase
    :math:`e^{i h g \|\psi_j\|^2}`. Symplectic and norm-conserving to round-off.
    ``method="rk4"``: classical Runge-Kutta, as an independent reference.

    Args:
        psi (torch.Tensor): complex state.
        dt (float): time step (negative values integrate backwards).
        g (float, optional): nonlinearity. (default: :obj:`1.0`)
        max_substep (float, optional): largest internal step; :math:`dt` is split into
            :math:`\lceil |dt| / \text{max\_substep} \rceil` equal substeps.
            (default: :obj:`0.005`)
        method (str, optional): ``"split"`` or ``"rk4"``. (default: :obj:`"split"`)

    Shapes:
        :math:`(..., n, L) \to (..., n, L)`
    """
    _check_state(psi)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not max_substep > 0:
        raise ValueError(f"max_substep must be > 0, got {max_substep}")
    if dt == 0:
        return psi.clone()
    substeps = max(1, math.ceil(abs(dt) / max_substep))
    h = dt / substeps
    if method == "rk4":
        for _ in range(substeps):
            psi = _rk4(psi, h, g)
        return psi
    L = psi.shape[-1]
    k = torch.arange(L, dtype=psi.real.dtype, device=psi.device)
    phase_k = -4.0 * torch.sin(math.pi * k / L).square()
    for _ in range(substeps):
        for w in (_Y1, _Y0, _Y1):
            psi = _strang(psi, w * h, g, phase_k)
    return psi


def manakov_trajectory(
    psi0: Tensor,
    dt: float,
    steps: int,
    g: float = 1.0,
    max_substep: float = 0.005,
    method: str = "split",
) -> Tensor:
    r"""Trajectory :math:`\psi(0), \psi(dt), \dots, \psi(\text{steps}\cdot dt)`.

    Args:
        psi0 (torch.Tensor): complex initial state.
        dt (float): time between saved frames.
        steps (int): number of steps.
        g (float, optional): nonlinearity. (default: :obj:`1.0`)
        max_substep (float, optional): largest internal step. (default: :obj:`0.005`)
        method (str, optional): ``"split"`` or ``"rk4"``. (default: :obj:`"split"`)

    Shapes:
        :math:`(..., n, L) \to (\text{steps}+1, ..., n, L)`
    """
    _check_state(psi0)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    frames = [psi0]
    for _ in range(steps):
        frames.append(manakov_step(frames[-1], dt, g, max_substep, method))
    return torch.stack(frames)


def random_manakov_states(
    num: int,
    n: int,
    L: int,
    amplitude: float = 1.0,
    component_scales: Sequence[float] | None = None,
    dtype: torch.dtype = torch.complex128,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Random initial states: independent circular complex Gaussians at every site,

    .. math::
        \psi_j^{c} = a \, s_c \, z_j^{c} / \textstyle\sqrt{\sum_c s_c^2}, \qquad
        z_j^c \sim \mathcal{CN}(0, 1),

    so that :math:`\mathbb{E}\|\psi_j\|^2 = a^2`. Unequal ``component_scales`` give a
    *polarised* ensemble that is not :math:`U(n)`-invariant: states rotated by a Haar-random
    unitary then lie outside the training distribution (but, by symmetry, not outside what an
    equivariant model has learned).

    Args:
        num (int): number of states.
        n (int): vector dimension.
        L (int): number of sites (:math:`L \geq 3`).
        amplitude (float, optional): RMS site norm :math:`a`. (default: :obj:`1.0`)
        component_scales (Sequence[float], optional): relative scale :math:`s_c` of each of
            the :math:`n` components; :obj:`None` means isotropic. (default: :obj:`None`)
        dtype (torch.dtype, optional): complex dtype. (default: :obj:`torch.complex128`)
        generator (torch.Generator, optional): random generator. (default: :obj:`None`)

    Shapes:
        output :math:`(\text{num}, n, L)`
    """
    if not dtype.is_complex:
        raise TypeError(f"dtype must be complex, got {dtype}")
    if n < 1 or L < 3 or num < 0:
        raise ValueError(f"need num >= 0, n >= 1 and L >= 3, got num={num}, n={n}, L={L}")
    if component_scales is None:
        scales = torch.ones(n, dtype=torch.float64)
    else:
        scales = torch.as_tensor(component_scales, dtype=torch.float64)
        if scales.shape != (n,):
            raise ValueError(
                f"component_scales must have length n={n}, got shape {tuple(scales.shape)}"
            )
        if (scales < 0).any() or not (scales > 0).any():
            raise ValueError(f"component_scales must be >= 0 and not all 0, got {scales.tolist()}")
    scales = amplitude * scales / scales.square().sum().sqrt()
    z = torch.randn(num, n, L, dtype=torch.complex128, generator=generator)
    return (z * scales[:, None]).to(dtype)


def manakov_pairs(
    num_trajectories: int,
    steps: int,
    n: int,
    L: int,
    dt: float,
    g: float = 1.0,
    amplitude: float = 1.0,
    component_scales: Sequence[float] | None = None,
    burn_in: float = 0.0,
    max_substep: float = 0.005,
    method: str = "split",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Training pairs :math:`(\psi(t), \psi(t + dt))` taken along trajectories.

    Each trajectory starts from :func:`random_manakov_states`, is integrated for ``burn_in``
    time units (so the pairs sample the dynamics, not only the initial ensemble), then
    ``steps`` consecutive pairs are taken. Integration is in ``complex128``.

    Args:
        num_trajectories (int): number of independent trajectories.
        steps (int): pairs per trajectory.
        n (int): vector dimension.
        L (int): number of sites.
        dt (float): time between input and target.
        g (float, optional): nonlinearity. (default: :obj:`1.0`)
        amplitude (float, optional): RMS site norm of the initial states. (default: :obj:`1.0`)
        component_scales (Sequence[float], optional): see :func:`random_manakov_states`.
            (default: :obj:`None`)
        burn_in (float, optional): time integrated before the first pair. (default: :obj:`0.0`)
        max_substep (float, optional): largest internal step. (default: :obj:`0.005`)
        method (str, optional): ``"split"`` or ``"rk4"``. (default: :obj:`"split"`)
        generator (torch.Generator, optional): random generator. (default: :obj:`None`)

    Shapes:
        output ``(x, y)``, each :math:`(\text{num\_trajectories} \cdot \text{steps}, n, L)`,
        trajectory-major (pair ``t * steps + s`` is step ``s`` of trajectory ``t``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    psi = random_manakov_states(
        num_trajectories, n, L, amplitude, component_scales, torch.complex128, generator
    )
    if burn_in > 0:
        psi = manakov_step(psi, burn_in, g, max_substep, method)
    traj = manakov_trajectory(psi, dt, steps, g, max_substep, method)  # (steps+1, T, n, L)
    x = traj[:-1].transpose(0, 1).reshape(-1, n, L)
    y = traj[1:].transpose(0, 1).reshape(-1, n, L)
    return x, y


def cached_manakov_pairs(
    root: str | os.PathLike,
    num_trajectories: int,
    steps: int,
    n: int,
    L: int,
    dt: float,
    g: float = 1.0,
    amplitude: float = 1.0,
    component_scales: Sequence[float] | None = None,
    burn_in: float = 0.0,
    max_substep: float = 0.005,
    method: str = "split",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r""":func:`manakov_pairs` with a disk cache under ``root``.

    The file name holds a hash of every parameter (and the seed), so a changed parameter
    never reuses stale data. The file is written atomically (:func:`uenn_geo.files.atomic_save`).

    Args:
        root (str or os.PathLike): cache directory, e.g. ``datasets/manakov``.
        seed (int, optional): seed of the private generator. (default: :obj:`0`)
        **others: as in :func:`manakov_pairs`.

    Shapes:
        output ``(x, y)``, each :math:`(\text{num\_trajectories} \cdot \text{steps}, n, L)`
    """
    params = {
        "version": 1,
        "num_trajectories": int(num_trajectories),
        "steps": int(steps),
        "n": int(n),
        "L": int(L),
        "dt": float(dt),
        "g": float(g),
        "amplitude": float(amplitude),
        "component_scales": None
        if component_scales is None
        else [float(s) for s in component_scales],
        "burn_in": float(burn_in),
        "max_substep": float(max_substep),
        "method": str(method),
        "seed": int(seed),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root)
    path = root / f"manakov_n{n}_L{L}_{key}.pt"
    if path.exists():
        data = torch.load(path, weights_only=True)
        return data["x"], data["y"]
    gen = torch.Generator().manual_seed(seed)
    x, y = manakov_pairs(
        num_trajectories, steps, n, L, dt, g, amplitude, component_scales, burn_in,
        max_substep, method, gen,
    )  # fmt: skip
    atomic_save({"x": x, "y": y, "params": params}, path)
    return x, y
