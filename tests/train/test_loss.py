import math
import shutil

import pytest
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from uenn_geo.data import LJClusters
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import sample_paper_configurations
from uenn_geo.models import PaperForceModel
from uenn_geo.train import DenseForceData, evaluate, force_loss, has_energy
from uenn_geo.train.loss import LossFunction


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusters")
    return LJClusters(str(root), num_configs=8, min_atoms=3, max_atoms=6, log=False)


class _Old(nn.Module):
    """A model from before the contract: says it has an energy with ``conservative``."""

    def __init__(self, conservative):
        super().__init__()
        self.conservative = conservative


class _New(nn.Module):
    def __init__(self, energy):
        super().__init__()
        self.has_energy = energy
        self.conservative = not energy  # the contract's attribute wins


def test_has_energy_reads_the_contract_then_the_old_attribute():
    assert has_energy(_New(True)) and not has_energy(_New(False))
    assert has_energy(_Old(True)) and not has_energy(_Old(False))
    assert not has_energy(nn.Linear(2, 2))


def test_energy_term_of_the_loss(clusters, small_energy_model):
    model = small_energy_model(clusters)
    batch = next(iter(DataLoader(clusters, batch_size=len(clusters))))
    out = model.energy_forces(batch)
    atoms = torch.bincount(batch.batch).double()
    e_term = ((out["energy"] - batch.energy) / (model.energy_scale * atoms)).square().mean()
    f_term = ((out["forces"] - batch.forces) / model.force_scale).square().mean()
    assert force_loss(model, batch).item() == pytest.approx(f_term.item(), rel=1e-10)
    weighted = force_loss(model, batch, energy_weight=2.0).item()
    assert weighted == pytest.approx(f_term.item() + 2.0 * e_term.item(), rel=1e-10)
    assert e_term.item() > 0


def test_energy_weight_needs_a_model_with_an_energy():
    pos = sample_paper_configurations(4, generator=torch.Generator().manual_seed(0))
    data = DenseForceData(pos.float(), lennard_jones(pos)[1].float())
    model = PaperForceModel(hidden=[8])
    model.fit_scales(data.pos, data.forces)
    batch = next(data.batches(4))
    assert force_loss(model, batch).item() > 0
    with pytest.raises(ValueError, match="has_energy"):
        force_loss(model, batch, energy_weight=1.0)


def test_evaluate_matches_a_direct_computation():
    pos = sample_paper_configurations(10, generator=torch.Generator().manual_seed(1))
    data = DenseForceData(pos.float(), lennard_jones(pos)[1].float())
    model = PaperForceModel(hidden=[8])
    model.fit_scales(data.pos, data.forces)
    diff = (model.forward_dense(data.pos) - data.forces).double().detach()
    # batches of 3 over 10 structures: the last batch is partial
    res = evaluate(model, data, batch_size=3)
    assert res["components"] == diff.numel() == 10 * 4 * 3
    assert res["force_rmse"] == pytest.approx(math.sqrt(diff.square().mean().item()), rel=1e-6)
    assert res["force_mae"] == pytest.approx(diff.abs().mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, DenseForceData(data.pos[:0], data.forces[:0]))


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor needs a C++ compiler (the fallback is tested without one)",
)
def test_compiled_loss_of_an_energy_model_matches_eager(clusters, small_energy_model):
    """The energy, its forces and the loss's backward through both, compiled as one graph
    (the derivative traced by torch.func.grad), give eager's loss and parameter gradients."""
    model = small_energy_model(clusters)
    data = list(DataLoader(clusters, batch_size=4))
    grads = {}
    for compile_ in (False, True):
        loss_fn = LossFunction(model, energy_weight=2.0, compile=compile_)
        for k, batch in enumerate(data):  # two batch shapes: no recompilation needed
            model.zero_grad()
            loss = loss_fn.backward(batch)
            grads[compile_, k] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
        assert loss_fn.compiled_steps == (len(data) if compile_ else 0)
    for k in range(len(data)):
        (le, ge), (lc, gc) = grads[False, k], grads[True, k]
        assert lc.item() == pytest.approx(le.item(), rel=1e-9)
        for a, b in zip(ge, gc, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor needs a C++ compiler (the fallback is tested without one)",
)
def test_a_new_energy_weight_compiles_nothing_again(clusters, small_energy_model):
    """Stage two raises the energy weight mid-run: the compiled step takes the weights as a
    tensor, so it runs the graph it has (it compiled again, 43 s of a 600-s copper run)."""
    from torch._dynamo.utils import counters

    model = small_energy_model(clusters)
    batch = next(iter(DataLoader(clusters, batch_size=4)))
    # batches of one shape (packed, or one molecule): compiled for it, constants specialised
    loss_fn = LossFunction(model, energy_weight=0.01, compile=True, static_shapes=True)
    torch._dynamo.reset()
    counters.clear()
    loss_fn.backward(batch)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    loss_fn.energy_weight = 10.0
    loss = loss_fn.backward(batch)
    assert counters["stats"]["unique_graphs"] == graphs
    assert loss_fn.compiled_steps == 2
    assert loss.item() == pytest.approx(force_loss(model, batch, 10.0).item(), rel=1e-9)


def test_the_compiled_step_traces_as_one_graph(clusters, small_energy_model):
    """The neighbour list is read, checked and laid out in chunks before the compiled step,
    and the atoms per structure come from PyG's ``ptr``: the step (energy, forces and loss)
    traces as one graph, with no break for data-dependent sizes or checks."""
    model = small_energy_model(clusters)
    batch = next(iter(DataLoader(clusters, batch_size=4)))
    loss_fn = LossFunction(model, energy_weight=2.0)
    edges = loss_fn._edges(batch)
    assert edges.chunk == 0  # small clusters: not worth laying out, and not tried in the graph

    def step(data, e):
        return force_loss(model, data, 2.0, 0.0, e)

    explained = torch._dynamo.explain(step)(batch, edges)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    torch.testing.assert_close(
        step(batch, edges), force_loss(model, batch, 2.0), rtol=1e-10, atol=0
    )
    dense = next(iter(DataLoader(clusters, batch_size=4)))  # the same list, laid out in chunks
    chunked = edges.chunked(dense.pos.shape[0], size=4, max_padding=100.0)
    assert chunked.chunk == 4
    explained = torch._dynamo.explain(step)(dense, chunked)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    torch.testing.assert_close(step(dense, chunked), step(batch, edges), rtol=1e-10, atol=0)
