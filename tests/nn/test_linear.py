import pytest
import torch

from uenn_geo.nn import EquivariantLinear, concat_scalars, split_scalars
from uenn_geo.testing import assert_equivariant, assert_invariant, haar_unitary, random_orthogonal


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_unitary_equivariance_complex128(n):
    lin = EquivariantLinear(6, 9, dtype=torch.complex128)
    torch.nn.init.normal_(lin.bias)  # a zero bias would hide the e b term
    x = torch.randn(4, 7, n, 6, dtype=torch.complex128)
    assert assert_equivariant(lin, x, haar_unitary(n)) < 1e-10


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_unitary_equivariance_complex64(n):
    lin = EquivariantLinear(6, 9, dtype=torch.complex64)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(5, n, 6, dtype=torch.complex64)
    assert_equivariant(lin, x, haar_unitary(n, dtype=torch.complex64))


@pytest.mark.parametrize("reflection", [True, False])
def test_orthogonal_equivariance_real(real_dtype, reflection):
    lin = EquivariantLinear(6, 9, dtype=real_dtype)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(5, 3, 6, dtype=real_dtype)
    U = random_orthogonal(3, dtype=real_dtype, reflection=reflection)
    assert_equivariant(lin, x, U)


def test_matches_equation_5_and_8():
    lin = EquivariantLinear(3, 2, dtype=torch.float64)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(4, 3, dtype=torch.float64)
    e = x / x.norm(dim=0, keepdim=True)
    torch.testing.assert_close(lin(x), x @ lin.weight + e @ lin.bias)


def test_not_equivariant_under_general_linear_maps():
    # The check must be able to fail: a non-orthogonal map breaks the e b term.
    lin = EquivariantLinear(4, 4, dtype=torch.float64)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    A = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lin, x, A)


def test_scalar_features_invariant_and_single_bias():
    m, n = 2, 3
    lin = EquivariantLinear(5, 4, num_scalars=m, dtype=torch.complex128)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(6, n, 5, dtype=torch.complex128)
    h = torch.randn(6, m, 5, dtype=torch.complex128)
    xh = concat_scalars(x, h)
    assert assert_equivariant(lin, xh, haar_unitary(n), num_scalars=m, out_num_scalars=m) < 1e-10
    # the scalar part alone is invariant
    assert_invariant(lambda t: split_scalars(lin(t), m)[1], xh, num_scalars=m)
    # eq. 16-17: e' = [e; 1] -> the scalar rows get h W + sum_a b_a
    y_vec, y_scal = split_scalars(lin(xh), m)
    torch.testing.assert_close(y_scal, h @ lin.weight + lin.bias.sum(0))
    e = x / x.norm(dim=-2, keepdim=True)
    torch.testing.assert_close(y_vec, x @ lin.weight + e @ lin.bias)


def test_zero_vector_finite_outputs_and_gradients(dtype):
    lin = EquivariantLinear(3, 4, dtype=dtype)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, 3, 3, dtype=dtype)
    x[0, :, 1] = 0  # one zero column
    x.requires_grad_(True)
    y = lin(x)
    assert torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()
    y.abs().sum().backward()
    grads = [x.grad, lin.weight.grad, lin.bias.grad]
    for g in grads:
        assert torch.isfinite(torch.view_as_real(g) if g.is_complex() else g).all()
    # a zero vector has no direction: it contributes no bias
    x0 = torch.zeros(3, 3, dtype=dtype)
    assert torch.count_nonzero(lin(x0)) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck(dtype):
    lin = EquivariantLinear(3, 2, dtype=dtype)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, 3, 3, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, w, b: _functional(lin, t, w, b), (x, lin.weight, lin.bias)
    )


def _functional(lin, x, w, b):
    return torch.func.functional_call(lin, {"weight": w, "bias": b}, (x,))


def test_xavier_initialisation_bounds():
    lin = EquivariantLinear(50, 90, dtype=torch.float64)
    bound = (6 / 140) ** 0.5
    assert lin.weight.abs().max() <= bound
    assert lin.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(lin.bias) == 0
    c = EquivariantLinear(50, 90, dtype=torch.complex128)
    # same mean square modulus as the real case: bound^2 / 3
    assert abs(c.weight.abs().square().mean().item() / (bound**2 / 3) - 1) < 0.1


def test_reset_parameters_and_no_bias():
    lin = EquivariantLinear(3, 2, bias=False)
    assert lin.bias is None
    w = lin.weight.detach().clone()
    lin.reset_parameters()
    assert not torch.equal(w, lin.weight)
    x = torch.randn(3, 3)
    torch.testing.assert_close(lin(x), x @ lin.weight)


