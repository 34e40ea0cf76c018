r"""Batched molecular dynamics in torch: Maxwell-Boltzmann velocities and velocity Verlet.

Units: positions in Angstrom, velocities in Angstrom/fs, time in fs, masses in u, forces in
eV/Angstrom, energies in eV, temperatures in K. One :math:`\mathrm{u\,\AA^2/fs^2}` is
:obj:`AMU_A2_PER_FS2` eV (CODATA 2018), so the acceleration is
:math:`\mathbf{a} = \mathbf{F} / (m \cdot \mathrm{AMU\_A2\_PER\_FS2})` in Angstrom/fs\ :sup:`2`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from uenn_geo.constants import AMU_A2_PER_FS2, BOLTZMANN

__all__ = [
    "BOLTZMANN",
    "AMU_A2_PER_FS2",
    "Trajectory",
    "kinetic_energy",
    "temperature",
    "maxwell_boltzmann",
    "velocity_verlet",
]


def _as_masses(masses: Tensor | Sequence[float] | float, like: Tensor) -> Tensor:
    masses = torch.as_tensor(masses, dtype=like.dtype, device=like.device)
    if masses.dim() == 0:
        masses = masses.expand(like.shape[-2])
    if masses.shape[-1] != like.shape[-2]:
        raise ValueError(
            f"Expected masses of shape (..., {like.shape[-2]}) to match vectors of shape "
            f"{tuple(like.shape)}, got {tuple(masses.shape)}"
        )
    if not bool((masses > 0).all()):
        raise ValueError("Expected all masses > 0 (u)")
    return masses


def _check_vectors(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"Expected {name} of a real floating dtype, got {x.dtype}")
    if x.dim() < 2 or x.shape[-1] != 3:
        raise ValueError(f"Expected {name} of shape (..., N, 3), got {tuple(x.shape)}")


def kinetic_energy(vel: Tensor, masses: Tensor | Sequence[float] | float) -> Tensor:
    r"""Kinetic energy in eV.

    .. math::
        K = \frac{1}{2} \sum_i m_i |\mathbf{v}_i|^2

    Args:
        vel (torch.Tensor): Velocities in Angstrom/fs.
        masses (torch.Tensor or list or float): Masses in u.

    Shapes:
        :math:`(..., N, 3), (N) \to (...)`
    """
    _check_vectors("vel", vel)
    m = _as_masses(masses, vel)
    return 0.5 * AMU_A2_PER_FS2 * (m * (vel * vel).sum(-1)).sum(-1)


def _degrees_of_freedom(num_atoms: int, remove_com_dof: bool) -> int:
    return 3 * num_atoms - (3 if remove_com_dof else 0)


def temperature(
    vel: Tensor, masses: Tensor | Sequence[float] | float, remove_com_dof: bool = True
) -> Tensor:
    r"""Instantaneous temperature in K.

    .. math::
        T = \frac{2 K}{f k_B}, \qquad f = 3N - 3 \text{ (or } 3N\text{)}

    Args:
        vel (torch.Tensor): Velocities in Angstrom/fs.
        masses (torch.Tensor or list or float): Masses in u.
        remove_com_dof (bool, optional): Subtract the 3 centre-of-mass degrees of freedom.
            (default: :obj:`True`)

    Shapes:
        :math:`(..., N, 3), (N) \to (...)`
    """
    dof = _degrees_of_freedom(vel.shape[-2], remove_com_dof)
    if dof <= 0:
        raise ValueError(f"No degrees of freedom left for {vel.shape[-2]} atom(s)")
    return 2.0 * kinetic_energy(vel, masses) / (dof * BOLTZMANN)


def maxwell_boltzmann(
    masses: Tensor | Sequence[float],
    temperature: float,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    remove_com: bool = True,
    exact: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Random velocities from the Maxwell-Boltzmann distribution, in Angstrom/fs.

    .. math::
        v_{i\alpha} \sim \mathcal{N}\!\left(0, \frac{k_B T}{m_i}\right), \qquad
        \mathbf{v}_i \leftarrow \mathbf{v}_i
            - \frac{\sum_j m_j \mathbf{v}_j}{\sum_j m_j}

    With ``remove_com`` the centre-of-mass velocity is subtracted; this removes exactly three
    degrees of freedom, so :func:`temperature` with ``remove_com_dof=True`` has expectation
    :math:`T`. With ``exact`` each sample is rescaled to have exactly that temperature.

    Args:
        masses (torch.Tensor or list): Masses in u.
        temperature (float): Temperature in K.
        num_samples (int, optional): Number of independent samples; :obj:`None` for one
            sample without the leading dimension. (default: :obj:`None`)
        generator (torch.Generator, optional): Random generator. (default: :obj:`None`)
        remove_com (bool, optional): Remove the centre-of-mass momentum. (default: :obj:`True`)
        exact (bool, optional): Rescale to the exact target temperature. (default: :obj:`False`)
        dtype (torch.dtype, optional): Dtype of the result. (default: dtype of :obj:`masses` if
            it is a floating tensor, else :obj:`torch.float64`)
        device (torch.device, optional): Device. (default: device of :obj:`masses`)

    Shapes:
        :math:`(N) \to (N, 3)` or :math:`(S, N, 3)` with ``num_samples=S``
    """
    if isinstance(masses, Tensor):
        dtype = dtype or (masses.dtype if masses.is_floating_point() else torch.float64)
        device = device or masses.device
    m = torch.as_tensor(masses, dtype=dtype or torch.float64, device=device)
    if m.dim() != 1 or m.numel() == 0:
        raise ValueError(f"Expected masses of shape (N,) with N >= 1, got {tuple(m.shape)}")
    if not bool((m > 0).all()):
        raise ValueError("Expected all masses > 0 (u)")
    if not float(temperature) >= 0.0:
        raise ValueError(f"Expected temperature >= 0 (K), got {temperature}")
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"Expected num_samples >= 0 or None, got {num_samples}")
    num_atoms = m.shape[0]
    if exact and _degrees_of_freedom(num_atoms, remove_com) == 0:
        raise ValueError(
            f"exact=True needs degrees of freedom, but {num_atoms} atom with remove_com has none"
        )
    shape = (1 if num_samples is None else num_samples, num_atoms, 3)
    noise = torch.randn(shape, generator=generator, dtype=m.dtype, device=m.device)
    scale = (BOLTZMANN * float(temperature) / (m * AMU_A2_PER_FS2)).sqrt()
    vel = noise * scale.unsqueeze(-1)
    if remove_com:
        com = (m.unsqueeze(-1) * vel).sum(-2, keepdim=True) / m.sum()
        vel = vel - com
    if exact and float(temperature) > 0.0:
        current = _temperature_raw(vel, m, remove_com)
        vel = vel * (float(temperature) / current).sqrt()[:, None, None]
    return vel.squeeze(0) if num_samples is None else vel


