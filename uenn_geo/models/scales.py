"""The scales and per-species energy shifts that the force models fit to training data."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def fit_force_energy_scales(
    forces: Tensor | Iterable[Any],
    species_of: Callable[[Any], Tensor | None] | None = None,
    num_species: int = 0,
) -> tuple[float, Tensor | None]:
    r"""The force scale and per-species energy shifts that force models fit to training data.

    .. math::
        s_F = \sqrt{\frac{1}{3N} \sum_{i, \alpha} F_{i\alpha}^2}, \qquad
        E_g \approx \sum_z n_{gz} \mu_z \ \text{(least squares)}

    Args:
        forces: forces :obj:`(N, 3)` in eV/A, or graphs carrying ``forces`` (and ``energy``
            in eV per structure for the shifts).
        species_of: maps a graph to species indices in ``[0, num_species)``, or :obj:`None`
            to skip that graph's energy; without it no shifts are fitted.
        num_species: length of the shift vector.

    Returns:
        ``(s_F, mu)`` with ``mu`` of shape :obj:`(num_species,)` (zero for species absent from
        the data), or :obj:`None` when no graph had an energy.
    """
    energies: list[float] = []
    counts: list[Tensor] = []
    if not isinstance(forces, Tensor) and isinstance(getattr(forces, "forces", None), Tensor):
        forces = forces.forces  # uenn_geo.train.DenseForceData: forces [B, A, 3]
    if isinstance(forces, Tensor):
        f = forces
    else:
        parts = []
        for d in forces:
            parts.append(d.forces.reshape(-1))
            energy = getattr(d, "energy", None)
            species = species_of(d) if species_of is not None and energy is not None else None
            if species is not None:
                energies.append(float(torch.as_tensor(energy).reshape(-1)[0]))
                counts.append(torch.bincount(species.long().cpu(), minlength=num_species))
        if not parts:
            raise ValueError("fit_scales got no graphs")
        f = torch.cat(parts)
    if f.numel() == 0:
        raise ValueError("fit_scales got an empty force tensor")
    scale = float(f.detach().to(torch.float64).square().mean().sqrt())
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the force scale must be finite and > 0, got {scale} eV/A")
    if not energies:
        return scale, None
    a = torch.stack(counts).to(torch.float64)
    present = a.sum(0) > 0
    b = torch.tensor(energies, dtype=torch.float64).unsqueeze(1)
    mu = torch.linalg.lstsq(a[:, present], b, driver="gelsd").solution.squeeze(1)
    shift = torch.zeros(num_species, dtype=torch.float64)
    shift[present] = mu
    return scale, shift
