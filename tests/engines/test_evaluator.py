"""The evaluator every engine shares: neighbour list under wrapping, compile and fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from uenn_geo.calculator import UENNCalculator
from uenn_geo.engines import evaluator as evaluator_module
from uenn_geo.engines.evaluator import Evaluator


def test_wrapped_atoms_keep_the_list_and_the_results(argon_model, liquid_atoms):
    atoms = liquid_atoms
    ev = Evaluator(argon_model, skin=1.0, compile=False)
    first = ev(atoms.positions, atoms.numbers, atoms.cell.array, stress=True)
    assert ev.num_builds == 1
    # Move atoms by whole lattice vectors, as an engine wrapping them into the box does.
    jumps = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 2], [1, 1, -1]] + [[0, 0, 0]] * 4)
    moved = atoms.positions + jumps @ atoms.cell.array
    second = ev(moved, atoms.numbers, atoms.cell.array, stress=True)
    assert ev.num_builds == 1  # the list followed the atoms
    np.testing.assert_allclose(second.forces, first.forces, rtol=0, atol=1e-12)
    np.testing.assert_allclose(second.stress, first.stress, rtol=0, atol=1e-12)
    assert second.energy == pytest.approx(first.energy, abs=1e-12)
    fresh = Evaluator(argon_model, skin=0.0, compile=False)(moved, atoms.numbers, atoms.cell.array)
    np.testing.assert_allclose(second.forces, fresh.forces, rtol=0, atol=1e-12)
    # A real move beyond half the skin still rebuilds.
    ev(
        moved + np.array([0.6, 0.0, 0.0]) * (np.arange(8) == 2)[:, None],
        atoms.numbers,
        atoms.cell.array,
    )
    assert ev.num_builds == 2


def test_virial_is_minus_volume_times_stress(argon_model, liquid_atoms):
    out = Evaluator(argon_model, compile=False)(
        liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array, stress=True
    )
    assert out.volume == pytest.approx(liquid_atoms.get_volume())
    np.testing.assert_allclose(out.virial, -liquid_atoms.get_volume() * out.stress)
    free = Evaluator(argon_model, compile=False)(liquid_atoms.positions, liquid_atoms.numbers)
    assert free.stress is None and free.virial is None


def test_compile_failure_falls_back_to_eager(argon_model, liquid_atoms, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(evaluator_module.torch, "compile", broken)
    model = type(argon_model)(**{k: v for k, v in argon_model.config.items()}).eval()
    model.load_state_dict(argon_model.state_dict())
    ev = Evaluator(model, compile=True)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = ev(liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array)
    eager = Evaluator(model, compile=False)(
        liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array
    )
    np.testing.assert_array_equal(out.forces, eager.forces)
    assert ev.compiled_calls == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls are eager and silent
        ev(liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array)


def test_bad_arguments(argon_model):
    with pytest.raises(ValueError, match="compile"):
        Evaluator(argon_model, compile="yes")
    with pytest.raises(ValueError, match="skin"):
        Evaluator(argon_model, skin=-0.5)
    with pytest.raises(TypeError, match="model_or_path"):
        Evaluator(3)


def test_auto_compiles_large_structures(model_factory, argon_model):
    large = evaluator_module.COMPILE_MIN_ATOMS
    direct = Evaluator(model_factory(conservative=False))  # "auto"
    assert not direct._use_compiled(8)
    assert direct._use_compiled(large)
    assert Evaluator(argon_model)._use_compiled(large)  # energy models too
    assert not Evaluator(argon_model)._use_compiled(8)
    assert Evaluator(argon_model, compile=True)._use_compiled(8)
    assert not Evaluator(model_factory(conservative=False), compile=False)._use_compiled(10**6)


@pytest.mark.slow
@pytest.mark.parametrize("conservative", [True, False], ids=["energy", "direct"])
def test_compiled_equals_eager_to_round_off(model_factory, liquid_atoms, conservative):
    """torch.compile (dynamic shapes, both modes) through the ASE calculator, as users run it."""
    model = model_factory(conservative=conservative)
    compiled = UENNCalculator(model, compile=True)
    eager = UENNCalculator(model, compile=False)
    for atoms in (liquid_atoms, liquid_atoms.repeat((2, 1, 1))):  # other N and E: no recompile
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = compiled, eager
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-10)
        assert np.abs(b.get_forces()).max() > 1e-4
        if conservative:
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)
            np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=0, atol=1e-10)
    assert compiled.evaluator.compiled_calls == 2
    assert compiled.evaluator.compile_seconds > 0
    # The weights were frozen for the compiled calls only (no gradients of theirs computed).
    assert all(p.requires_grad for p in model.parameters())
    # A second evaluator of the same model reuses the compiled function.
    again = Evaluator(model, compile=True)
    again(liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array)
    assert again.compile_seconds == compiled.evaluator.compile_seconds


@pytest.mark.slow
def test_compiled_committee_equals_eager(model_factory, liquid_atoms):
    """Each member of a committee runs its own compiled network on one shared list."""
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(model_factory(conservative=False))
    compiled, eager = Evaluator(members, compile=True), Evaluator(members, compile=False)
    args = (liquid_atoms.positions, liquid_atoms.numbers, liquid_atoms.cell.array)
    a, b = compiled(*args), eager(*args)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces_comm, b.forces_comm, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces, a.forces_comm.mean(axis=0), rtol=0, atol=1e-14)
    assert np.abs(a.forces_comm[0] - a.forces_comm[1]).max() > 1e-4
    assert compiled.compiled_calls == 1 and compiled.num_builds == 1


def test_padded_edges_change_nothing(model_factory, liquid_atoms):
    """Self-pairs of atom 0 appended to the list (whole chunks) leave energy, forces and
    stress as they were; the evaluator keeps one padded length while the list fits."""
    from torch_geometric.data import Data

    from uenn_geo.edges import build_edges
    from uenn_geo.engines.evaluator import EDGE_SLACK, pad_edges

    model = model_factory(conservative=True)
    pos = torch.tensor(liquid_atoms.positions, dtype=model.dtype)
    cell = torch.tensor(liquid_atoms.cell.array, dtype=model.dtype)
    data = Data(pos=pos, z=torch.tensor(liquid_atoms.numbers), cell=cell.unsqueeze(0))
    edges = build_edges(pos, model.cutoff, cell=cell).chunked(len(pos))
    padded = pad_edges(edges, edges.num_edges + 3 * max(edges.chunk, 1))
    assert padded.num_edges > edges.num_edges and padded.chunk == edges.chunk
    padded.check(len(pos), model.cutoff)
    want = model.energy_forces(data, edges, compute_stress=True)
    got = model.energy_forces(data, padded, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-12)
    ev = Evaluator(model, compile=False)
    first = ev._padded(edges, len(pos))
    assert edges.num_edges < first.num_edges <= edges.num_edges * (1 + EDGE_SLACK) + edges.chunk
    assert ev._padded(pad_edges(edges, edges.num_edges + 1), len(pos)).num_edges == first.num_edges
    grown = pad_edges(edges, first.num_edges + 1)
    assert ev._padded(grown, len(pos)).num_edges > first.num_edges  # no longer fits: grows


def test_weights_are_frozen_for_the_call_only(argon_model):
    from uenn_geo.engines.evaluator import _weights_frozen

    with pytest.raises(RuntimeError, match="inside"):
        with _weights_frozen(argon_model):
            assert not any(p.requires_grad for p in argon_model.parameters())
            raise RuntimeError("inside")
    assert all(p.requires_grad for p in argon_model.parameters())
