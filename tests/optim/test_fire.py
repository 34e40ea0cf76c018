import io

import numpy as np
import pytest
import torch

from uenn_geo.optim import FIRE

# --- a small mixed problem: Rosenbrock (real), quadratic (real matrix), quartic (complex) ---

A0 = np.array([-1.2, 1.0])
B0 = np.array([[0.3, -0.5], [1.0, 0.2], [-0.7, 0.9]])
Z0 = np.array([0.5 + 0.2j, -0.3 + 0.8j, 0.1 - 0.4j])
K = np.array([[1.0, 2.0], [0.5, 3.0], [1.5, 0.7]])  # quadratic stiffnesses
C = np.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]])  # quadratic minimum
ZC = np.array([1.0 - 0.5j, 0.2 + 0.3j, -0.4 + 0.1j])  # complex centre
ROS = 10.0  # Rosenbrock stiffness
COUP = 0.3  # a[0] * sum(B) coupling


def loss_torch(a, b, z):
    ros = (1 - a[0]) ** 2 + ROS * (a[1] - a[0] ** 2) ** 2
    quad = 0.5 * (torch.as_tensor(K) * (b - torch.as_tensor(C)) ** 2).sum()
    s = (z.abs() ** 2).sum()
    cplx = ((z - torch.as_tensor(ZC)).abs() ** 2).sum() + 0.25 * s**2
    return ros + quad + cplx + COUP * a[0] * b.sum()


def grad_numpy(a, b, z):
    """Analytic gradient; for z it is dL/dRe z + i dL/dIm z (C treated as R^2)."""
    ga = np.array(
        [
            -2 * (1 - a[0]) - 4 * ROS * a[0] * (a[1] - a[0] ** 2) + COUP * b.sum(),
            2 * ROS * (a[1] - a[0] ** 2),
        ]
    )
    gb = K * (b - C) + COUP * a[0]
    s = (np.abs(z) ** 2).sum()
    gz = 2 * (z - ZC) + s * z
    return ga, gb, gz


def to_flat(a, b, z):
    return np.concatenate([a.ravel(), b.ravel(), z.real, z.imag])


def from_flat(x):
    a, b = x[:2], x[2:8].reshape(3, 2)
    z = x[8:11] + 1j * x[11:14]
    return a, b, z


def fire_reference(x, grad, n_steps, m=0.1, dt=0.001, dt_max=0.01, n_min=5, f_inc=1.1,
                   f_dec=0.5, alpha_start=0.1, f_alpha=0.99):  # fmt: skip
    """The paper's appendix, line by line, on one flat float64 vector."""
    x = x.copy()
    v = np.zeros_like(x)
    alpha, N = alpha_start, 0
    xs, dts = [], []
    for _ in range(n_steps):
        F = -grad(x)
        x = x + v * dt  # 1.
        v = v + F / m * dt
        P = F @ v  # 2.
        F_norm = np.linalg.norm(F)
        F_hat = F / F_norm if F_norm > 0 else np.zeros_like(F)
        v = (1 - alpha) * v + alpha * np.linalg.norm(v) * F_hat  # 3.
        N += 1
        if P > 0 and N > n_min:  # 4.
            dt = min(dt * f_inc, dt_max)
            alpha = alpha * f_alpha
        if P <= 0:  # 5.
            dt = dt * f_dec
            v = np.zeros_like(v)
            alpha = alpha_start
            N = 0
        xs.append(x.copy())
        dts.append(dt)
    return np.array(xs), np.array(dts)


def make_params():
    return [
        torch.nn.Parameter(torch.tensor(A0)),
        torch.nn.Parameter(torch.tensor(B0)),
        torch.nn.Parameter(torch.tensor(Z0)),
    ]


def make_closure(opt, params):
    def closure():
        opt.zero_grad()
        loss = loss_torch(*params)
        loss.backward()
        return loss

    return closure


def run(opt, params, n_steps):
    closure = make_closure(opt, params)
    return [opt.step(closure).item() for _ in range(n_steps)]


