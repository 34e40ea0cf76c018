import pytest
import torch

from uenn_geo.nn import (
    ACTIVATIONS,
    Identity,
    NormActivation,
    SmoothSoftsignResidual,
    SoftsignResidual,
    VectorLeakyReLU,
    VectorReLU,
)
from uenn_geo.nn.activation import resolve_activation
from uenn_geo.testing import assert_equivariant, haar_unitary, random_orthogonal

ACTS = [
    SoftsignResidual(),
    SoftsignResidual(a=0.0),
    VectorReLU(0.3),
    VectorLeakyReLU(0.3, 0.05),
    NormActivation(torch.tanh),
    Identity(),
    SmoothSoftsignResidual(),
]


@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_unitary_equivariance(act, n, complex_dtype):
    x = torch.randn(6, n, 4, dtype=complex_dtype)
    assert_equivariant(act, x, haar_unitary(n, dtype=complex_dtype))


@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize("reflection", [True, False])
def test_orthogonal_equivariance(act, reflection, real_dtype):
    x = torch.randn(6, 3, 4, dtype=real_dtype)
    assert_equivariant(act, x, random_orthogonal(3, dtype=real_dtype, reflection=reflection))


def test_softsign_residual_formula():
    u = torch.randn(5, 3, 4, dtype=torch.float64)
    r = u.norm(dim=-2, keepdim=True)
    torch.testing.assert_close(SoftsignResidual(0.2)(u), u / (1 + r) + 0.2 * u)


def test_smooth_softsign_residual_formula_and_smoothness_at_zero():
    u = torch.randn(5, 3, 4, dtype=torch.float64)
    r = u.norm(dim=-2, keepdim=True)
    torch.testing.assert_close(SmoothSoftsignResidual(0.2)(u), u / (1 + r**2).sqrt() + 0.2 * u)
    # second derivatives near 0 do not depend on the direction of approach (eq. 13's do)
    c = torch.randn(3, 1, dtype=torch.float64)

    def hessian_at(act, point):
        return torch.autograd.functional.hessian(lambda x: (act(x) * c).sum(), point)

    d1, d2 = torch.randn(2, 3, 1, dtype=torch.float64)
    smooth, paper = SmoothSoftsignResidual(), SoftsignResidual()
    gap = (hessian_at(smooth, 1e-7 * d1) - hessian_at(smooth, 1e-7 * d2)).abs().max()
    assert gap < 1e-5
    assert (hessian_at(paper, 1e-7 * d1) - hessian_at(paper, 1e-7 * d2)).abs().max() > 1e-2
    u = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(smooth, (u,))


def test_vector_relu_and_leaky_relu_norms():
    u = torch.randn(200, 3, 1, dtype=torch.float64)
    r = u.norm(dim=-2)
    out = VectorReLU(0.5)(u).norm(dim=-2)
    torch.testing.assert_close(out, (r - 0.5).clamp_min(0))
    leaky = VectorLeakyReLU(0.5, 0.1)(u).norm(dim=-2)
    expected = torch.where(r < 0.5, 0.1 * r, r - 0.9 * 0.5)
    torch.testing.assert_close(leaky, expected)
    # direction is kept where the output is non-zero
    v = VectorLeakyReLU(0.5, 0.1)(u)
    cos = (v * u).sum(-2) / (v.norm(dim=-2) * r)
    torch.testing.assert_close(cos, torch.ones_like(cos))


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_zero_vector_finite_gradient(act, dtype):
    u = torch.zeros(2, 3, 2, dtype=dtype, requires_grad=True)
    y = act(u)
    assert torch.count_nonzero(y) == 0
    y.abs().sum().backward()
    g = torch.view_as_real(u.grad) if u.grad.is_complex() else u.grad
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("act", ACTS[:1] + ACTS[2:5], ids=repr)
def test_gradcheck(act, dtype):
    u = torch.randn(3, 3, 2, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(act, (u,))


def test_registry_and_errors():
    assert set(ACTIVATIONS) == {
        "softsign_residual", "smooth_softsign_residual", "relu", "leaky_relu", "identity"
    }  # fmt: skip
    assert isinstance(resolve_activation("relu"), VectorReLU)
    assert isinstance(resolve_activation(None), Identity)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        resolve_activation("gelu")
    with pytest.raises(ValueError, match="residue"):
        SoftsignResidual(-1)
    with pytest.raises(ValueError, match="threshold"):
        VectorReLU(-0.1)
    assert repr(SoftsignResidual()) == "SoftsignResidual(a=0.1)"
