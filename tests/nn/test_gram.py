import pytest
import torch

from uenn_geo.nn import GramInvariants, concat_scalars
from uenn_geo.testing import assert_invariant, haar_unitary, random_orthogonal


@pytest.mark.parametrize("n", [2, 3, 5])
def test_unitary_invariance_complex(n):
    gram = GramInvariants(6, 4, dtype=torch.complex128)
    x = torch.randn(7, n, 6, dtype=torch.complex128)
    assert gram(x).shape == (7, 16) and not gram(x).is_complex()
    assert assert_invariant(gram, x, U=haar_unitary(n)) < 1e-10


@pytest.mark.parametrize("reflection", [True, False])
def test_orthogonal_invariance_with_scalar_rows(reflection):
    gram = GramInvariants(5, 3, dtype=torch.float64)
    xh = concat_scalars(
        torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 1, 5, dtype=torch.float64)
    )
    U = random_orthogonal(3, dtype=torch.float64, reflection=reflection)
    assert assert_invariant(gram, xh, U=U, num_scalars=1) < 1e-12


def test_values_are_the_inner_products_of_the_mixes():
    gram = GramInvariants(4, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    p = x @ gram.weight
    out = gram(x)
    assert out.shape == (2, 6)
    expected = [(p[:, :, a] * p[:, :, b]).sum(1) / 3**0.5 for a in range(3) for b in range(a, 3)]
    torch.testing.assert_close(out, torch.stack(expected, dim=-1))


def test_not_invariant_under_a_general_linear_map():
    gram = GramInvariants(4, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(gram, x, U=torch.randn(3, 3, dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        GramInvariants(0, 3)
    with pytest.raises(ValueError, match="shape"):
        GramInvariants(4, 3)(torch.randn(2, 3, 5))
