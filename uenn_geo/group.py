r"""Random elements of the symmetry groups: :math:`U(n)`, :math:`O(n)`, :math:`SO(3)` and
permutations. :mod:`uenn_geo.testing` uses them to check equivariance; the data sets use them
to rotate structures.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "haar_unitary",
    "random_orthogonal",
    "random_rotations",
    "random_group_element",
    "random_permutation",
]


def haar_unitary(
    n: int,
    dtype: torch.dtype = torch.complex128,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""A Haar-random unitary :math:`U \in U(n)` (Mezzadri 2007).

    QR decomposition of a complex Gaussian matrix, with the phases of :math:`R`'s diagonal
    moved into :math:`Q` so that the distribution is exactly Haar. Computed in complex128 and
    cast to ``dtype`` (which must be complex).
    """
    if not dtype.is_complex:
        raise ValueError(f"haar_unitary needs a complex dtype, got {dtype}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z = torch.randn(n, n, dtype=torch.complex128, generator=generator)
    q, r = torch.linalg.qr(z)
    d = torch.diagonal(r)
    q = q * (d / d.abs()).unsqueeze(0)
    return q.to(dtype=dtype, device=device)


def random_orthogonal(
    n: int,
    dtype: torch.dtype = torch.float64,
    reflection: bool | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    num: int | None = None,
) -> Tensor:
    r"""A random orthogonal :math:`Q \in O(n)`, Haar-distributed (QR of a Gaussian matrix).

    Args:
        reflection (bool, optional): :obj:`True` forces :math:`\det Q = -1` (an improper
            rotation), :obj:`False` forces :math:`\det Q = +1`; :obj:`None` leaves it random
            (default: :obj:`None`).
        num (int, optional): draw ``num`` independent matrices :obj:`(num, n, n)` at once, in
            ``dtype`` (default: one matrix :obj:`(n, n)`, drawn in float64).
    """
    if dtype.is_complex:
        raise ValueError(f"random_orthogonal needs a real dtype, got {dtype}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shape, draw = ((n, n), torch.float64) if num is None else ((num, n, n), dtype)
    q, r = torch.linalg.qr(torch.randn(*shape, dtype=draw, generator=generator))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if reflection is not None:
        flip = (torch.linalg.det(q) < 0) != reflection
        q[..., :, 0] = torch.where(flip.unsqueeze(-1), -q[..., :, 0], q[..., :, 0])
    return q.to(dtype=dtype, device=device)


def random_rotations(
    num: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""``num`` Haar-random proper rotations :math:`R \in SO(3)` :obj:`(num, 3, 3)`, from
    normalised Gaussian quaternions."""
    q = torch.randn(num, 4, generator=generator, dtype=dtype)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def random_group_element(
    n: int,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A Haar-random unitary for a complex ``dtype``, a random orthogonal matrix otherwise."""
    if dtype.is_complex:
        return haar_unitary(n, dtype=dtype, generator=generator, device=device)
    return random_orthogonal(n, dtype=dtype, generator=generator, device=device)


def random_permutation(
    num: int,
    batch: Tensor | None = None,
    groups: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random permutation of ``range(num)`` that stays within each graph and each group.

    Args:
        batch (Tensor, optional): graph index per item; items never leave their graph.
        groups (Tensor, optional): labels (e.g. species); items only swap with equal labels.

    Returns:
        ``perm`` such that ``x[perm]`` is the permuted input.
    """
    key = torch.zeros(num, dtype=torch.long)
    if batch is not None:
        key = key * (int(batch.max()) + 1 if batch.numel() else 1) + batch.long().cpu()
    if groups is not None:
        g = groups.long().cpu()
        g = g - g.min() if g.numel() else g
        key = key * (int(g.max()) + 1 if g.numel() else 1) + g
    rand = torch.rand(num, generator=generator, dtype=torch.float64)
    # Sorting by (key, random) shuffles within each key; put the shuffled items back into the
    # original slots of that key.
    order = torch.argsort(key * 2.0 + rand, stable=True)
    slots = torch.argsort(key, stable=True)
    perm = torch.empty(num, dtype=torch.long)
    perm[slots] = order
    return perm