def _temperature_raw(vel: Tensor, masses: Tensor, remove_com_dof: bool) -> Tensor:
    dof = _degrees_of_freedom(vel.shape[-2], remove_com_dof)
    ke = 0.5 * AMU_A2_PER_FS2 * (masses * (vel * vel).sum(-1)).sum(-1)
    return 2.0 * ke / (dof * BOLTZMANN)


@dataclass
class Trajectory:
    r"""Recorded states of a :func:`velocity_verlet` run.

    Attributes:
        step (torch.Tensor): Step index of each record, :math:`(T)`.
        positions (torch.Tensor): Positions in Angstrom, :math:`(T, ..., N, 3)`.
        velocities (torch.Tensor): Velocities in Angstrom/fs, :math:`(T, ..., N, 3)`.
        forces (torch.Tensor): Forces in eV/Angstrom, :math:`(T, ..., N, 3)`.
        kinetic_energy (torch.Tensor): Kinetic energy in eV, :math:`(T, ...)`.
        potential_energy (torch.Tensor, optional): Potential energy in eV, :math:`(T, ...)`,
            when the force function returns ``(energy, forces)``.
        masses (torch.Tensor): Masses in u, :math:`(N)`.
        dt (float): Time step in fs.
    """

    step: Tensor
    positions: Tensor
    velocities: Tensor
    forces: Tensor
    kinetic_energy: Tensor
    potential_energy: Tensor | None
    masses: Tensor
    dt: float

    @property
    def time(self) -> Tensor:
        """Time of each record in fs, :math:`(T)`."""
        return self.step.to(self.positions.dtype) * self.dt

    @property
    def total_energy(self) -> Tensor | None:
        """Kinetic plus potential energy in eV, :math:`(T, ...)`, or :obj:`None`."""
        if self.potential_energy is None:
            return None
        return self.kinetic_energy + self.potential_energy

    def temperature(self, remove_com_dof: bool = True) -> Tensor:
        """Instantaneous temperature in K, :math:`(T, ...)`."""
        return temperature(self.velocities, self.masses, remove_com_dof)

    def __len__(self) -> int:
        return self.step.shape[0]


ForceFn = Callable[[Tensor], "Tensor | tuple[Tensor, Tensor]"]


def _evaluate(force_fn: ForceFn, pos: Tensor) -> tuple[Tensor | None, Tensor]:
    out = force_fn(pos.detach())  # a fresh leaf: force_fn may call requires_grad_() on it
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"force_fn must return forces or (energy, forces), got {len(out)}")
        energy, forces = out
        energy = energy.detach()
    else:
        energy, forces = None, out
    if forces.shape != pos.shape:
        raise ValueError(
            f"force_fn returned forces of shape {tuple(forces.shape)}, expected {tuple(pos.shape)}"
        )
    return energy, forces.detach()


