r"""Crystal structures: the fcc lattice, as free clusters and as periodic boxes.

Every fcc structure of uenn-geo is built here, from one enumeration of the lattice
(:func:`fcc_lattice`):

.. math::
    \mathbf{r} = a\,(\mathbf{n} + \mathbf{b}), \qquad \mathbf{n} \in \mathbb{Z}^3,\
    \mathbf{b} \in \{(0,0,0), (0,\tfrac12,\tfrac12), (\tfrac12,0,\tfrac12),
    (\tfrac12,\tfrac12,0)\}

with the cubic lattice constant :math:`a = \sqrt{2}\, d_{\mathrm{nn}}` (:math:`d_{\mathrm{nn}}`
the nearest-neighbour distance), cells enumerated in C order (the last axis fastest) and the
four basis sites of a cell consecutive.

* :func:`fcc_sites`: the :math:`N` sites closest to a point, the free clusters of
  :class:`~uenn_geo.data.LJClusters` (Ma & Chan, sec. 4, for the 4-atom case);
* :func:`fcc_box`: :math:`a \times b \times c` conventional cells in a periodic box;
* :func:`argon_fcc`: a periodic argon box at a given mass density (Rahman's liquid by
  default), atoms displaced at random: the boxes of ``uenn-geo bench`` and of
  ``examples/liquid_argon.py``.

Units: Angstrom; densities in g/cm\ :sup:`3`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from uenn_geo.constants import ARGON_MASS, ARGON_NN_DISTANCE, AVOGADRO, RAHMAN_DENSITY

__all__ = ["FCC_BASIS", "fcc_lattice", "fcc_sites", "fcc_box", "argon_fcc", "box_cells"]

#: The four sites of the conventional fcc cell, in units of the lattice constant.
FCC_BASIS = ((0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0))


def fcc_lattice(ranges: Sequence[Tensor], lattice_constant: float) -> Tensor:
    r"""The fcc sites :math:`a (\mathbf{n} + \mathbf{b})` of the cells :math:`\mathbf{n}` in
    the product of ``ranges`` (three 1-d tensors of cell indices), :obj:`(4 C, 3)`.

    Cells in C order (``torch.meshgrid(..., indexing="ij")``), the basis sites of
    :data:`FCC_BASIS` consecutive within a cell; dtype that of ``ranges``.
    """
    cells = torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=-1).reshape(-1, 1, 3)
    basis = torch.tensor(FCC_BASIS, dtype=cells.dtype, device=cells.device)
    return ((cells + basis) * lattice_constant).reshape(-1, 3)


def fcc_sites(
    num_atoms: int,
    nn_distance: float = ARGON_NN_DISTANCE,
    center: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    r"""The :obj:`num_atoms` sites of an fcc lattice closest to a point.

    The lattice of the module docstring (a site at the origin), sorted by distance to
    :obj:`center`. Ties, which only occur for special centres such as the origin, are broken
    by the fixed enumeration order of :func:`fcc_lattice`, so the result is deterministic.

    Args:
        num_atoms (int): Number of sites :math:`N \ge 1`.
        nn_distance (float, optional): Nearest-neighbour distance :math:`d_{\mathrm{nn}}` in
            Angstrom. (default: :obj:`ARGON_NN_DISTANCE`)
        center (torch.Tensor, optional): Points to gather around, :math:`(3)` or :math:`(B, 3)`
            in Angstrom. (default: the origin)
        dtype (torch.dtype, optional): Floating dtype. (default: :obj:`torch.float64`)

    Shapes:
        :math:`(N, 3)`, or :math:`(B, N, 3)` for :math:`B` centres

    Example:
        >>> sites = fcc_sites(13)  # the centred cuboctahedron
        >>> bool(sites[0].eq(0).all()), round(sites[1:].norm(dim=-1).max().item(), 6)
        (True, 3.816371)
    """
    if num_atoms < 1:
        raise ValueError(f"Expected num_atoms >= 1, got {num_atoms}")
    if not nn_distance > 0:
        raise ValueError(f"Expected nn_distance > 0 (Angstrom), got {nn_distance}")
    a = math.sqrt(2.0) * nn_distance
    if center is None:
        center = torch.zeros(3, dtype=dtype)
    center = torch.as_tensor(center, dtype=dtype)
    if center.shape[-1:] != (3,) or center.dim() > 2:
        raise ValueError(f"Expected center of shape (3,) or (B, 3), got {tuple(center.shape)}")
    offset = torch.floor(center / a) * a  # lattice translation taking the centre into [0, a)^3
    local = (center - offset).unsqueeze(-2)
    # Cells -k..k span [-k a, (k + 1) a]^3, which holds every site closer than k a to a point
    # of [0, a)^3: the choice is exact once the N-th distance is below k a.
    k = math.ceil(0.5 * num_atoms ** (1.0 / 3.0)) + 1
    while True:
        r = torch.arange(-k, k + 1, dtype=dtype)
        sites = fcc_lattice((r, r, r), a)
        dist = (sites - local).norm(dim=-1)
        order = torch.argsort(dist, dim=-1, stable=True)[..., :num_atoms]
        if bool((dist.gather(-1, order[..., -1:]) < k * a).all()):
            break
        k += 1
    return sites[order] + offset.unsqueeze(-2)


def fcc_box(
    cells: Sequence[int], lattice_constant: float, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    r"""A periodic box of ``cells`` :math:`= (a, b, c)` conventional fcc cells.

    Args:
        cells: cells along the three axes.
        lattice_constant (float): edge :math:`\ell` of the cubic cell in Angstrom.
        dtype (torch.dtype): floating dtype (default: :obj:`torch.float64`).

    Returns:
        ``(pos, cell)``: positions :obj:`(4 a b c, 3)` (:func:`fcc_lattice` order) and the
        orthorhombic cell :obj:`(3, 3)` (rows are the lattice vectors), in Angstrom.
    """
    if len(cells) != 3 or any(int(n) < 1 for n in cells):
        raise ValueError(f"cells must be three integers >= 1, got {tuple(cells)}")
    if not lattice_constant > 0:
        raise ValueError(f"lattice_constant must be > 0 (Angstrom), got {lattice_constant}")
    pos = fcc_lattice([torch.arange(int(n), dtype=dtype) for n in cells], lattice_constant)
    cell = torch.diag(torch.tensor([float(n) for n in cells], dtype=dtype) * lattice_constant)
    return pos, cell


def box_cells(num_cells: int) -> tuple[int, int, int]:
    """The most cubic ``a <= b <= c`` with ``a * b * c == num_cells``."""
    best = (1, 1, num_cells)
    for a in range(1, round(num_cells ** (1 / 3)) + 2):
        if num_cells % a:
            continue
        for b in range(a, math.isqrt(num_cells // a) + 1):
            if (num_cells // a) % b == 0:
                c = num_cells // (a * b)
                if c / a < best[2] / best[0]:
                    best = (a, b, c)
    return best


def argon_fcc(
    num_atoms: int,
    density: float = RAHMAN_DENSITY,
    displacement: float = 0.05,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""A periodic fcc box of argon at the given density, atoms displaced at random.

    The box holds :math:`a \times b \times c` conventional fcc cells (:func:`fcc_box`, the
    most cubic factorisation of :math:`N / 4`, :func:`box_cells`) of edge
    :math:`\ell = (4 / n)^{1/3}`, with number density :math:`n = \rho N_A / M_{\mathrm{Ar}}`;
    each coordinate is displaced by a normal random number of standard deviation
    ``displacement``.

    Args:
        num_atoms (int): :math:`N`, a multiple of 4 (864 = 4 * 6^3, 10,976 = 4 * 14^3, ...).
        density (float): mass density in g/cm^3 (default: :obj:`1.374`, Rahman 1964).
        displacement (float): standard deviation of the displacements in Angstrom
            (default: :obj:`0.05`; :obj:`0` for the perfect lattice).
        seed (int): seed of the displacements (default: :obj:`0`).

    Returns:
        ``(pos, cell)``: positions :obj:`(N, 3)` and cell :obj:`(3, 3)` (rows are the lattice
        vectors) in Angstrom, float64.
    """
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, int) or num_atoms < 4:
        raise ValueError(f"num_atoms must be an int >= 4, got {num_atoms!r}")
    if num_atoms % 4:
        raise ValueError(f"an fcc box holds a multiple of 4 atoms, got num_atoms={num_atoms}")
    if not density > 0:
        raise ValueError(f"density must be > 0 g/cm^3, got {density}")
    if not displacement >= 0:
        raise ValueError(f"displacement must be >= 0 (Angstrom), got {displacement}")
    number_density = density * AVOGADRO / ARGON_MASS * 1e-24  # atoms per Angstrom^3
    pos, cell = fcc_box(box_cells(num_atoms // 4), (4.0 / number_density) ** (1.0 / 3.0))
    if displacement:
        generator = torch.Generator().manual_seed(seed)
        pos = pos + displacement * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
    return pos, cell
