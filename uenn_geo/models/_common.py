"""Input checks and scale fitting shared by the graph force models."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from uenn_geo.nn.linear import _dtype_name


def check_positions(data: Any, dtype: torch.dtype) -> Tensor:
    """``data.pos`` if it is an ``(N, 3)`` tensor of ``dtype``; a clear error otherwise."""
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"data.pos must have shape (N, 3) in Angstrom, got {shape}")
    if pos.dtype != dtype:
        raise TypeError(
            f"data.pos has dtype {_dtype_name(pos.dtype)} but the model is "
            f"{_dtype_name(dtype)}; convert the data (uenn_geo.train.CastFloats) or build "
            f"the model with dtype={_dtype_name(pos.dtype)!r}"
        )
    return pos


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


def graph_inputs(
    data: Any, dtype: torch.dtype, cutoff: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int]:
    """``(pos, batch, edge_index, shifts, num_graphs)`` of a PyG ``Data``/``Batch``.

    Positions are checked with :func:`check_positions`; a missing ``batch`` means one graph.
    Without ``edge_index`` the neighbour list is built with
    :func:`uenn_geo.neighbors.radius_graph` (using ``cell`` and ``pbc`` when present), as
    PyG's SchNet does; otherwise ``edge_index`` and ``shifts`` (if present) are used as given.
    """
    from uenn_geo.neighbors import radius_graph

    pos = check_positions(data, dtype)
    num_atoms = pos.shape[0]
    batch = getattr(data, "batch", None)
    if batch is None:
        batch = torch.zeros(num_atoms, dtype=torch.long, device=pos.device)
    edge_index = getattr(data, "edge_index", None)
    if edge_index is None:
        edge_index, shifts = radius_graph(
            pos,
            cutoff,
            batch=batch,
            cell=getattr(data, "cell", None),
            pbc=getattr(data, "pbc", None),
        )
    else:
        shifts = getattr(data, "shifts", None)
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_atoms else 1
    return pos, batch, edge_index, shifts, int(num_graphs)
