r"""Energies into forces and stress: the one place where autograd takes these derivatives.

Given a function :math:`E(\mathbf{r}, \mathbf{s})` of the positions and the edges' image
shifts, :func:`energy_response` returns

.. math::
    \mathbf{F}_i = -\frac{\partial E}{\partial \mathbf{r}_i}, \qquad
    \sigma_g = \frac{1}{V_g} \frac{\partial E_g}{\partial \varepsilon_g}

with the stress taken as the derivative with respect to a symmetric strain
:math:`\varepsilon` that moves positions and cell, :math:`\mathbf{r} \to \mathbf{r}(1 +
\varepsilon)`, :math:`\mathbf{C} \to \mathbf{C}(1 + \varepsilon)`, hence the image shifts
:math:`\mathbf{s}_e \to \mathbf{s}_e(1 + \varepsilon)` (ASE's sign: positive under tension).
Outputs keep their autograd graph only when ``training`` (a force loss then trains the energy),
and the derivatives are taken also under :func:`torch.no_grad` (not under
:func:`torch.inference_mode`). As NequIP's ``ForceStressOutput`` and schnetpack's ``Forces``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from uenn_geo.edges import Edges

__all__ = ["energy_response", "cells_of"]


def cells_of(data_cell: Tensor | None, num_graphs: int, like: Tensor) -> Tensor:
    """The cells :obj:`(B, 3, 3)` of a batch (PyG collates ``(1, 3, 3)`` cells to ``(3B, 3)``)."""
    if data_cell is None:
        raise ValueError("the stress needs data.cell (a periodic structure)")
    cell = torch.as_tensor(data_cell).to(like).reshape(-1, 3, 3)
    if cell.shape[0] != num_graphs:
        raise ValueError(f"data.cell holds {cell.shape[0]} cells for {num_graphs} graphs")
    return cell


def energy_response(
    energy_fn: Callable[[Tensor, Edges], Tensor],
    pos: Tensor,
    edges: Edges,
    batch: Tensor,
    cell: Tensor | None = None,
    training: bool = False,
) -> dict[str, Tensor | None]:
    r"""Energy, forces and (with ``cell``) stress of ``energy_fn(pos, edges)``.

    Args:
        energy_fn: maps positions :obj:`(N, 3)` and edges to energies (any shape: per graph
            or per atom); differentiable in the positions and in ``edges.shifts``.
        pos (Tensor): positions :obj:`(N, 3)` in Angstrom.
        edges (Edges): the neighbour list.
        batch (Tensor): graph index per atom :obj:`(N)`.
        cell (Tensor, optional): cells :obj:`(B, 3, 3)`; the stress is computed when given.
        training (bool): keep the graph of the outputs (``create_graph``).

    Returns:
        ``{"energy": energy_fn's output, "forces": (N, 3) eV/A, "stress": (B, 3, 3) eV/A^3
        or None}``.
    """
    with torch.enable_grad():
        leaf = pos if pos.requires_grad else pos.detach().requires_grad_(True)
        inputs = [leaf]
        x = leaf
        if cell is not None:
            strain = pos.new_zeros(cell.shape[0], 3, 3, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            x = leaf + torch.bmm(leaf.unsqueeze(1), sym[batch]).squeeze(1)
            shifts = edges.shifts
            if shifts is None:
                shifts = pos.new_zeros(edges.num_edges, 3)
            edge_sym = sym[batch[edges.index[0]]]
            shifts = shifts + torch.bmm(shifts.unsqueeze(1), edge_sym).squeeze(1)
            edges = edges.with_shifts(shifts)
            inputs.append(strain)
        energy = energy_fn(x, edges)
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
    stress = None
    if cell is not None:
        volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
        d_strain = grads[1] if grads[1] is not None else torch.zeros_like(cell)
        # A structure without a cell (zero volume, e.g. a molecule in a mixed batch): zero.
        stress = torch.where(volume > 0, d_strain / volume.clamp_min(1e-300), 0.0)
    if not training:
        energy = energy.detach()
        stress = stress.detach() if stress is not None else None
    return {"energy": energy, "forces": forces, "stress": stress}
