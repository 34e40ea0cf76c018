r"""Export a force field for deployment: a :mod:`torch.export` program of plain tensors.

The exported file holds the network and its weights as an ATen graph; loading it needs only
torch (``torch.export.load(path).module()``), not uenn-geo. The neighbour list is computed
outside (by the host code, e.g. with vesin or :func:`uenn_geo.neighbors.radius_graph`), with
the conventions of :mod:`uenn_geo.neighbors`:

* ``pos`` :obj:`(N, 3)` positions in Angstrom, in the model's dtype;
* ``species`` :obj:`(N)` long, species *indices* :math:`0, \dots, S-1` in the order of the
  model's ``atomic_numbers`` (stored in the file's metadata, see :func:`load_exported`);
* ``edge_index`` :obj:`(2, E)` long, a full list of the pairs :math:`(i, j)` with
  :math:`|\mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_e| < r_c` (pairs beyond :math:`r_c`
  contribute nothing, so a list built with a skin works as it is);
* ``shifts`` :obj:`(E, 3)` image shifts :math:`\mathbf{s}_e = \mathbf{S}_e \mathbf{C}` in
  Angstrom (zeros for a free cluster);
* ``batch`` :obj:`(N)` long, the structure of each atom (zeros for one structure).

Outputs: forces :obj:`(N, 3)` in eV/A for a direct-force model; ``(atomic_energies (N) in eV,
forces (N, 3) in eV/A)`` for a conservative one (the energy of a structure is the sum of its
atoms' energies; the forces are the exact autograd derivatives, traced into the graph). The
number of atoms and edges is dynamic; dtype and device are those of the model at export time,
except the atomic energies of a conservative model, which are float64 (totals of thousands of
eV).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.edges import Edges
from uenn_geo.models.forcefield import UENNForceField
from uenn_geo.models.response import energy_response
from uenn_geo.nn import kernels

__all__ = ["export_model", "load_exported"]


class _DirectForces(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pos: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor, batch: Tensor
    ) -> Tensor:
        edges = Edges(edge_index, shifts, self.model.cutoff)
        # N >= number of graphs: per-graph means scattered into N slots are the same means.
        return self.model.compute_forces(pos, species, edges, batch, pos.shape[0])


def _conservative_fn(model: nn.Module) -> Any:
    def energies_forces(
        pos: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor, batch: Tensor
    ) -> tuple[Tensor, Tensor]:
        out = energy_response(
            lambda x, e: model.atomic_energies(x, species, e),
            pos,
            Edges(edge_index, shifts, model.cutoff),
            batch,
        )
        return out["energy"], out["forces"]

    return energies_forces


def _example_inputs(model: nn.Module) -> tuple[Tensor, ...]:
    from uenn_geo.neighbors import radius_graph

    param = model.force_scale  # dtype and device of the model
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 0.5 * model.cutoff
    edge_index, shifts = radius_graph(pos, model.cutoff)
    pos, shifts = pos.to(param), shifts.to(param)
    species = torch.arange(6, device=param.device) % model.num_species
    batch = torch.zeros(6, dtype=torch.long, device=param.device)
    return pos, species, edge_index.to(param.device), shifts, batch


def export_model(model: nn.Module, path: str | os.PathLike) -> None:
    r"""Write ``model`` as a :mod:`torch.export` program to ``path`` (atomically).

    Direct-force models are exported with :func:`torch.export.export` of
    :meth:`~uenn_geo.models.UENNForceField.compute_forces`; conservative ones are first traced
    with :func:`~torch.fx.experimental.proxy_tensor.make_fx` (symbolic shapes), which records
    the backward pass of the autograd forces as ordinary ATen operations, and that graph is
    exported. The model's configuration, ``atomic_numbers``, cutoff (Angstrom), dtype and the
    input/output layout are stored as extra files of the archive (read them with
    :func:`load_exported`).

    Args:
        model (nn.Module): a :class:`~uenn_geo.models.UENNForceField`.
        path (str or PathLike): the output file (``.pt2``).
    """
    from uenn_geo.files import atomic_write

    if not isinstance(model, UENNForceField):
        raise TypeError(
            f"export_model takes a UENNForceField (the graph force field), got "
            f"{type(model).__name__}"
        )
    was_training = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    # the program must run without uenn-geo's operators: no fused kernel (uenn_geo.nn.kernels)
    try:
        with kernels.plain_path(model):
            args = _example_inputs(model)
            conservative = model.has_energy
            if conservative:
                from torch.fx.experimental.proxy_tensor import make_fx

                traced = make_fx(
                    _conservative_fn(model), tracing_mode="symbolic", _allow_non_fake_inputs=True
                )(*args)
            else:
                traced = _DirectForces(model)
            num_atoms, num_edges = torch.export.Dim("num_atoms"), torch.export.Dim("num_edges")
            dynamic = (
                {0: num_atoms}, {0: num_atoms}, {1: num_edges}, {0: num_edges}, {0: num_atoms}
            )  # fmt: skip
            program = torch.export.export(traced, args, dynamic_shapes=dynamic)
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    meta = {
        "format": "uenn-geo-export",
        "version": 1,
        "model": type(model).__name__,
        "config": dict(getattr(model, "config", {})),
        "atomic_numbers": list(getattr(model, "config", {}).get("atomic_numbers", [])),
        "cutoff": float(model.cutoff),
        "dtype": str(args[0].dtype).removeprefix("torch."),
        "inputs": ["pos", "species", "edge_index", "shifts", "batch"],
        "outputs": ["atomic_energies", "forces"] if conservative else ["forces"],
    }
    atomic_write(
        Path(path),
        lambda f: torch.export.save(program, f, extra_files={"uenn_geo.json": json.dumps(meta)}),
    )


def load_exported(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load a file of :func:`export_model`: ``(callable module, metadata dict)``.

    Plain torch does the same without uenn-geo::

        extra = {"uenn_geo.json": ""}
        module = torch.export.load(path, extra_files=extra).module()
        meta = json.loads(extra["uenn_geo.json"])
    """
    extra = {"uenn_geo.json": ""}
    program = torch.export.load(Path(path), extra_files=extra)
    return program.module(), json.loads(extra["uenn_geo.json"])
