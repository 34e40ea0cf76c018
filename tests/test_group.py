import torch

from uenn_geo.group import random_orthogonal, random_rotations

F64 = torch.float64


def test_random_rotations_are_proper_rotations():
    r = random_rotations(50, torch.Generator().manual_seed(0), F64)
    eye = torch.eye(3, dtype=F64).expand(50, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50, dtype=F64), atol=1e-12)
    assert r.std(dim=0).min() > 0.3  # spread over the group, not one matrix


def test_batched_orthogonal_with_and_without_reflection():
    gen = torch.Generator().manual_seed(1)
    q = random_orthogonal(3, dtype=F64, generator=gen, num=40)
    assert q.shape == (40, 3, 3)
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(3, dtype=F64).expand(40, 3, 3))
    det = torch.linalg.det(q)
    assert bool((det > 0).any()) and bool((det < 0).any())  # both components of O(3)
    flipped = random_orthogonal(3, dtype=F64, generator=gen, num=40, reflection=True)
    assert torch.allclose(torch.linalg.det(flipped), -torch.ones(40, dtype=F64))
    one = random_orthogonal(4, dtype=F64, reflection=False)
    assert one.shape == (4, 4) and torch.linalg.det(one) > 0
