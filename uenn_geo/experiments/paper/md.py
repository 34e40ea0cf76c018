r"""The paper's MD test (Ma & Chan, sec. 4): exact and learned forces from the same states."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch_geometric.data import Data

from uenn_geo.data.lj import ARGON_MASS, lennard_jones
from uenn_geo.data.paper import paper_md_initial_positions
from uenn_geo.dynamics import Trajectory, maxwell_boltzmann, velocity_verlet

__all__ = ["run_md_test", "jacobian_asymmetry"]


def _model_forces(model: torch.nn.Module, pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The model's forces on a batch of 4-atom states :obj:`(..., 4, 3)`, in float64."""
    flat = pos.reshape(-1, 3).to(dtype)
    batch = torch.arange(flat.shape[0] // 4).repeat_interleave(4)
    with torch.no_grad():
        return model(Data(pos=flat, batch=batch)).reshape(pos.shape).double()


def _integrate(force_fn, pos0, vel0, masses, dt, steps, bar) -> tuple[Trajectory, float]:
    t0 = time.perf_counter()
    traj = velocity_verlet(
        pos0, vel0, masses, force_fn, dt, steps, callback=lambda *_: bar.update(1)
    )
    return traj, time.perf_counter() - t0


def run_md_test(
    model: torch.nn.Module,
    samples: int = 10,
    steps: int = 10_000,
    temperature: float = 10.0,
    dt: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    r"""The paper's MD test: exact and learned forces from the same initial states.

    ``samples`` copies of the paper's 4-atom configuration get Maxwell-Boltzmann velocities
    at ``temperature`` (centre-of-mass momentum removed) and are integrated with velocity
    Verlet (``dt`` fs) twice, once with the exact LJ forces and once with the model. Total
    energies (eq. 46) of both runs are kinetic plus the exact LJ potential. ``progress``
    shows a progress bar over the steps of both runs (on stderr).

    Returns:
        Per-step arrays: ``position_rmsd`` (A, over samples, atoms and components as the
        root mean square of the displacement vectors' lengths), ``energy_rmsd`` (eV, over
        samples, learned vs exact total energy), ``x_atom1`` (sample 1, both runs),
        ``energy_sample1`` (both runs), and scalars (see the code).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    pos0 = paper_md_initial_positions().expand(samples, 4, 3).clone()
    masses = torch.full((4,), ARGON_MASS, dtype=torch.float64)
    vel0 = maxwell_boltzmann(masses, temperature, num_samples=samples, generator=gen)
    mdtype = next(model.parameters()).dtype
    model.eval()
    with tqdm(total=2 * steps, unit="step", desc="MD test", disable=not progress) as bar:
        exact, t_exact = _integrate(lennard_jones, pos0, vel0, masses, dt, steps, bar)
        pred, t_learned = _integrate(
            lambda pos: _model_forces(model, pos, mdtype), pos0, vel0, masses, dt, steps, bar
        )
    pred_pot = lennard_jones(pred.positions.reshape(-1, 4, 3))[0].reshape(len(pred), samples)
    e_exact = exact.total_energy
    e_pred = pred.kinetic_energy + pred_pot
    disp = (pred.positions - exact.positions).square().sum(-1)  # (T, S, 4)
    pos_rmsd = disp.mean(dim=(1, 2)).sqrt()
    e_rmsd = (e_pred - e_exact).square().mean(dim=1).sqrt()
    finite = torch.isfinite(pos_rmsd)
    return {
        **_md_state_errors(model, exact, steps, mdtype),
        "steps": steps,
        "samples": samples,
        "dt_fs": dt,
        "temperature_K": temperature,
        "position_rmsd": pos_rmsd.tolist(),
        "energy_rmsd": e_rmsd.tolist(),
        "x_atom1": {
            "exact": exact.positions[:, 0, 0, 0].tolist(),
            "learned": pred.positions[:, 0, 0, 0].tolist(),
        },
        "energy_sample1": {"exact": e_exact[:, 0].tolist(), "learned": e_pred[:, 0].tolist()},
        "exact_energy_drift": (e_exact - e_exact[0]).abs().max().item(),
        "bounded": bool(finite.all() and pred.positions.abs().max().item() < 1e3),
        "seconds_exact": t_exact,
        "seconds_learned": t_learned,
    }


def _md_state_errors(
    model: torch.nn.Module, exact: Trajectory, steps: int, dtype: torch.dtype
) -> dict[str, float]:
    """How well the model knows the states the MD visits (those of the exact trajectories)."""
    every = max(1, steps // 200)
    visited = exact.positions[::every].reshape(-1, 4, 3)
    exact_f = lennard_jones(visited)[1]
    pred_f = _model_forces(model, visited, dtype)
    return {
        "md_states_force_rms": exact_f.square().mean().sqrt().item(),
        "md_states_force_rmsd": (pred_f - exact_f).square().mean().sqrt().item(),
        "md_states_jacobian_asymmetry": jacobian_asymmetry(
            model, exact.positions[:: every * 10].reshape(-1, 4, 3), dtype
        ),
    }


def jacobian_asymmetry(model: torch.nn.Module, states: torch.Tensor, dtype: torch.dtype) -> float:
    r"""How far a force model is from conservative on ``states`` :obj:`(S, A, 3)` (A).

    Forces that are the negative gradient of an energy have a symmetric Jacobian
    :math:`J_{ia,jb} = \partial F_{ia} / \partial r_{jb}` (minus the Hessian). A direct force
    model need not: the antisymmetric part of :math:`J` is its curl, the part of the force
    that does net work around closed loops and so makes the energy of its MD drift. Returned:
    :math:`\lVert J - J^\top \rVert_F / \lVert J + J^\top \rVert_F`, summed over the states
    (0 for conservative forces, 1 when the curl is as large as the gradient part). Models
    with ``conservative=True`` give 0 by construction.
    """
    if getattr(model, "conservative", False):
        return 0.0  # F = -dE/dr: J is minus a Hessian

    num_atoms = states.shape[1]
    batch = torch.zeros(num_atoms, dtype=torch.long)
    was_training = model.training
    model.eval()
    anti = sym = 0.0
    for state in states.to(dtype):

        def forces(flat: torch.Tensor) -> torch.Tensor:
            return model(Data(pos=flat.view(num_atoms, 3), batch=batch)).reshape(-1)

        jac = torch.autograd.functional.jacobian(forces, state.reshape(-1)).double()
        anti += (jac - jac.T).square().sum().item()
        sym += (jac + jac.T).square().sum().item()
    model.train(was_training)
    return math.sqrt(anti / sym) if sym > 0 else float("nan")
