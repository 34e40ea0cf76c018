"""The scales and per-species energy shifts that the force models fit to training data."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from uenn_geo.edges import Edges
from uenn_geo.nn.functional import safe_norm
from uenn_geo.nn.radial import smooth_cutoff


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


def company(pos: Tensor, edges: Edges, cutoff: float) -> Tensor:
    r"""How much company each atom has, :math:`c_i \in [0, 1]` :obj:`(N)`: 0 alone, 1 with
    neighbours.

    .. math::
        c_i = S\big(\min(2 \textstyle\sum_j f_c(r_{ij}), 1)\big), \qquad
        S(s) = 10 s^3 - 15 s^4 + 6 s^5

    with :math:`f_c` the cutoff of eq. 31 (:func:`~uenn_geo.nn.radial.smooth_cutoff`) and
    :math:`S` the quintic smoothstep: :math:`c_i` is twice continuously differentiable in the
    positions, exactly 0 for an atom with no neighbour within the cutoff, and exactly 1 (no
    force) once its neighbours' :math:`f_c` add up to 1/2 (one neighbour within half the
    cutoff does): every atom of a molecule or a solid. Self-loops at :math:`r = 0` (the
    padding of :meth:`Edges.chunked`) count for nothing.
    """
    r = safe_norm(edges.vectors(pos), dim=-1, keepdim=False)
    weight = torch.where(r > 0, smooth_cutoff(r, cutoff), 0.0)
    s = pos.new_zeros(pos.shape[0]).index_add(0, edges.index[0], 2.0 * weight).clamp(max=1.0)
    return s**3 * (10.0 + s * (6.0 * s - 15.0))


@torch.no_grad()
def refit_energy_shift(model: Any, graphs: Iterable[Any], batch_size: int = 64) -> Tensor:
    r"""Refit a model's per-species energy shifts :math:`\mu_z` to the energies of ``graphs``.

    Forces do not see a constant per atom, so after training on forces the energies are
    right up to :math:`\sum_z n_{gz} \delta_z`; this solves for :math:`\mu_z` in least
    squares, :math:`E_g \approx E_g^{\text{model}} - \sum_z n_{gz} (\mu_z^{\text{old}} -
    \mu_z)`, and stores it in ``model.energy_shift``. Species absent from ``graphs`` keep
    their shift.

    A model with fixed E0s (``config["e0s"]``) keeps them, so that an atom alone has its E0
    exactly; its ``binding_shift`` :math:`b_z`, which adds :math:`b_{z_i} c_i` to the
    energy of atom :math:`i` (:func:`company`: 1 for an atom with neighbours), is refitted
    the same way, with :math:`\sum_{i \in g, z_i = z} c_i` in place of :math:`n_{gz}`.

    Args:
        model: a model with an energy and an ``energy_shift`` buffer per species
            (:class:`~uenn_geo.models.UENNForceField` with ``conservative=True``).
        graphs: graphs with ``pos``, ``z`` and ``energy`` (eV).

    Returns:
        The new shifts (eV per atom).
    """
    from torch_geometric.loader import DataLoader

    bound = model.config.get("e0s") is not None
    shift = model.binding_shift if bound else model.energy_shift
    num = shift.shape[0]
    rows, targets = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in DataLoader(graphs, batch_size=batch_size):
            energy = model.energy_forces(batch)["energy"].double()
            if hasattr(model, "species_index"):  # shifts per species of the model
                species = model.species_index(batch.z, batch.num_nodes)
            else:  # shifts per atomic number (SchNet)
                species = batch.z.long()
            weight = torch.ones_like(species).double()
            if bound:
                pos = batch.pos.to(shift.dtype)
                weight = company(pos, model.edges(batch), model.cutoff).double()
            counts = torch.zeros(batch.num_graphs, num, dtype=torch.float64)
            counts.index_put_((batch.batch, species), weight, True)
            rows.append(counts)
            # what the shifts must add: E_ref - (E_model - sum_z n_z mu_z)
            targets.append(batch.energy.reshape(-1).double() - energy + counts @ shift.double())
    finally:
        model.train(was_training)
    a, b = torch.cat(rows), torch.cat(targets).unsqueeze(1)
    present = a.sum(0) > 0
    solution = torch.linalg.lstsq(a[:, present], b, driver="gelsd").solution.squeeze(1)
    new = shift.detach().double().clone()
    new[present] = solution
    shift.copy_(new.to(shift))
    return new


@torch.no_grad()
def set_scales_from_statistics(
    model: Any, force_rms: float, energy_shifts: dict[int, float] | None = None
) -> float:
    r"""Set a model's scales from stored statistics, as its ``fit_scales`` would from graphs.

    For data prepared on disk (:func:`uenn_geo.data.hdf5.prepare`), whose statistics were
    computed while it was written, so that training needs no pass over the data: sets
    ``force_scale`` :math:`s_F` to ``force_rms`` (:math:`\sqrt{\langle F^2 \rangle}`, eV/A),
    and for models with an energy ``energy_scale`` to :math:`s_F \cdot 1` A and, unless the
    model has fixed E0s (``config["e0s"]``), ``energy_shift`` to ``energy_shifts`` (the
    per-species least squares :math:`E_g \approx \sum_z n_{gz} \mu_z`, ``{Z: eV}``; zero for
    other species), exactly what :func:`fit_force_energy_scales` gives on the same frames.

    Raises:
        ValueError: the model fits more than scales to the data (a pair term), or its force
            scale is not the RMS of the forces; use its ``fit_scales`` on graphs.

    Returns:
        The force scale (eV/A).
    """
    from uenn_geo.models.paper import PaperForceModel

    if getattr(model, "pair_weight", None) is not None or isinstance(model, PaperForceModel):
        raise ValueError(
            f"{type(model).__name__} fits a pair term or its own force scale to the data: it "
            "cannot start from stored statistics; use its fit_scales on graphs (or a model "
            "without pair term, e.g. --model-kwargs '{\"pair_term\": false}')"
        )
    if not (math.isfinite(force_rms) and force_rms > 0):
        raise ValueError(f"the force scale must be finite and > 0, got {force_rms} eV/A")
    model.force_scale.fill_(force_rms)
    if not getattr(model, "has_energy", False) or not hasattr(model, "energy_scale"):
        return float(force_rms)
    model.energy_scale.fill_(force_rms)
    config = getattr(model, "config", {}) or {}
    if energy_shifts and config.get("e0s") is None and hasattr(model, "energy_shift"):
        zs = torch.tensor(sorted(int(z) for z in energy_shifts), dtype=torch.long)
        values = torch.tensor([energy_shifts[int(z)] for z in zs.tolist()], dtype=torch.float64)
        index = model.species_index(zs, len(zs)) if hasattr(model, "species_index") else zs
        shift = torch.zeros(model.energy_shift.shape, dtype=torch.float64)
        shift[index.cpu()] = values
        model.energy_shift.copy_(shift.to(model.energy_shift))
    return float(force_rms)
