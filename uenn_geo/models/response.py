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
That derivative is the symmetric part of the virial :math:`\sum_i \mathbf{r}_i \otimes
\partial E / \partial \mathbf{r}_i + \sum_e \mathbf{s}_e \otimes \partial E / \partial
\mathbf{s}_e`, taken from the same gradients as the forces (no strained copy of the edges).
Outputs keep their autograd graph only when ``training`` (a force loss then trains the energy),
and the derivatives are taken also under :func:`torch.no_grad` (not under
:func:`torch.inference_mode`). As NequIP's ``ForceStressOutput`` and schnetpack's ``Forces``.

Under :func:`torch.compile`, with ``traced=True``, the derivatives are taken with
:func:`torch.func.grad` instead of :func:`torch.autograd.grad`: it is traced into the
compiled graph, so that a compiled training step (the energy, its forces, and the loss's
backward through both) is one forward graph and its first-order backward, which inductor
compiles; :func:`torch.autograd.grad` with ``create_graph`` would break the graph, and
compiled regions have no double backward.
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
    traced: bool = False,
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
        traced (bool): under :func:`torch.compile`, take the derivatives with
            :func:`torch.func.grad` inside the compiled graph (see above; ``energy_fn`` must
            be traceable under it: PyG's built-in aggregations are not). Ignored eagerly.

    Returns:
        ``{"energy": energy_fn's output, "forces": (N, 3) eV/A, "stress": (B, 3, 3) eV/A^3
        or None}``.
    """
    shifts = None
    if cell is not None:  # the stress needs the derivative in the image shifts too
        shifts = edges.shifts if edges.shifts is not None else pos.new_zeros(edges.num_edges, 3)
    if traced and torch.compiler.is_compiling():
        energy, grads = _traced_gradients(energy_fn, pos, edges, shifts)
    else:
        with torch.enable_grad():
            leaf = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            inputs = [leaf]
            if shifts is not None:
                shifts = shifts if shifts.requires_grad else shifts.detach().requires_grad_(True)
                inputs.append(shifts)
                edges = edges.with_shifts(shifts)
            energy = energy_fn(leaf, edges)
            grads = torch.autograd.grad(
                energy.sum(), inputs, create_graph=training, allow_unused=True
            )
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
    stress = None
    if cell is not None:
        d_strain = _strain_derivative(pos, shifts, edges, batch, grads, cell.shape[0])
        volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
        # A structure without a cell (zero volume, e.g. a molecule in a mixed batch): zero.
        stress = torch.where(volume > 0, d_strain / volume.clamp_min(1e-300), 0.0)
    if not training:
        forces = forces.detach()
        energy = energy.detach()
        stress = stress.detach() if stress is not None else None
    return {"energy": energy, "forces": forces, "stress": stress}


def _strain_derivative(
    pos: Tensor,
    shifts: Tensor,
    edges: Edges,
    batch: Tensor,
    grads: tuple[Tensor | None, ...],
    num_graphs: int,
) -> Tensor:
    r""":math:`\partial E_g / \partial \varepsilon_g` :obj:`(B, 3, 3)` from the gradients in the
    positions and the image shifts.

    A symmetric strain moves both, :math:`\mathbf{r} \to \mathbf{r}(1 + \varepsilon)` and
    :math:`\mathbf{s}_e \to \mathbf{s}_e(1 + \varepsilon)`, so its derivative is the symmetric
    part of :math:`\sum_i \mathbf{r}_i \otimes \partial E / \partial \mathbf{r}_i + \sum_e
    \mathbf{s}_e \otimes \partial E / \partial \mathbf{s}_e` (the virial), summed per
    structure: two small products instead of a strained copy of every edge."""
    d_pos = grads[0] if grads[0] is not None else torch.zeros_like(pos)
    d_shifts = grads[1] if grads[1] is not None else torch.zeros_like(shifts)
    if num_graphs == 1:
        virial = (pos.T @ d_pos + shifts.T @ d_shifts).unsqueeze(0)
    else:
        per_atom = (pos.unsqueeze(2) * d_pos.unsqueeze(1)).reshape(-1, 9)
        per_edge = (shifts.unsqueeze(2) * d_shifts.unsqueeze(1)).reshape(-1, 9)
        virial = pos.new_zeros(num_graphs, 9).index_add(0, batch, per_atom)
        virial = virial.index_add(0, batch.index_select(0, edges.index[0]), per_edge)
        virial = virial.view(-1, 3, 3)
    return 0.5 * (virial + virial.transpose(1, 2))


def _traced_gradients(
    energy_fn: Callable[[Tensor, Edges], Tensor],
    pos: Tensor,
    edges: Edges,
    shifts: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The energy and its gradients in the positions (and the image shifts) by
    :func:`torch.func.grad`, which :func:`torch.compile` traces (see the module docstring)."""

    def total(x: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        energy = energy_fn(x, edges if s is None else edges.with_shifts(s))
        return energy.sum(), energy

    if shifts is None:
        grad, energy = torch.func.grad(total, has_aux=True)(pos, None)
        return energy, (grad,)
    grads, energy = torch.func.grad(total, argnums=(0, 1), has_aux=True)(pos, shifts)
    return energy, grads
