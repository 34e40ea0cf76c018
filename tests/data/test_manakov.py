import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from uenn_geo.data.manakov import (
    cached_manakov_pairs,
    manakov_energy,
    manakov_norm,
    manakov_pairs,
    manakov_rhs,
    manakov_step,
    manakov_trajectory,
    random_manakov_states,
)
from uenn_geo.testing import assert_equivariant, haar_unitary, relative_error


def _states(num=16, n=3, L=8, **kw):
    return random_manakov_states(num, n, L, generator=torch.Generator().manual_seed(1), **kw)


def _rel(a, b):
    return ((a - b).abs() / b.abs()).max().item()


@pytest.mark.parametrize("method", ["split", "rk4"])
def test_norm_and_energy_conserved(method):
    psi0 = _states(amplitude=1.2)
    traj = manakov_trajectory(psi0, dt=0.5, steps=4, g=1.5, method=method)
    N, E = manakov_norm(traj), manakov_energy(traj, g=1.5)
    assert N.shape == E.shape == (5, 16)
    # The split-step integrator is norm-conserving to round-off; RK4 to O(h^4).
    assert _rel(N, N[0].expand_as(N)) < (1e-12 if method == "split" else 1e-8)
    # H is a difference of two positive sums; measure its drift against their sum.
    scale = manakov_energy(psi0, g=-1.5)
    assert ((E - E[0]).abs() / scale).max() < 1e-8
    # ... and the state really moved.
    assert (traj[-1] - traj[0]).abs().max() > 0.5


def test_matrix_charge_conserved():
    # U(n) Noether charges: sum_j psi_j psi_j^dagger, so also the norm of each component.
    psi0 = _states()
    psi1 = manakov_step(psi0, 2.0)
    Q0, Q1 = psi0 @ psi0.conj().mT, psi1 @ psi1.conj().mT
    assert relative_error(Q1, Q0) < 1e-12


def test_split_step_matches_rk4():
    psi0 = _states()
    a = manakov_step(psi0, 1.0, g=1.0, method="split")
    b = manakov_step(psi0, 1.0, g=1.0, method="rk4", max_substep=0.002)
    assert relative_error(a, b) < 1e-8
    # Halving the step of the 4th-order split-step cuts its error by ~16.
    e1 = relative_error(manakov_step(psi0, 1.0, max_substep=0.04), b)
    e2 = relative_error(manakov_step(psi0, 1.0, max_substep=0.02), b)
    assert 10 < e1 / e2 < 22


def test_linear_limit_is_exact():
    # g = 0: psi(t) = psi(0) exp(i t Delta) with the ring Laplacian acting on the sites.
    L = 7
    lap = -2.0 * torch.eye(L, dtype=torch.float64)
    lap += torch.roll(torch.eye(L, dtype=torch.float64), 1, 0)
    lap += torch.roll(torch.eye(L, dtype=torch.float64), -1, 0)
    psi0 = _states(n=2, L=L)
    exact = psi0 @ torch.linalg.matrix_exp(1.3j * lap.to(torch.complex128))
    assert relative_error(manakov_step(psi0, 1.3, g=0.0), exact) < 1e-12
    assert relative_error(manakov_step(psi0, 1.3, g=0.0, method="rk4"), exact) < 1e-8


def test_rhs_is_hamiltonian_gradient():
    # i dpsi/dt = dH/dpsi^*; torch's gradient of a real function is 2 dH/dpsi^*.
    psi = _states(num=4).requires_grad_(True)
    (grad,) = torch.autograd.grad(manakov_energy(psi, g=0.7).sum(), psi)
    assert relative_error(1j * manakov_rhs(psi.detach(), g=0.7), 0.5 * grad) < 1e-13


def test_flow_commutes_with_unitaries_not_with_all_orthogonal():
    n, L = 3, 8
    psi0 = _states(n=n, L=L)
    U = haar_unitary(n, generator=torch.Generator().manual_seed(2))
    err = assert_equivariant(lambda p: manakov_step(p, 0.3), psi0, U)
    assert err < 1e-12
    # Complex conjugation is a reflection of R^{2n} (in O(2n), not U(n)): it reverses time.
    fwd = manakov_step(psi0.conj(), 0.3)
    assert relative_error(fwd, manakov_step(psi0, -0.3).conj()) < 1e-12
    assert relative_error(fwd, manakov_step(psi0, 0.3).conj()) > 1e-2


def test_random_states():
    gen = torch.Generator().manual_seed(3)
    psi = random_manakov_states(
        4000, 2, 5, amplitude=2.0, component_scales=[1.0, 0.5], generator=gen
    )
    assert psi.shape == (4000, 2, 5) and psi.dtype == torch.complex128
    comp = psi.abs().square().mean(dim=(0, 2))
    assert comp.sum().item() == pytest.approx(4.0, rel=0.03)
    assert (comp[1] / comp[0]).item() == pytest.approx(0.25, rel=0.05)
    assert random_manakov_states(3, 2, 5, dtype=torch.complex64).dtype == torch.complex64


