import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from uenn_geo.nn.radial import GaussianBasis, SmoothCutoff, edge_basis, smooth_cutoff

R_C = 5.0


def derivatives(f, r):
    """Value, first and second derivative of an elementwise f at float64 points r."""
    r = torch.as_tensor(r, dtype=torch.float64).clone().requires_grad_()
    y = f(r)
    (d1,) = torch.autograd.grad(y.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    return y.detach(), d1.detach(), d2


def cosine_cutoff(r, r_c):
    return torch.where(r < r_c, 0.5 * (torch.cos(math.pi * r / r_c) + 1.0), torch.zeros_like(r))


def test_smooth_cutoff_values(real_dtype):
    r = torch.linspace(0.0, 1.5 * R_C, 301, dtype=real_dtype)
    x = r.double() / R_C
    expected = torch.where(x < 1, 1 - 10 * x**3 + 15 * x**4 - 6 * x**5, torch.zeros_like(x))
    f = smooth_cutoff(r, R_C)
    assert f.dtype == real_dtype
    tol = 1e-12 if real_dtype == torch.float64 else 1e-6
    torch.testing.assert_close(f.double(), expected, atol=tol, rtol=0)
    assert f[0] == 1.0
    assert torch.all(f[r >= R_C] == 0.0)
    assert torch.all(f[:-1] >= f[1:])  # monotone non-increasing
    assert SmoothCutoff(R_C)(r).equal(f)
    assert repr(SmoothCutoff(10.2)) == "SmoothCutoff(cutoff=10.2)"


def test_smooth_cutoff_value_slope_curvature_vanish_at_cutoff():
    left = [R_C - 1e-9, R_C - 1e-11]
    f, d1, d2 = derivatives(lambda r: smooth_cutoff(r, R_C), left)
    assert torch.all(f.abs() < 1e-8) and torch.all(d1.abs() < 1e-8) and torch.all(d2.abs() < 1e-8)
    # exactly zero at and beyond the cutoff
    f, d1, d2 = derivatives(lambda r: smooth_cutoff(r, R_C), [R_C, R_C + 1e-9, 2 * R_C, 100.0])
    assert torch.all(f == 0) and torch.all(d1 == 0) and torch.all(d2 == 0)
    # ...but not trivially zero inside: the third derivative at r_c is -60 / r_c^3 (from the left)
    r = torch.tensor([R_C - 1e-6], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(smooth_cutoff(r, R_C).sum(), r, create_graph=True)
    (g,) = torch.autograd.grad(g.sum(), r, create_graph=True)
    (g,) = torch.autograd.grad(g.sum(), r)
    torch.testing.assert_close(
        g, torch.tensor([-60.0 / R_C**3], dtype=torch.float64), rtol=1e-4, atol=0
    )


def test_smooth_cutoff_c2_continuity_across_cutoff():
    for eps in [1e-4, 1e-6]:
        f, d1, d2 = derivatives(lambda r: smooth_cutoff(r, R_C), [R_C - eps, R_C + eps])
        assert abs(f[0] - f[1]) < 10 * eps**3
        assert abs(d1[0] - d1[1]) < 10 * eps**2
        assert abs(d2[0] - d2[1]) < 10 * eps
    # finite differences of the autograd derivatives agree with the next derivative (smoothness)
    r = torch.linspace(0.1, 1.2 * R_C, 50, dtype=torch.float64)
    h = 1e-5
    f_p, d1_p, _ = derivatives(lambda r: smooth_cutoff(r, R_C), r + h)
    f_m, d1_m, _ = derivatives(lambda r: smooth_cutoff(r, R_C), r - h)
    _, d1, d2 = derivatives(lambda r: smooth_cutoff(r, R_C), r)
    torch.testing.assert_close((f_p - f_m) / (2 * h), d1, atol=1e-8, rtol=0)
    torch.testing.assert_close((d1_p - d1_m) / (2 * h), d2, atol=1e-6, rtol=0)


def test_cosine_cutoff_is_not_c2():
    """Documents why the cosine cutoff is not used: its curvature jumps at r_c."""
    f, d1, d2 = derivatives(lambda r: cosine_cutoff(r, R_C), [R_C - 1e-9, R_C + 1e-9])
    assert abs(f[0]) < 1e-8 and abs(d1[0]) < 1e-8  # C1 ...
    torch.testing.assert_close(d2[0], torch.tensor(math.pi**2 / (2 * R_C**2), dtype=torch.float64))
    assert d2[1] == 0  # ... but the second derivative jumps


def test_smooth_cutoff_gradients_finite_and_gradcheck():
    _, d1, d2 = derivatives(lambda r: smooth_cutoff(r, R_C), [0.0, R_C, 3 * R_C])
    assert torch.all(torch.isfinite(d1)) and torch.all(torch.isfinite(d2))
    assert d1[0] == 0 and d2[0] == 0  # flat at r = 0
    r = torch.tensor([0.0, 0.3, 2.0, 4.9, R_C, 5.2, 9.0], dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda r: smooth_cutoff(r, R_C), (r,))
    assert gradgradcheck(lambda r: smooth_cutoff(r, R_C), (r,))


def test_smooth_cutoff_invalid():
    with pytest.raises(ValueError, match="r_c"):
        smooth_cutoff(torch.ones(3), 0.0)
    with pytest.raises(TypeError, match="real floating-point"):
        smooth_cutoff(torch.ones(3, dtype=torch.complex64), 1.0)
    with pytest.raises(ValueError, match="cutoff"):
        SmoothCutoff(-1.0)


def test_gaussian_basis_matches_formula(real_dtype):
    basis = GaussianBasis(16, r_max=10.2, dtype=real_dtype)
    r = torch.rand(33, dtype=real_dtype) * 12.0
    out = basis(r)
    assert out.shape == (33, 16) and out.dtype == real_dtype
    spacing = 10.2 / 15
    rs = torch.tensor([b * spacing for b in range(16)], dtype=torch.float64)
    expected = torch.exp(-0.5 / spacing**2 * (r.double()[:, None] - rs) ** 2)
    tol = 1e-12 if real_dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=0)
    # each Gaussian peaks (value 1) at its centre
    torch.testing.assert_close(basis(basis.rs).diagonal(), torch.ones(16, dtype=real_dtype))
    # arbitrary leading shape
    assert basis(torch.rand(2, 5, dtype=real_dtype)).shape == (2, 5, 16)


def test_gaussian_basis_custom_eta_and_range():
    basis = GaussianBasis(3, r_min=1.0, r_max=3.0, eta=[1.0, 2.0, 4.0], dtype=torch.float64)
    r = torch.tensor([0.5, 2.0], dtype=torch.float64)
    rs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    eta = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(basis(r), torch.exp(-eta * (r[:, None] - rs) ** 2))
    torch.testing.assert_close(GaussianBasis(4, eta=0.7).eta, torch.full((4,), 0.7))
    one = GaussianBasis(1, r_min=1.0, r_max=3.0, dtype=torch.float64)
    torch.testing.assert_close(one.eta, torch.tensor([0.5 / 4.0], dtype=torch.float64))
    torch.testing.assert_close(one.rs, torch.tensor([1.0], dtype=torch.float64))


def test_gaussian_basis_repr_and_parameters():
    basis = GaussianBasis(16, r_max=10.2)
    assert repr(basis) == "GaussianBasis(16, r=[0.0, 10.2], learnable=False)"
    assert list(basis.parameters()) == []
    assert set(basis.state_dict()) == {"rs", "log_eta"}
    learn = GaussianBasis(8, r_min=0.5, r_max=6.0, learnable=True)
    assert repr(learn) == "GaussianBasis(8, r=[0.5, 6.0], learnable=True)"
    assert {n for n, _ in learn.named_parameters()} == {"rs", "log_eta"}


def test_learnable_gaussian_gets_gradients_and_eta_stays_positive():
    basis = GaussianBasis(8, r_max=6.0, learnable=True, dtype=torch.float64)
    r = torch.rand(20, dtype=torch.float64) * 6.0
    basis(r).pow(2).sum().backward()
    assert basis.rs.grad is not None and basis.rs.grad.abs().sum() > 0
    assert basis.log_eta.grad is not None and basis.log_eta.grad.abs().sum() > 0
    # drive log_eta strongly negative: eta stays positive
    opt = torch.optim.SGD(basis.parameters(), lr=10.0)
    for _ in range(5):
        opt.zero_grad()
        (-basis(r).sum()).backward()  # wider Gaussians increase the sum: eta -> 0+
        opt.step()
    assert torch.all(basis.eta > 0)
    assert not torch.allclose(basis.rs, torch.linspace(0.0, 6.0, 8, dtype=torch.float64))
    basis.reset_parameters()
    torch.testing.assert_close(basis.rs, torch.linspace(0.0, 6.0, 8, dtype=torch.float64))
    torch.testing.assert_close(
        basis.eta, torch.full((8,), 0.5 / (6.0 / 7) ** 2, dtype=torch.float64)
    )


def test_gaussian_basis_gradcheck():
    basis = GaussianBasis(5, r_max=4.0, learnable=True, dtype=torch.float64)
    r = (torch.rand(6, dtype=torch.float64) * 4.0).requires_grad_()
    rs = basis.rs.detach().clone().requires_grad_()
    log_eta = basis.log_eta.detach().clone().requires_grad_()

    def f(r, rs, log_eta):
        return functional_call(basis, {"rs": rs, "log_eta": log_eta}, (r,))

    assert gradcheck(f, (r, rs, log_eta))
    assert gradgradcheck(f, (r, rs, log_eta))


def test_radial_product_of_eq31_is_smooth_and_cut_off():
    basis = GaussianBasis(6, r_max=R_C, dtype=torch.float64)

    def e(r):
        return (basis(r) * smooth_cutoff(r, R_C)[..., None]).sum(-1)

    f, d1, d2 = derivatives(e, [R_C - 1e-9, R_C, R_C + 1.0])
    assert torch.all(f.abs() < 1e-8) and torch.all(d1.abs() < 1e-8) and torch.all(d2.abs() < 1e-7)


def test_gaussian_basis_invalid():
    with pytest.raises(ValueError, match="num_basis"):
        GaussianBasis(0)
    with pytest.raises(ValueError, match="r_min < r_max"):
        GaussianBasis(4, r_min=3.0, r_max=1.0)
    with pytest.raises(ValueError, match="eta must be finite and > 0"):
        GaussianBasis(4, eta=-1.0)
    with pytest.raises(ValueError, match="4 values"):
        GaussianBasis(4, eta=[1.0, 2.0])
    with pytest.raises(TypeError, match="real floating-point dtype"):
        GaussianBasis(4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="real floating-point"):
        GaussianBasis(4)(torch.ones(3, dtype=torch.complex64))


def test_gaussian_tails_are_floored_not_subnormal():
    from uenn_geo.nn.radial import EXP_FLOOR

    basis = GaussianBasis(50, 0.0, 10.0)
    r = torch.linspace(0.0, 10.0, 101)
    g = basis(r)
    exact = torch.exp(-basis.eta * (r.unsqueeze(-1) - basis.rs).square())
    near = exact > math.exp(-EXP_FLOOR)
    assert near.any() and (~near).any()
    assert torch.allclose(g[near], exact[near])
    assert torch.all(g[~near] == torch.tensor(-EXP_FLOOR).exp())  # one normal floor value
    assert torch.finfo(g.dtype).tiny < g.min()  # no subnormal numbers anywhere


def _plain_edge_basis(r, basis, r_c):
    e = basis(r) * smooth_cutoff(r, r_c).unsqueeze(-1)
    return torch.where(r.unsqueeze(-1) > 0, e, 0.0)


def _distances():
    # zero (the self-edge), at and beyond the cutoff, and random ones
    fixed = torch.tensor([0.0, 4.999, 5.0, 6.0], dtype=torch.float64)
    return torch.cat([fixed, torch.rand(40, generator=torch.Generator().manual_seed(0)) * 5.5])


@pytest.mark.parametrize("grad", [False, True])
def test_edge_basis_equals_eq31_with_and_without_graph(grad):
    basis = GaussianBasis(12, 0.0, 5.0, dtype=torch.float64)
    r = _distances().requires_grad_(grad)
    assert torch.equal(edge_basis(r, basis, 5.0), _plain_edge_basis(r, basis, 5.0))


def test_edge_basis_derivatives_of_every_order_match_autograd():
    """The hand-written backward, once (forces) and differentiated again (force loss, Hessian)."""
    basis = GaussianBasis(12, 0.0, 5.0, dtype=torch.float64)
    r = _distances()[1:].requires_grad_()  # gradcheck perturbs r: keep away from r = 0
    fn = lambda x: edge_basis(x, basis, 5.0)  # noqa: E731
    assert gradcheck(fn, (r,)) and gradgradcheck(fn, (r,))
    weights = torch.randn(44, 12, dtype=torch.float64)
    for f in (fn, lambda x: _plain_edge_basis(x, basis, 5.0)):
        x = _distances().requires_grad_()
        (g,) = torch.autograd.grad((f(x) * weights).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.square().sum(), x)
        if f is fn:
            first, second = g, h
    torch.testing.assert_close(first, g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, h, rtol=1e-12, atol=1e-12)


def test_edge_basis_learnable_centres_get_gradients():
    basis = GaussianBasis(6, 0.0, 5.0, learnable=True, dtype=torch.float64)
    edge_basis(_distances(), basis, 5.0).sum().backward()
    assert basis.rs.grad is not None and basis.log_eta.grad.abs().sum() > 0
