import pytest
import torch

from uenn_geo.testing import (
    apply_group,
    assert_equivariant,
    assert_invariant,
    assert_permutation_equivariant,
    haar_unitary,
    random_orthogonal,
    random_permutation,
    tolerance,
)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_haar_unitary_is_unitary(n):
    U = haar_unitary(n)
    torch.testing.assert_close(U.conj().T @ U, torch.eye(n, dtype=U.dtype))


def test_haar_unitary_phases_are_uniform():
    # Haar on U(1) is a uniform phase: the mean of many draws is ~0
    g = torch.Generator().manual_seed(1)
    z = torch.stack([haar_unitary(1, generator=g)[0, 0] for _ in range(4000)])
    assert z.mean().abs() < 0.05
    # and |trace|^2 of U(3) has mean 1 under Haar measure
    t = torch.stack([haar_unitary(3, generator=g).trace().abs().square() for _ in range(4000)])
    assert abs(t.mean().item() - 1) < 0.1


def test_random_orthogonal_reflection():
    for reflection, sign in [(True, -1.0), (False, 1.0)]:
        Q = random_orthogonal(3, reflection=reflection)
        torch.testing.assert_close(Q.T @ Q, torch.eye(3, dtype=Q.dtype))
        assert torch.linalg.det(Q).item() == pytest.approx(sign)
    dets = {round(torch.linalg.det(random_orthogonal(3)).item()) for _ in range(40)}
    assert dets == {-1, 1}
    with pytest.raises(ValueError):
        random_orthogonal(3, dtype=torch.complex128)
    with pytest.raises(ValueError):
        haar_unitary(3, dtype=torch.float64)


def test_assert_equivariant_detects_violations():
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    assert_equivariant(lambda t: 2 * t, x)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda t: t + 1, x)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda t: t.abs(), x)
    assert_invariant(lambda t: t.norm(dim=-2), x)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda t: t.sum(dim=-2), x)
    # positions as row vectors, axis=-1
    pos = torch.randn(5, 3, dtype=torch.float64)
    assert_equivariant(lambda p: p - p.mean(0), pos, axis=-1)


def test_apply_group_with_scalars():
    U = haar_unitary(2)
    x = torch.randn(3, 4, 5, dtype=torch.complex128)
    y = apply_group(U, x, num_scalars=2)
    torch.testing.assert_close(y[:, 2:], x[:, 2:])
    torch.testing.assert_close(y[:, :2], U @ x[:, :2])
    with pytest.raises(ValueError, match="entries"):
        apply_group(U, x)


def test_permutations():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    z = torch.tensor([1, 2, 1, 1, 1, 2, 2])
    for _ in range(20):
        perm = random_permutation(7, batch=batch, groups=z)
        assert sorted(perm.tolist()) == list(range(7))
        assert torch.equal(batch[perm], batch)
        assert torch.equal(z[perm], z)
    x = torch.randn(7, 3, dtype=torch.float64)
    assert_permutation_equivariant(lambda t: 3 * t, x)
    assert_permutation_equivariant(lambda t: t.sum(0), x, invariant_outputs=True)
    with pytest.raises(AssertionError, match="permutation"):
        assert_permutation_equivariant(lambda t: t.cumsum(0), x)


def test_tolerance_table():
    assert tolerance(torch.float64) < tolerance(torch.float32)
    with pytest.raises(ValueError):
        tolerance(torch.int64)
