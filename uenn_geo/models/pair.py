r"""The pair term of :class:`~uenn_geo.models.UENNForceField`, fitted in closed form.

The first graph layer's neighbour sums (Ma & Chan eq. 30 before its weights) feed a linear
readout with one weight per (Gaussian, neighbour species, own species): the paper's vector
descriptor (eq. 33) with a linear readout. The term is linear in its weights, so they are
solved for by least squares here rather than trained.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from uenn_geo.edges import edges_of
from uenn_geo.models.base import batch_of, check_positions
from uenn_geo.nn.radial import smooth_cutoff

__all__ = ["fit_pair", "has_positions", "pair_design"]


def has_positions(data: Any) -> bool:
    """Whether ``data`` (forces or graphs) carries positions, which the pair fit needs."""
    if isinstance(data, Tensor):
        return False
    if isinstance(getattr(data, "pos", None), Tensor):  # DenseForceData
        return True
    try:
        first = data[0]
    except (TypeError, IndexError, KeyError):
        return False
    return isinstance(getattr(first, "pos", None), Tensor)


def fit_pair(
    model: Any, graphs: Iterable[Any], batch_size: int = 32, ridge: float = 1e-9
) -> list[Any]:
    r"""Fit the pair term to the forces of ``graphs`` by linear least squares.

    The pair term is linear in its weights :math:`c`, so they are solved for in closed
    form (QR, accumulated batch by batch, in float64) rather than trained; training then
    fits the network to the forces the pair term leaves. Direct mode:
    :math:`\mathbf{F}_i^{\text{pair}} = \sum_j \sum_b c_{b, z_j, z_i}\, e_{ij}^b\,
    \hat{\mathbf{r}}_{ij}`; conservative mode: the forces of
    :math:`E^{\text{pair}} = \frac{1}{2} \sum_i \sum_j \sum_b c_{b, z_j, z_i}\,
    e_{ij}^b`. A small ridge (``ridge`` times the mean diagonal of the normal matrix)
    keeps the overlapping Gaussians well posed.

    Args:
        graphs: a PyG dataset or list of ``Data`` with ``pos`` (A), ``forces`` (eV/A), and
            ``z`` for several species; periodic graphs with ``cell`` and ``pbc``.
        batch_size (int): graphs per batch (default: :obj:`32`).
        ridge (float): relative ridge (default: :obj:`1e-9`).

    Returns:
        The residuals as a list of ``Data`` with ``forces`` (less the pair forces), and in
        conservative mode, per graph with an energy, ``energy`` (less the pair energy) and
        ``z`` (what :meth:`fit_scales` reads).
    """
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    if model.pair_weight is None:
        raise ValueError("this model was built with pair_term=False")

    def loader() -> Iterable[Any]:
        if hasattr(graphs, "batches"):  # uenn_geo.train.DenseForceData
            return graphs.batches(batch_size)
        return DataLoader(graphs, batch_size=batch_size, shuffle=False)

    r_mat: Tensor | None = None
    qty: Tensor | None = None
    for batch in loader():
        x, y, _ = pair_design(model, batch)
        if r_mat is not None:
            x, y = torch.cat([r_mat, x]), torch.cat([qty, y])
        q, r_mat = torch.linalg.qr(x)
        qty = q.T @ y
    if r_mat is None:
        raise ValueError("fit_pair got no graphs")
    k = r_mat.shape[1]
    lam = ridge * float(r_mat.square().sum()) / k
    a = torch.cat([r_mat, math.sqrt(lam) * torch.eye(k, dtype=r_mat.dtype)])
    b = torch.cat([qty, qty.new_zeros(k)])
    c = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    model.pair_weight.copy_(c.view_as(model.pair_weight).to(model.pair_weight))
    residuals: list[Any] = []
    forces: list[Tensor] = []
    for batch in loader():
        x, y, e_pair = pair_design(model, batch)
        rest = (y - x @ c).view(-1, 3)
        energy = getattr(batch, "energy", None)
        if energy is None or not model.conservative:
            forces.append(rest)
            continue
        ptr = getattr(batch, "ptr", None)
        if ptr is None:
            ptr = torch.cat([batch.batch.new_zeros(1), torch.bincount(batch.batch).cumsum(0)])
        for g in range(ptr.numel() - 1):
            lo, hi = int(ptr[g]), int(ptr[g + 1])
            z = getattr(batch, "z", None)
            d = Data(forces=rest[lo:hi], z=z[lo:hi] if z is not None else None)
            if energy is not None:
                e = torch.as_tensor(energy).reshape(-1)[g].double()
                d.energy = e - e_pair[g] if e_pair is not None else e
            residuals.append(d)
    if forces:
        residuals += [Data(forces=f) for f in forces]
    return residuals


def pair_design(model: Any, data: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    """Design matrix :obj:`(3N, K)` and forces :obj:`(3N)` of the pair term, float64, and
    (conservative mode) the pair energy per graph with the current weights."""
    pos = check_positions(data, model.dtype)
    species = model.species_index(getattr(data, "z", None), pos.shape[0])
    edges = edges_of(data, model.cutoff)
    batch, num_graphs = batch_of(data, pos.shape[0], pos.device)
    forces = torch.as_tensor(data.forces).to(torch.float64).reshape(-1)
    num, n = pos.shape
    s = model.num_species
    onehot = nn.functional.one_hot(species, s).to(pos.dtype)
    conv = model.convs[0]
    if not model.conservative:
        sums = conv.neighbour_sums(pos, edges, onehot)[:, :n, :]
        x = (sums.unsqueeze(-1) * onehot.view(num, 1, 1, s)).reshape(num, n, -1).double()
        if model.remove_net_force:  # fit what the model outputs: the net force removed
            x = x - scatter(x, batch, dim=0, dim_size=num_graphs, reduce="mean")[batch]
        return x.reshape(num * n, -1), forces, None
    i, j = edges.index
    r_vec = edges.vectors(pos)
    r = r_vec.norm(dim=-1)
    keep = r > 0
    i, j, r_vec, r = i[keep], j[keep], r_vec[keep], r[keep]
    unit = r_vec / r.unsqueeze(-1)

    def basis(dist: Tensor) -> Tensor:
        return conv.basis(dist) * smooth_cutoff(dist, conv.cutoff).unsqueeze(-1)

    e, de = torch.func.jvp(basis, (r,), (torch.ones_like(r),))  # (E, B) each
    # F_i += 1/2 e'(r) r_hat, F_j -= 1/2 e'(r) r_hat, in column (b, z_j, z_i).
    val = 0.5 * unit.unsqueeze(-1) * de.unsqueeze(1)  # (E, n, B)
    pair = species[j] * s + species[i]
    x = pos.new_zeros(num, s * s, n, conv.num_basis)
    x.index_put_((i, pair), val, accumulate=True)
    x.index_put_((j, pair), -val, accumulate=True)
    x = x.permute(0, 2, 3, 1).reshape(num * n, -1).double()
    w = model.pair_weight.view(conv.num_basis, s * s).to(e)
    e_atom = 0.5 * (e * w[:, pair].T).sum(-1)  # (E,): edge (i, j)'s share of E_i
    e_pair = pos.new_zeros(num_graphs).index_add(0, batch[i], e_atom).double()
    return x, forces, e_pair
