import pytest
import torch

from uenn_geo.nn import EquivariantMLP, VectorLeakyReLU, concat_scalars, split_scalars
from uenn_geo.testing import assert_equivariant, assert_invariant, haar_unitary, random_orthogonal

PAPER = [6, 50, 90, 100, 80, 50, 4]


def _randomise_biases(mlp):
    for layer in mlp.layers:
        torch.nn.init.normal_(layer.bias, std=0.3)
    return mlp


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_paper_stack_unitary_complex128(n):
    mlp = _randomise_biases(EquivariantMLP(PAPER, dtype=torch.complex128))
    x = torch.randn(8, n, 6, dtype=torch.complex128)
    assert assert_equivariant(mlp, x, haar_unitary(n)) < 1e-10


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_paper_stack_unitary_complex64(n):
    mlp = _randomise_biases(EquivariantMLP(PAPER, dtype=torch.complex64))
    x = torch.randn(8, n, 6, dtype=torch.complex64)
    assert_equivariant(mlp, x, haar_unitary(n, dtype=torch.complex64))


@pytest.mark.parametrize("reflection", [True, False])
def test_paper_stack_orthogonal(real_dtype, reflection):
    mlp = _randomise_biases(EquivariantMLP(PAPER, dtype=real_dtype))
    x = torch.randn(8, 3, 6, dtype=real_dtype)
    assert_equivariant(mlp, x, random_orthogonal(3, dtype=real_dtype, reflection=reflection))


def test_scalar_features_through_stack():
    m = 2
    mlp = _randomise_biases(EquivariantMLP([4, 16, 16, 3], num_scalars=m, dtype=torch.complex128))
    xh = concat_scalars(
        torch.randn(5, 3, 4, dtype=torch.complex128), torch.randn(5, m, 4, dtype=torch.complex128)
    )
    assert_equivariant(mlp, xh, haar_unitary(3), num_scalars=m, out_num_scalars=m)
    assert_invariant(lambda t: split_scalars(mlp(t), m)[1], xh, num_scalars=m)


def test_zero_input_and_cancelling_sum_stay_finite(dtype):
    mlp = _randomise_biases(EquivariantMLP([3, 4, 2], dtype=dtype))
    # make the first layer's output column 0 cancel exactly: W[:, 0] = 0, b[:, 0] = 0
    with torch.no_grad():
        mlp.layers[0].weight[:, 0] = 0
        mlp.layers[0].bias[:, 0] = 0
    x = torch.randn(4, 3, 3, dtype=dtype)
    x[1] = 0  # an all-zero sample
    x.requires_grad_(True)
    y = mlp(x)
    assert torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all()
    y.abs().square().sum().backward()
    for p in [x, *mlp.parameters()]:
        g = torch.view_as_real(p.grad) if p.grad.is_complex() else p.grad
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck(dtype):
    mlp = _randomise_biases(EquivariantMLP([3, 4, 2], dtype=dtype))
    x = torch.randn(2, 3, 3, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))
    params = dict(mlp.named_parameters())
    names = list(params)

    def f(*ps):
        return torch.func.functional_call(mlp, dict(zip(names, ps)), (x.detach(),))

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in params.values()))


def test_final_act_and_repr():
    mlp = EquivariantMLP([6, 50, 90, 100, 80, 50, 4])
    assert (
        repr(mlp)
        == "EquivariantMLP([6, 50, 90, 100, 80, 50, 4], act=SoftsignResidual(a=0.1), float32)"
    )
    assert sum(p.numel() for p in mlp.parameters()) == 2 * (
        6 * 50 + 50 * 90 + 90 * 100 + 100 * 80 + 80 * 50 + 50 * 4
    )
    leaky = EquivariantMLP([3, 4], act="relu", final_act=VectorLeakyReLU(), dtype=torch.float64)
    assert "final_act=VectorLeakyReLU" in repr(leaky)
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(leaky(x), leaky.final_act(leaky.layers[0](x)))


def test_errors():
    with pytest.raises(ValueError, match="at least"):
        EquivariantMLP([3])
    mlp = EquivariantMLP([6, 4], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 6\)"):
        mlp(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype complex128"):
        mlp(torch.randn(3, 6, dtype=torch.complex128))


def test_torch_compile_no_graph_breaks():
    mlp = EquivariantMLP(PAPER, dtype=torch.float32)
    x = torch.randn(16, 3, 6)
    explanation = torch._dynamo.explain(mlp)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(mlp, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), mlp(x))