def test_repr():
    assert (
        repr(EquivariantLinear(6, 50, dtype=torch.complex128))
        == "EquivariantLinear(6 -> 50, complex128)"
    )
    assert repr(EquivariantLinear(6, 50, bias=False, num_scalars=2, dtype=torch.float32)) == (
        "EquivariantLinear(6 -> 50, float32, bias=False, num_scalars=2)"
    )


def test_wrong_shape_and_dtype_errors():
    lin = EquivariantLinear(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 6\).*got \(5, 3, 7\)"):
        lin(torch.randn(5, 3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="got \\(6,\\)"):
        lin(torch.randn(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype float32.*float64"):
        lin(torch.randn(5, 3, 6, dtype=torch.float32))
    with pytest.raises(ValueError, match="positive"):
        EquivariantLinear(0, 3)
    with pytest.raises(ValueError, match="floating"):
        EquivariantLinear(3, 3, dtype=torch.int64)
    scal = EquivariantLinear(6, 4, num_scalars=3, dtype=torch.float64)
    with pytest.raises(ValueError, match="n >= 4"):
        scal(torch.randn(5, 3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not match"):
        concat_scalars(torch.randn(5, 3, 6), torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="num_scalars"):
        split_scalars(torch.randn(5, 3, 6), 3)


@pytest.mark.parametrize("reflection", [True, False])
def test_separate_scalar_weights_equivariant(reflection):
    lin = EquivariantLinear(5, 4, num_scalars=1, separate_scalars=True, dtype=torch.float64)
    for p in (lin.bias, lin.scalar_bias):
        torch.nn.init.normal_(p)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    h = torch.randn(6, 1, 5, dtype=torch.float64)
    xh = concat_scalars(x, h)
    U = random_orthogonal(3, dtype=torch.float64, reflection=reflection)
    assert_equivariant(lin, xh, U, num_scalars=1, out_num_scalars=1)
    # the scalar rows have their own weights: h W_s + b_s
    torch.testing.assert_close(lin(xh)[:, 3:, :], h @ lin.scalar_weight + lin.scalar_bias)
    with pytest.raises(ValueError, match="num_scalars"):
        EquivariantLinear(5, 4, separate_scalars=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_smooth_directions_equivariant(dtype):
    lin = EquivariantLinear(6, 9, num_scalars=1, dtype=dtype, delta=0.1)
    torch.nn.init.normal_(lin.bias)
    xh = torch.randn(5, 4, 6, dtype=dtype)
    if dtype.is_complex:
        U = haar_unitary(3)
        xh[:, 3:, :] = xh[:, 3:, :].real.to(dtype)  # the scalar row stays real
    else:
        U = random_orthogonal(3, dtype=dtype, reflection=True)
    assert_equivariant(lin, xh, U, num_scalars=1, out_num_scalars=1)


def test_smooth_directions_match_eq_8_far_from_zero_and_stay_smooth_near_it():
    delta = 0.1
    smooth = EquivariantLinear(3, 2, dtype=torch.float64, delta=delta)
    plain = EquivariantLinear(3, 2, dtype=torch.float64)
    plain.load_state_dict(smooth.state_dict())
    torch.nn.init.normal_(smooth.bias)
    plain.bias.data.copy_(smooth.bias.data)
    x = torch.randn(4, 3, dtype=torch.float64)
    x = 100 * x / x.norm(dim=0, keepdim=True)  # |x| = 100 = 1000 delta
    torch.testing.assert_close(smooth(x), plain(x), rtol=1e-5, atol=1e-5)
    # e = x / sqrt(|x|^2 + delta^2) exactly
    x = torch.randn(4, 3, dtype=torch.float64) * 0.05
    e = x / (x.square().sum(0, keepdim=True) + delta**2).sqrt()
    torch.testing.assert_close(smooth(x), x @ smooth.weight + e @ smooth.bias)
    # through zero: eq. 8's output jumps with the direction, the smooth one moves by O(s / delta)
    v = torch.randn(4, 1, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    s = 1e-4
    jump_plain = (plain(x * 0 + s * v) - plain(x * 0 - s * v)).abs().max()
    jump_smooth = (smooth(x * 0 + s * v) - smooth(x * 0 - s * v)).abs().max()
    assert jump_plain > 0.1
    assert jump_smooth < 10 * 2 * s * v.norm() / delta * smooth.bias.abs().max()
    with pytest.raises(ValueError, match="delta"):
        EquivariantLinear(3, 2, delta=-1.0)
    assert "delta=0.1" in repr(smooth)
