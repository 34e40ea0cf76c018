r"""The training loss and the evaluation of force models.

The loss is the mean squared force error (Ma & Chan, sec. 4, eq. 42) in units of the model's
``force_scale``, so that it is of order one whatever the data; reported errors are in eV/A.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from uenn_geo.edges import Edges
from uenn_geo.models.base import batch_of
from uenn_geo.train.dense import batches

__all__ = ["has_energy", "force_loss", "evaluate", "LossFunction"]

log = logging.getLogger(__name__)


def has_energy(model: nn.Module) -> bool:
    """Whether ``model`` predicts an energy whose gradient gives its forces.

    Reads the model contract's ``has_energy``; models from before the contract say so with
    ``conservative``.
    """
    return bool(getattr(model, "has_energy", getattr(model, "conservative", False)))


def _graph_weights(data: Data, num_graphs: int, like: Tensor) -> Tensor:
    """Per-structure loss weights (``data.weight``, e.g. from ``config_type``), or ones."""
    weight = getattr(data, "weight", None)
    if weight is None:
        return like.new_ones(num_graphs)
    return weight.reshape(-1).to(like)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-300)


def _forces(model: nn.Module, data: Data, edges: Edges | None) -> Tensor:
    return model(data) if edges is None else model(data, edges)


def _atoms_per_graph(data: Data, batch: Tensor, num_graphs: int) -> Tensor:
    """Atoms of each structure :obj:`(B)`: from PyG's ``ptr`` where the batch has one (no
    data-dependent shape: nothing to break a compiled graph), otherwise counted."""
    ptr = getattr(data, "ptr", None)
    if isinstance(ptr, Tensor) and ptr.shape == (num_graphs + 1,):
        return ptr[1:] - ptr[:-1]
    return torch.bincount(batch, minlength=num_graphs)


def _full_loss(
    model: nn.Module,
    data: Data,
    energy_weight: float | Tensor,
    stress_weight: float | Tensor,
    edges: Edges | None,
    energy_on: bool,
    stress_on: bool,
) -> Tensor:
    """Forces, per-atom energies and stresses, weighted per structure; the terms
    ``energy_on`` and ``stress_on`` (their weights > 0), weighted by the weights, which a
    compiled step passes as tensors (a weight that changes, as in stage two, then compiles
    nothing again)."""
    if (energy_on or stress_on) and not has_energy(model):
        raise ValueError(
            "energy_weight or stress_weight > 0 needs a model with an energy "
            "(model.has_energy), e.g. UENNForceField(conservative=True)"
        )
    want_stress = stress_on and getattr(data, "stress", None) is not None
    if energy_on or want_stress:
        out = model.energy_forces(data, edges, compute_stress=want_stress)
    else:
        out = {"forces": _forces(model, data, edges), "energy": None, "stress": None}
    pred, energy = out["forces"], out["energy"]
    batch, num_graphs = batch_of(data, pred.shape[0], pred.device)
    w = _graph_weights(data, num_graphs, pred)
    f_err = ((pred - data.forces.to(pred.dtype)) / model.force_scale).square().sum(dim=1)
    loss = _weighted_mean(f_err, w[batch]) / 3
    if energy is not None and energy_on and getattr(data, "energy", None) is not None:
        atoms = _atoms_per_graph(data, batch, energy.shape[0]).clamp_min(1).to(energy.dtype)
        ref = data.energy.reshape(-1).to(energy.dtype)
        e_err = ((energy - ref) / (model.energy_scale * atoms)).square()
        loss = loss + energy_weight * _weighted_mean(e_err, w)
    if want_stress:
        mask = getattr(data, "stress_weight", None)
        mask = w if mask is None else w * mask.reshape(-1).to(w)
        ref = data.stress.reshape(-1, 3, 3).to(energy.dtype)
        s_err = ((out["stress"] - ref) / model.force_scale).square().sum(dim=(1, 2)) / 9
        loss = loss + stress_weight * _weighted_mean(s_err, mask)
    return loss


def force_loss(
    model: nn.Module,
    data: Data,
    energy_weight: float = 0.0,
    stress_weight: float = 0.0,
    edges: Edges | None = None,
) -> Tensor:
    r"""The training loss: mean squared force error in units of ``model.force_scale``.

    With ``energy_weight`` :math:`w_E > 0` (models with ``has_energy``, graphs with
    ``energy``) it adds :math:`w_E \langle ((E - E^\mathrm{ref}) / (s_E N_g))^2 \rangle`
    over the structures :math:`g` (per-atom energies; :math:`s_E` = ``model.energy_scale``),
    and with ``stress_weight`` :math:`w_\sigma > 0` the mean squared stress error in units of
    ``force_scale`` per A\ :sup:`2` (graphs with ``stress``; ``stress_weight`` 0 on a graph
    masks it). Graphs with ``weight`` (per structure, e.g. from ``config_type``) count with
    that weight in every term. ``edges``: the neighbour list of ``data`` for graph models
    (default: the model's own, :meth:`~uenn_geo.models.ForceModel.edges`).
    """
    on = (energy_weight > 0, stress_weight > 0)
    if any(on) or getattr(data, "weight", None) is not None:
        return _full_loss(model, data, energy_weight, stress_weight, edges, *on)
    pred = _forces(model, data, edges)
    target = data.forces.to(pred.dtype)
    if pred.shape != target.shape:
        raise ValueError(
            f"model returned forces of shape {tuple(pred.shape)}, data has {tuple(target.shape)}"
        )
    return ((pred - target) / model.force_scale).square().mean()


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 4096) -> dict[str, float]:
    """Force RMSE and MAE over all components (eV/A), the "force RMSD" of Ma & Chan."""
    was_training = model.training
    model.eval()
    sq = ab = 0.0
    count = 0
    for batch in batches(data, batch_size):
        diff = (model(batch).double() - batch.forces.double()).flatten()
        sq += diff.square().sum().item()
        ab += diff.abs().sum().item()
        count += diff.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {"force_rmse": math.sqrt(sq / count), "force_mae": ab / count, "components": count}


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_graph_breaks() -> Iterator[None]:
    """Graph breaks around the network (neighbour search, input checks) are expected; dynamo
    reports each as a warning and (``Tensor.item()``) as a logged traceback: silence both.

    A filter, not a level: ``Logger.setLevel`` clears the cache of every logger of the
    process, at every step (docs/training.md)."""
    logger = logging.getLogger("torch._dynamo.variables.tensor")
    logger.addFilter(_errors_only)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Dynamo does not know how to trace")
            yield
    finally:
        logger.removeFilter(_errors_only)


class LossFunction:
    """:func:`force_loss` of ``model``, through :func:`torch.compile` if asked and it works.

    When a compiled step raises, the same step runs eagerly: if that raises too, the error
    is the data's and propagates (compilation stays on); if it succeeds, compilation is what
    failed (e.g. no C++ compiler), so it warns once and goes on eagerly.

    Args:
        model: the model being trained.
        energy_weight: see :func:`force_loss`.
        compile: try :func:`torch.compile`.
        static_shapes: compile for the shapes of the first batch (then, should another shape
            come, for any shape: torch's automatic dynamic shapes) rather than for any shape
            from the start (see :class:`~uenn_geo.train.TrainConfig`).
    """

    def __init__(
        self,
        model: nn.Module,
        energy_weight: float = 0.0,
        compile: bool = False,
        stress_weight: float = 0.0,
        static_shapes: bool = False,
    ):
        self.model = model
        self.energy_weight = energy_weight
        self.stress_weight = stress_weight
        # graph models (with a cutoff): atoms and edges vary from batch to batch, so one
        # compilation with dynamic shapes, unless every batch has the same shapes; dense
        # fixed-size batches (the paper's model) keep torch's default, which specialises
        # to their shape
        graph = getattr(model, "cutoff", None) is not None
        dynamic = True if graph and not static_shapes else None
        self.compiled = torch.compile(self._weighted, dynamic=dynamic) if compile else None
        self.compiled_steps = 0
        #: Seconds of the first compiled step (the compilation); :obj:`None` before it.
        self.compile_seconds: float | None = None

    @property
    def ran_compiled(self) -> bool:
        """Whether steps ran compiled, and compilation is still on."""
        return self.compiled is not None and self.compiled_steps > 0

    def _eager(self, data: Data, edges: Edges | None = None) -> Tensor:
        return force_loss(self.model, data, self.energy_weight, self.stress_weight, edges)

    def _weighted(
        self, data: Data, edges: Edges | None, weights: Tensor, energy_on: bool, stress_on: bool
    ) -> Tensor:
        """The compiled step: the loss weights come in as a tensor, not as constants of the
        graph, so that stage two's new energy weight compiles nothing again (it did: 43 s
        of a 600-s copper run)."""
        if energy_on or stress_on or getattr(data, "weight", None) is not None:
            return _full_loss(self.model, data, *weights, edges, energy_on, stress_on)
        return force_loss(self.model, data, 0.0, 0.0, edges)

    def _edges(self, data: Data) -> Edges | None:
        """The neighbour list of ``data``, built (or read), checked and, for the graph
        layers of :class:`~uenn_geo.models.UENNForceField`, laid out in chunks, all eagerly:
        these steps have data-dependent sizes and checks, each of which would break the
        compiled graph (docs/training.md)."""
        from uenn_geo.models.forcefield import UENNForceField

        model = self.model
        if getattr(model, "cutoff", None) is None or not hasattr(model, "edges"):
            return None
        edges = model.edges(data)
        if isinstance(model, UENNForceField):
            edges = edges.chunked(data.pos.shape[0])
        return edges

    def backward(self, data: Data) -> Tensor:
        """The loss of ``data``, its gradient accumulated into the parameters."""
        if self.compiled is None:
            loss = self._eager(data)
            loss.backward()
            return loss
        try:
            start = time.perf_counter()
            edges = self._edges(data)
            weights = torch.tensor([self.energy_weight, self.stress_weight])
            on = (self.energy_weight > 0, self.stress_weight > 0)
            with _quiet_graph_breaks():
                loss = self.compiled(data, edges, weights.to(data.pos.dtype), *on)
            loss.backward()  # the backward graph may compile only here
            if self.compile_seconds is None:
                self.compile_seconds = time.perf_counter() - start
            self.compiled_steps += 1
            return loss
        except Exception as err:
            self.model.zero_grad(set_to_none=True)
            loss = self._eager(data)  # a data error raises here, with its own traceback
            loss.backward()
            self.compiled = None
            log.debug("torch.compile failed", exc_info=err)
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); training goes "
                "on without it",
                RuntimeWarning,
                stacklevel=2,
            )
            return loss