def velocity_verlet(
    pos: Tensor,
    vel: Tensor,
    masses: Tensor | Sequence[float] | float,
    force_fn: ForceFn,
    dt: float,
    steps: int,
    record_every: int = 1,
    callback: Callable[[int, Tensor, Tensor, Tensor], None] | None = None,
) -> Trajectory:
    r"""Integrate Newton's equations with velocity Verlet (NVE), batched over configurations.

    .. math::
        \mathbf{v}(t + \tfrac{\Delta t}{2}) &= \mathbf{v}(t)
            + \tfrac{\Delta t}{2}\,\mathbf{a}(t) \\
        \mathbf{r}(t + \Delta t) &= \mathbf{r}(t) + \Delta t\,\mathbf{v}(t + \tfrac{\Delta t}{2}) \\
        \mathbf{v}(t + \Delta t) &= \mathbf{v}(t + \tfrac{\Delta t}{2})
            + \tfrac{\Delta t}{2}\,\mathbf{a}(t + \Delta t)

    with :math:`\mathbf{a} = \mathbf{F}/m` converted by :obj:`AMU_A2_PER_FS2`. This is the
    integrator of the paper's MD test (section 4, :math:`\Delta t = 1` fs).

    The force function receives positions of the shape of :obj:`pos` and returns forces of the
    same shape, or a tuple ``(energy, forces)`` (as :func:`uenn_geo.data.lj.lennard_jones`
    does), in which case the potential energy is recorded too. Gradient tracking is left to
    the force function (autograd forces work); recorded tensors are detached.

    Args:
        pos (torch.Tensor): Initial positions in Angstrom.
        vel (torch.Tensor): Initial velocities in Angstrom/fs.
        masses (torch.Tensor or list or float): Masses in u, one per atom.
        force_fn (callable): Positions -> forces in eV/Angstrom, or -> (energy, forces).
        dt (float): Time step in fs.
        steps (int): Number of steps.
        record_every (int, optional): Record steps :math:`0, k, 2k, \ldots \le` ``steps``.
            (default: :obj:`1`)
        callback (callable, optional): Called as ``callback(step, pos, vel, forces)`` after
            every step. (default: :obj:`None`)

    Returns:
        :class:`Trajectory`

    Shapes:
        :math:`(..., N, 3) \to` records of shape :math:`(T, ..., N, 3)`,
        :math:`T = \lfloor \mathrm{steps} / k \rfloor + 1`
    """
    _check_vectors("pos", pos)
    _check_vectors("vel", vel)
    if vel.shape != pos.shape:
        raise ValueError(
            f"Expected vel of the shape of pos {tuple(pos.shape)}, got {tuple(vel.shape)}"
        )
    if vel.dtype != pos.dtype:
        raise TypeError(f"Expected vel of dtype {pos.dtype}, got {vel.dtype}")
    if steps < 0:
        raise ValueError(f"Expected steps >= 0, got {steps}")
    if record_every < 1:
        raise ValueError(f"Expected record_every >= 1, got {record_every}")
    m = _as_masses(masses, pos)
    inv_m = (1.0 / (m * AMU_A2_PER_FS2)).unsqueeze(-1)  # (..., N, 1), fs^2 / (u A^2) per eV
    half_dt = 0.5 * dt

    pos = pos.detach().clone()
    vel = vel.detach().clone()
    energy, forces = _evaluate(force_fn, pos)
    records: dict[str, list[Tensor]] = {"pos": [], "vel": [], "forces": [], "energy": []}
    record_steps: list[int] = []

    def record(step: int) -> None:
        record_steps.append(step)
        records["pos"].append(pos)
        records["vel"].append(vel)
        records["forces"].append(forces)
        if energy is not None:
            records["energy"].append(energy)

    record(0)
    for step in range(1, steps + 1):
        vel = vel + half_dt * forces * inv_m
        pos = pos + dt * vel
        energy, forces = _evaluate(force_fn, pos)
        vel = vel + half_dt * forces * inv_m
        if step % record_every == 0:
            record(step)
        if callback is not None:
            callback(step, pos, vel, forces)

    velocities = torch.stack(records["vel"])
    potential = torch.stack(records["energy"]) if records["energy"] else None
    if potential is not None and len(records["energy"]) != len(record_steps):
        raise ValueError("force_fn must return (energy, forces) consistently")
    return Trajectory(
        step=torch.tensor(record_steps, dtype=torch.long, device=pos.device),
        positions=torch.stack(records["pos"]),
        velocities=velocities,
        forces=torch.stack(records["forces"]),
        kinetic_energy=kinetic_energy(velocities, m),
        potential_energy=potential,
        masses=m,
        dt=float(dt),
    )