def test_matches_numpy_reference():
    params = make_params()
    opt = FIRE(params)
    closure = make_closure(opt, params)
    xs, dts = [], []
    for _ in range(200):
        opt.step(closure)
        xs.append(to_flat(*(p.detach().numpy() for p in params)))
        dts.append(opt.dt)

    def grad(x):
        return to_flat(*grad_numpy(*from_flat(x)))

    xs_ref, dts_ref = fire_reference(to_flat(A0, B0, Z0), grad, 200)
    # the run exercises both the growth (4.) and the reset (5.) branches
    assert np.any(np.diff(dts_ref) > 0) and np.any(np.diff(dts_ref) < 0)
    assert dts_ref.max() == pytest.approx(0.01)
    np.testing.assert_allclose(np.array(dts), dts_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.array(xs), xs_ref, rtol=1e-12, atol=1e-12)


def test_decreases_rosenbrock():
    a = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    opt = FIRE([a])

    def closure():
        opt.zero_grad()
        loss = (1 - a[0]) ** 2 + 100 * (a[1] - a[0] ** 2) ** 2
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(3000):
        opt.step(closure)
    assert closure().item() < 1e-3 * initial


def test_resume_is_bit_identical():
    params = make_params()
    opt = FIRE(params)
    run(opt, params, 50)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    saved_dt = opt.dt
    losses = run(opt, params, 50)

    buf.seek(0)
    ckpt = torch.load(buf)
    params2 = [torch.nn.Parameter(t) for t in ckpt["params"]]
    opt2 = FIRE(params2)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.dt == saved_dt
    losses2 = run(opt2, params2, 50)

    assert losses2 == losses
    assert all(torch.equal(p, q) for p, q in zip(params, params2))
    for p, q in zip(params, params2):
        assert torch.equal(opt.state[p]["velocity"], opt2.state[q]["velocity"])
    assert (opt.dt, opt.alpha, opt.n_since_reset) == (opt2.dt, opt2.alpha, opt2.n_since_reset)

    # the loaded state matters: a fresh optimiser from the same parameters diverges
    params3 = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    run(FIRE(params3), params3, 50)
    assert not all(torch.equal(p, q) for p, q in zip(params, params3))


def test_load_state_dict_does_not_alias():
    params = make_params()
    opt = FIRE(params)
    run(opt, params, 10)
    sd = opt.state_dict()
    v0 = sd["state"][0]["velocity"].clone()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = FIRE(params2)
    opt2.load_state_dict(sd)
    run(opt2, params2, 5)
    assert torch.equal(sd["state"][0]["velocity"], v0)


def test_uphill_velocity_resets():
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = FIRE([x])
    opt.step()  # no grad: zero force, P = 0 <= 0 -> reset, dt halves
    assert opt.dt == 0.0005 and opt.n_since_reset == 0
    assert torch.equal(x, torch.tensor([1.0], dtype=torch.float64))

    opt.state[x]["velocity"].fill_(10.0)  # moving uphill on L = x^2 / 2 (F = -1)
    x.grad = x.detach().clone()
    opt.step()
    assert x.item() == pytest.approx(1.0 + 10.0 * 0.0005)  # 1. still moves with the old v
    assert torch.equal(opt.state[x]["velocity"], torch.zeros(1, dtype=torch.float64))
    assert opt.dt == pytest.approx(0.00025)
    assert opt.alpha == 0.1 and opt.n_since_reset == 0


def test_downhill_grows_dt_after_n_min():
    x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = FIRE([x])
    dts, alphas = [], []
    for _ in range(40):
        x.grad = -torch.ones_like(x)  # constant force F = 1: P > 0 on every step
        opt.step()
        dts.append(opt.dt)
        alphas.append(opt.alpha)
    k = np.arange(1, 41)
    np.testing.assert_allclose(dts, np.minimum(0.001 * 1.1 ** np.maximum(k - 5, 0), 0.01))
    np.testing.assert_allclose(alphas, 0.1 * 0.99 ** np.maximum(k - 5, 0))
    assert opt.n_since_reset == 40
    assert max(dts) == 0.01


