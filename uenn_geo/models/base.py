r"""The contract every force model of uenn-geo follows, and the input checks they share.

A force model maps a PyG ``Data``/``Batch`` of structures (positions ``pos`` in Angstrom,
atomic numbers ``z``, optionally ``batch``, ``cell`` and ``pbc``) to forces in eV/A, and, when
it has an energy, to energies in eV and stresses in eV/A\ :sup:`3`. The calculator, the
exporter, training and the benchmarks talk to models only through this contract:

=====================  ==========================================================================
``config``             JSON-serialisable constructor arguments (:func:`~uenn_geo.models.save_model`)
``cutoff``             neighbour cutoff in Angstrom, or :obj:`None` for a model that sees every
                       atom of a structure and needs no neighbour list
``atomic_numbers``     the species the model knows, or :obj:`None` for any
``has_energy``         forces are minus the gradient of a predicted energy (energy and stress
                       available)
``dtype``              the dtype positions must have
``forward``            ``model(data, edges=None)`` -> forces :obj:`(N, 3)` in eV/A
``energy_forces``      ``model.energy_forces(data, edges=None, compute_stress=False)`` ->
                       ``{"energy", "forces", "stress"}`` (:obj:`None` where not available)
``fit_scales``         set the model's scales (and shifts) from training graphs
=====================  ==========================================================================

``edges`` is a :class:`~uenn_geo.edges.Edges` built for the model's cutoff; without it the model
builds its own (:func:`~uenn_geo.edges.edges_of`). Energies become forces and stresses in one
place, :mod:`uenn_geo.models.response`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.dtypes import dtype_name
from uenn_geo.edges import Edges, edges_of

__all__ = ["ForceModel", "check_positions", "batch_of"]


def check_positions(data: Any, dtype: torch.dtype) -> Tensor:
    """``data.pos`` if it is an ``(N, 3)`` tensor of ``dtype``; a clear error otherwise."""
    pos = getattr(data, "pos", None)
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"data.pos must have shape (N, 3) in Angstrom, got {shape}")
    if pos.dtype != dtype:
        raise TypeError(
            f"data.pos has dtype {dtype_name(pos.dtype)} but the model is "
            f"{dtype_name(dtype)}; convert the data (uenn_geo.data.CastFloats) or build "
            f"the model with dtype={dtype_name(pos.dtype)!r}"
        )
    return pos


def batch_of(data: Any, num_atoms: int, device: torch.device) -> tuple[Tensor, int]:
    """``(batch, num_graphs)`` of ``data``; a missing ``batch`` means one graph."""
    batch = getattr(data, "batch", None)
    if batch is None:
        batch = torch.zeros(num_atoms, dtype=torch.long, device=device)
    num_graphs = getattr(data, "num_graphs", None)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_atoms else 1
    return batch, int(num_graphs)


class ForceModel(nn.Module):
    """Base class of the force models: the declared contract (see the module docstring).

    Subclasses set ``config``, ``cutoff`` and ``has_energy`` in ``__init__`` and implement
    :meth:`energy_forces` and :meth:`fit_scales`; :meth:`forward` returns the forces of
    :meth:`energy_forces`.
    """

    config: dict[str, Any]
    cutoff: float | None
    has_energy: bool
    #: Configuration keys added since the first saved models, with the value that restores
    #: them (:func:`uenn_geo.models.load_model` fills these in when a file lacks them).
    legacy_config: dict[str, Any] = {}

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters, which positions must have."""
        return self.force_scale.dtype

    @property
    def atomic_numbers(self) -> list[int] | None:
        """The atomic numbers the model knows (:obj:`None`: any)."""
        numbers = self.config.get("atomic_numbers")
        return None if numbers is None else [int(z) for z in numbers]

    def edges(self, data: Any, edges: Edges | None = None) -> Edges:
        """The edges to use for ``data``: ``edges`` checked against the cutoff, or built."""
        if self.cutoff is None:
            raise ValueError(f"{type(self).__name__} uses no neighbour list")
        if edges is None:
            edges = edges_of(data, self.cutoff)
        edges.check(data.pos.shape[0], self.cutoff)
        return edges

    def forward(self, data: Any, edges: Edges | None = None) -> Tensor:
        """Forces :obj:`(N, 3)` in eV/A on every atom of ``data``."""
        return self.energy_forces(data, edges)["forces"]

    def energy_forces(
        self, data: Any, edges: Edges | None = None, compute_stress: bool = False
    ) -> dict[str, Tensor | None]:
        """``{"energy": (B) eV, "forces": (N, 3) eV/A, "stress": (B, 3, 3) eV/A^3}``, with
        :obj:`None` for what the model does not predict."""
        raise NotImplementedError

    def fit_scales(self, graphs: Any) -> float:
        """Set the model's scales from training graphs; returns the force scale (eV/A)."""
        raise NotImplementedError