def test_bad_input():
    with pytest.raises(TypeError, match="complex"):
        manakov_rhs(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="L >= 3"):
        manakov_norm(torch.zeros(2, 2, dtype=torch.complex128))
    with pytest.raises(ValueError, match="method"):
        manakov_step(_states(), 0.1, method="euler")
    with pytest.raises(ValueError, match="length n=3"):
        random_manakov_states(2, 3, 4, component_scales=[1.0, 1.0])
    with pytest.raises(TypeError, match="complex"):
        random_manakov_states(2, 3, 4, dtype=torch.float64)


def test_pairs_follow_trajectories():
    gen = torch.Generator().manual_seed(4)
    x, y = manakov_pairs(3, 5, n=2, L=6, dt=0.1, burn_in=0.3, generator=gen)
    assert x.shape == y.shape == (15, 2, 6)
    # consecutive pairs chain within a trajectory, and y is the flow of x
    assert torch.equal(x.view(3, 5, 2, 6)[:, 1:], y.view(3, 5, 2, 6)[:, :-1])
    assert relative_error(manakov_step(x, 0.1), y) < 1e-12


def test_cache_roundtrip(tmp_path):
    kw = dict(num_trajectories=2, steps=3, n=2, L=4, dt=0.05)
    x, y = cached_manakov_pairs(tmp_path, **kw)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and not files[0].startswith(".tmp")
    x2, y2 = cached_manakov_pairs(tmp_path, **kw)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    cached_manakov_pairs(tmp_path, **{**kw, "dt": 0.06})
    assert len(list(tmp_path.iterdir())) == 2


# The models of examples/manakov_unitary.py, checked on this data.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "manakov_unitary.py"


@pytest.fixture(scope="module")
def example():
    name = "_example_manakov_unitary"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


def _randomised(model):
    # nonzero last layer and biases, so that every term (e b included) is exercised
    with torch.no_grad():
        for layer in model.mlp.layers:
            layer.weight.normal_(0.0, 0.5)
            layer.bias.normal_(0.0, 0.3)
        model.stencil.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("n", [2, 8])
def test_unitary_model_is_equivariant_on_manakov_data(example, n):
    L = 8
    x, _ = manakov_pairs(4, 2, n=n, L=L, dt=0.05, generator=torch.Generator().manual_seed(5))
    model = _randomised(example.SiteEquivariantFlow(L, 12, 0.05, torch.complex128))
    U = haar_unitary(n, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert assert_equivariant(model, x, U) < 1e-12
        # ... and it commutes with translations of the ring
        assert relative_error(model(x.roll(3, -1)), model(x).roll(3, -1)) < 1e-12
        # complex weights: it need not commute with conjugation (a reflection of R^{2n})
        assert relative_error(model(x.conj()), model(x).conj()) > 1e-3


def test_orthogonal_model_commutes_with_conjugation(example):
    # The real network is O(2n)-equivariant: U(n) (a subgroup) and conjugation both commute.
    n, L = 3, 8
    x, _ = manakov_pairs(4, 2, n=n, L=L, dt=0.05, generator=torch.Generator().manual_seed(7))
    model = _randomised(example.SiteEquivariantFlow(L, 12, 0.05, torch.float64))
    with torch.no_grad():
        assert assert_equivariant(model, x, haar_unitary(n)) < 1e-12
        assert relative_error(model(x.conj()), model(x).conj()) < 1e-12


def test_example_runs(example, tmp_path):
    cfg = example.Config(
        ns=(2,), L=5, train_trajectories=4, train_steps=4, test_trajectories=3, test_steps=2,
        rollout_trajectories=2, rollout_steps=3, hidden=6, iterations=3, out=str(tmp_path),
    )  # fmt: skip
    results = example.run(cfg)
    res = results["runs"]["2"]
    assert set(res) == {"identity", "unitary", "orthogonal", "mlp"}
    for name in ("unitary", "orthogonal"):  # exact symmetry: rotated error == test error
        assert res[name]["rotated_minus_one_step_max"] < 1e-12
    assert res["mlp"]["rotated_minus_one_step_max"] > 1e-6
    # the time-reversal bound is a bound
    assert res["orthogonal"]["symmetrised"] >= results["time_reversal_bound"]["2"] * (1 - 1e-9)
    assert "| unitary" in example.format_table(results)
    example.save(results, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.json", "manakov_rollout.png", "manakov_errors.png"
    }  # fmt: skip