def test_dt_never_exceeds_dt_max_and_resets_zero_velocity():
    x = torch.nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))
    opt = FIRE([x], dt=0.05, dt_max=0.3, n_min=2, f_inc=1.5)
    n_resets = 0
    for _ in range(300):
        opt.zero_grad()
        (x**2).sum().mul(50.0).backward()  # stiff: overshoots at large dt
        opt.step()
        assert opt.dt <= 0.3
        if opt.n_since_reset == 0:
            n_resets += 1
            assert torch.count_nonzero(opt.state[x]["velocity"]) == 0
    assert n_resets > 0


def test_zero_force_no_nan():
    x = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = FIRE([x])
    for _ in range(3):
        x.grad = torch.zeros_like(x)
        opt.step()
    assert torch.equal(x, torch.zeros_like(x))
    assert not torch.isnan(opt.state[x]["velocity"]).any()
    assert opt.dt == pytest.approx(0.001 * 0.5**3)


def test_param_without_grad_has_zero_force():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    y = torch.nn.Parameter(torch.tensor([3.0]))
    opt = FIRE([x, y], dt=0.01, dt_max=0.1)
    for _ in range(20):
        opt.zero_grad()
        (x**2).sum().backward()
        assert y.grad is None
        opt.step()
    assert torch.equal(y, torch.tensor([3.0]))
    assert (x.abs() < torch.tensor([1.0, 2.0])).all()


def test_converges_all_dtypes(dtype):
    target = torch.randn(5, dtype=dtype)
    z = torch.nn.Parameter(torch.zeros(5, dtype=dtype))
    opt = FIRE([z], dt=0.01, dt_max=0.1)
    for _ in range(1000):
        opt.zero_grad()
        ((z - target).abs() ** 2).sum().backward()
        opt.step()
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-8
    assert (z - target).abs().max().item() < tol


def test_complex_matches_real_pair():
    """A complex parameter behaves exactly like its (Re, Im) pair as a real parameter."""
    target = torch.randn(4, dtype=torch.complex128)
    z = torch.nn.Parameter(torch.zeros(4, dtype=torch.complex128))
    r = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.float64))
    opt_z, opt_r = FIRE([z]), FIRE([r])
    for _ in range(100):
        opt_z.zero_grad(), opt_r.zero_grad()
        ((z - target).abs() ** 4).sum().backward()
        ((r - torch.view_as_real(target)).pow(2).sum(-1) ** 2).sum().backward()
        opt_z.step(), opt_r.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-14)
    assert opt_z.dt == opt_r.dt


def test_closure_returns_loss():
    x = torch.nn.Parameter(torch.tensor([1.0]))
    opt = FIRE([x])

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 1.0 and x.grad is not None
    assert opt.step() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dt=-0.001),
        dict(dt=0.0),
        dict(dt=0.1, dt_max=0.01),
        dict(dt_max=-1.0),
        dict(mass=0.0),
        dict(mass=-0.1),
        dict(mass=float("nan")),
        dict(n_min=-1),
        dict(n_min=2.5),
        dict(f_inc=0.9),
        dict(f_dec=1.0),
        dict(f_dec=0.0),
        dict(alpha_start=1.5),
        dict(alpha_start=-0.1),
        dict(f_alpha=0.0),
        dict(f_alpha=1.01),
    ],
)
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        FIRE([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_single_param_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="one parameter group"):
        FIRE([{"params": [a]}, {"params": [b]}])
    opt = FIRE([a])
    with pytest.raises(ValueError, match="one parameter group"):
        opt.add_param_group({"params": [b]})


def test_state_in_param_group():
    x = torch.nn.Parameter(torch.zeros(2))
    opt = FIRE([x], dt=0.002, dt_max=0.02, alpha_start=0.2)
    group = opt.state_dict()["param_groups"][0]
    assert (group["dt"], group["alpha"], group["n_since_reset"]) == (0.002, 0.2, 0)
    assert (opt.dt, opt.alpha, opt.n_since_reset) == (0.002, 0.2, 0)
