r"""Lennard-Jones reference potential for argon (section 4 of the paper).

Units: energies in eV, lengths in Angstrom, forces in eV/Angstrom, masses in u.

Three entry points share one pair kernel:

* :func:`lennard_jones` with dense positions ``(B, N, 3)`` (all pairs of each configuration),
* :func:`lennard_jones` with flat positions ``(N, 3)`` and a PyG ``batch`` vector (all pairs
  within each graph, graphs of different sizes),
* :func:`lennard_jones_pairs` with a given neighbour pair list (periodic boxes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from uenn_geo.constants import ARGON_EPSILON, ARGON_MASS, ARGON_SIGMA, ARGON_Z

__all__ = [
    "ARGON_EPSILON",
    "ARGON_SIGMA",
    "ARGON_MASS",
    "ARGON_Z",
    "lennard_jones",
    "lennard_jones_pairs",
]


def _check_params(epsilon: float, sigma: float, cutoff: float | None) -> None:
    if not float(sigma) > 0.0:
        raise ValueError(f"Expected sigma > 0 (Angstrom), got {sigma}")
    if not float(epsilon) >= 0.0:
        raise ValueError(f"Expected epsilon >= 0 (eV), got {epsilon}")
    if cutoff is not None and not float(cutoff) > 0.0:
        raise ValueError(f"Expected cutoff > 0 (Angstrom) or None, got {cutoff}")


def _check_pos(pos: Tensor) -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"Expected pos to be a torch.Tensor, got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise TypeError(f"Expected pos of a real floating dtype, got {pos.dtype}")
    if pos.shape[-1:] != (3,):
        raise ValueError(f"Expected pos of shape (N, 3) or (B, N, 3), got {tuple(pos.shape)}")


def _pair_terms(
    r2: Tensor, epsilon: float, sigma: float, cutoff: float | None
) -> tuple[Tensor, Tensor]:
    r"""Pair energies :math:`U(r)` and :math:`g = U'(r)/r` from squared distances.

    The force on atom :math:`i` from the pair :math:`(i, j)` is :math:`g\,\mathbf{d}_{ij}` with
    :math:`\mathbf{d}_{ij} = \mathbf{r}_j - \mathbf{r}_i`; the force on :math:`j` is the opposite.
    """
    s2 = sigma * sigma / r2
    c6 = s2 * s2 * s2
    c12 = c6 * c6
    energy = 4.0 * epsilon * (c12 - c6)
    g = -24.0 * epsilon * (2.0 * c12 - c6) / r2
    if cutoff is not None:
        rc = float(cutoff)
        sc6 = (sigma / rc) ** 6
        e_c = 4.0 * epsilon * (sc6 * sc6 - sc6)  # U(r_c)
        de_c = -24.0 * epsilon * (2.0 * sc6 * sc6 - sc6) / rc  # U'(r_c)
        r = r2.sqrt()
        inside = r2 < rc * rc
        zero = torch.zeros((), dtype=r2.dtype, device=r2.device)
        energy = torch.where(inside, energy - e_c - (r - rc) * de_c, zero)
        g = torch.where(inside, g - de_c / r, zero)
    return energy, g


def _raise_overlap(r2: Tensor, describe) -> None:
    zero = r2 == 0
    if bool(zero.any()):
        bad = zero.nonzero()
        raise ValueError(f"Overlapping atoms (r = 0): {describe(bad[0].tolist())}")


def lennard_jones(
    pos: Tensor,
    epsilon: float = ARGON_EPSILON,
    sigma: float = ARGON_SIGMA,
    cutoff: float | None = None,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    check: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Lennard-Jones energy and forces over all pairs of each configuration.

    .. math::
        U = \sum_{i<j} 4\epsilon\left[\left(\frac{r_0}{r_{ij}}\right)^{12}
            - \left(\frac{r_0}{r_{ij}}\right)^{6}\right], \qquad
        \mathbf{F}_i = -\frac{\partial U}{\partial \mathbf{r}_i}

    as in section 4 of the paper (argon: :math:`\epsilon/k_B = 120` K, :math:`r_0 = 3.4`
    Angstrom, no cutoff). With a ``cutoff`` :math:`r_c` the shifted-force form is used,

    .. math::
        U_{\mathrm{sf}}(r) = U(r) - U(r_c) - (r - r_c)\,U'(r_c) \quad (r < r_c),
        \qquad U_{\mathrm{sf}}(r) = 0 \quad (r \ge r_c),

    so that both the pair energy and the pair force go continuously to zero at :math:`r_c`.

    Two input forms are accepted. Dense positions ``(B, N, 3)`` give one energy per
    configuration. Flat positions ``(N, 3)`` with an optional PyG ``batch`` vector (sorted,
    graphs may have different sizes) give one energy per graph; pairs are built vectorised
    by padding to the largest graph, so memory grows as ``num_graphs * max_nodes**2``: use
    :func:`lennard_jones_pairs` with a neighbour list for large systems.

    Computation is done in the dtype of :obj:`pos` (float64 recommended).

    Args:
        pos (torch.Tensor): Positions in Angstrom.
        epsilon (float, optional): Well depth in eV. (default: :obj:`ARGON_EPSILON`)
        sigma (float, optional): Length :math:`r_0` in Angstrom. (default: :obj:`ARGON_SIGMA`)
        cutoff (float, optional): Shifted-force cutoff in Angstrom, :obj:`None` for the bare
            potential. (default: :obj:`None`)
        batch (torch.Tensor, optional): Graph index of each atom for flat :obj:`pos`.
            (default: :obj:`None`, one graph)
        num_graphs (int, optional): Number of graphs for flat :obj:`pos`.
            (default: :obj:`batch.max() + 1`)
        check (bool, optional): Raise a :class:`ValueError` naming the pair if two distinct
            atoms coincide (costs one device synchronisation). (default: :obj:`True`)

    Returns:
        (torch.Tensor, torch.Tensor): energy in eV and forces in eV/Angstrom.

    Shapes:
        - dense: :math:`(B, N, 3) \to (B), (B, N, 3)`
        - flat: :math:`(N, 3), (N) \to (G), (N, 3)`

    Example:
        >>> pos = torch.tensor([[[0.0, 0.0, 0.0], [2 ** (1 / 6) * 3.4, 0.0, 0.0]]],
        ...                    dtype=torch.float64)
        >>> energy, forces = lennard_jones(pos)
        >>> round(energy.item() / ARGON_EPSILON, 12)
        -1.0
    """
    _check_pos(pos)
    _check_params(epsilon, sigma, cutoff)
    if pos.dim() == 3:
        if batch is not None:
            raise ValueError(
                f"batch must be None for dense pos of shape (B, N, 3), got pos of shape "
                f"{tuple(pos.shape)} and batch of shape {tuple(batch.shape)}"
            )
        return _lennard_jones_dense(pos, epsilon, sigma, cutoff, check)
    if pos.dim() == 2:
        return _lennard_jones_flat(pos, batch, num_graphs, epsilon, sigma, cutoff, check)
    raise ValueError(f"Expected pos of shape (N, 3) or (B, N, 3), got {tuple(pos.shape)}")


def _lennard_jones_dense(
    pos: Tensor, epsilon: float, sigma: float, cutoff: float | None, check: bool
) -> tuple[Tensor, Tensor]:
    num_atoms = pos.shape[1]
    i, j = torch.triu_indices(num_atoms, num_atoms, offset=1, device=pos.device)
    d = pos[:, j] - pos[:, i]  # (B, P, 3)
    r2 = (d * d).sum(-1)
    if check:
        _raise_overlap(
            r2, lambda b: f"atoms {i[b[1]].item()} and {j[b[1]].item()} of configuration {b[0]}"
        )
    energy, g = _pair_terms(r2, epsilon, sigma, cutoff)
    f = g.unsqueeze(-1) * d  # force on i from j
    forces = torch.zeros_like(pos)
    forces.index_add_(1, i, f)
    forces.index_add_(1, j, -f)
    return energy.sum(-1), forces


def _lennard_jones_flat(
    pos: Tensor,
    batch: Tensor | None,
    num_graphs: int | None,
    epsilon: float,
    sigma: float,
    cutoff: float | None,
    check: bool,
) -> tuple[Tensor, Tensor]:
    num_nodes = pos.shape[0]
    if batch is None:
        if num_graphs not in (None, 1):
            raise ValueError(f"Expected num_graphs 1 or None without batch, got {num_graphs}")
        energy, forces = _lennard_jones_dense(pos.unsqueeze(0), epsilon, sigma, cutoff, check)
        return energy, forces.squeeze(0)
    if batch.shape != (num_nodes,) or batch.dtype != torch.long:
        raise ValueError(
            f"Expected batch of shape ({num_nodes},) and dtype torch.int64, got shape "
            f"{tuple(batch.shape)} and dtype {batch.dtype}"
        )
    if num_nodes > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("Expected a sorted batch vector (PyG convention)")
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_nodes > 0 else 0
    from torch_geometric.utils import to_dense_batch

    node = torch.arange(num_nodes, device=pos.device)
    dense, mask = to_dense_batch(node, batch, fill_value=-1, batch_size=num_graphs)
    max_nodes = dense.shape[1]
    a, b = torch.triu_indices(max_nodes, max_nodes, offset=1, device=pos.device)
    valid = mask[:, a] & mask[:, b]
    i, j = dense[:, a][valid], dense[:, b][valid]
    d = pos[j] - pos[i]
    r2 = (d * d).sum(-1)
    if check:
        _raise_overlap(
            r2,
            lambda k: (
                f"atoms {i[k[0]].item()} and {j[k[0]].item()} of graph {batch[i[k[0]]].item()}"
            ),
        )
    pair_energy, g = _pair_terms(r2, epsilon, sigma, cutoff)
    f = g.unsqueeze(-1) * d
    forces = torch.zeros_like(pos)
    forces.index_add_(0, i, f)
    forces.index_add_(0, j, -f)
    energy = pos.new_zeros(num_graphs).index_add_(0, batch[i], pair_energy)
    return energy, forces


def lennard_jones_pairs(
    pos: Tensor,
    edge_index: Tensor,
    shifts: Tensor | None = None,
    cell: Tensor | None = None,
    batch: Tensor | None = None,
    num_graphs: int | None = None,
    epsilon: float = ARGON_EPSILON,
    sigma: float = ARGON_SIGMA,
    cutoff: float | None = None,
    symmetric: bool = True,
    check: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Lennard-Jones energy and forces from a neighbour pair list (periodic systems).

    .. math::
        \mathbf{d}_{ij} = \mathbf{r}_j - \mathbf{r}_i + \mathbf{s}_{ij}, \qquad
        U = \sum_{(i, j)} w\, U(|\mathbf{d}_{ij}|), \qquad
        \mathbf{F}_i = -\frac{\partial U}{\partial \mathbf{r}_i}

    over the edges :math:`i \to j` of :obj:`edge_index`, with :math:`w = 1/2` when the list is
    ``symmetric`` (every edge :math:`i \to j` also appears as :math:`j \to i` with the opposite
    shift, as ASE's and vesin's full lists do, so each unordered pair is counted once) and
    :math:`w = 1` for a half list (each unordered pair listed once). In the symmetric case each
    edge contributes the force on its source atom only; the reverse edge gives the force on the
    other atom, so a list that is not truly symmetric gives wrong forces.

    No distance cutoff is applied beyond the list itself when :obj:`cutoff` is :obj:`None`
    (a list built with radius :math:`r_c` then gives the truncated potential, whose energy is
    discontinuous at :math:`r_c`); with :obj:`cutoff` the shifted-force form of
    :func:`lennard_jones` is used and edges beyond it contribute nothing.

    Units: Angstrom, eV, eV/Angstrom. Computation is done in the dtype of :obj:`pos`.

    Args:
        pos (torch.Tensor): Positions in Angstrom.
        edge_index (torch.Tensor): Source and target atom of each edge.
        shifts (torch.Tensor, optional): Periodic shift of each edge: Cartesian vectors
            in Angstrom, or integer cell shifts when :obj:`cell` is given. (default: :obj:`None`)
        cell (torch.Tensor, optional): Cell vectors as rows (ASE convention), one cell or one per
            graph; the Cartesian shift is :math:`\mathbf{s}_{ij} = S_{ij} \cdot \mathrm{cell}`.
            (default: :obj:`None`)
        batch (torch.Tensor, optional): Graph index of each atom. (default: :obj:`None`)
        num_graphs (int, optional): Number of graphs. (default: :obj:`batch.max() + 1`)
        epsilon (float, optional): Well depth in eV. (default: :obj:`ARGON_EPSILON`)
        sigma (float, optional): Length :math:`r_0` in Angstrom. (default: :obj:`ARGON_SIGMA`)
        cutoff (float, optional): Shifted-force cutoff in Angstrom. (default: :obj:`None`)
        symmetric (bool, optional): Whether the list holds both directions of every pair.
            (default: :obj:`True`)
        check (bool, optional): Raise a :class:`ValueError` naming the edge if an edge has
            zero length (costs one device synchronisation). (default: :obj:`True`)

    Returns:
        (torch.Tensor, torch.Tensor): energy per graph in eV and forces in eV/Angstrom.

    Shapes:
        - **input:** pos :math:`(N, 3)`, edge_index :math:`(2, E)`, shifts :math:`(E, 3)`,
          cell :math:`(3, 3)` or :math:`(G, 3, 3)`, batch :math:`(N)`
        - **output:** energy :math:`(G)` (:math:`G = 1` without batch), forces :math:`(N, 3)`
    """
    _check_pos(pos)
    _check_params(epsilon, sigma, cutoff)
    if pos.dim() != 2:
        raise ValueError(f"Expected pos of shape (N, 3), got {tuple(pos.shape)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"Expected edge_index of shape (2, E), got {tuple(edge_index.shape)}")
    num_edges = edge_index.shape[1]
    i, j = edge_index[0], edge_index[1]
    d = pos[j] - pos[i]
    if shifts is not None:
        if shifts.shape != (num_edges, 3):
            raise ValueError(
                f"Expected shifts of shape ({num_edges}, 3), got {tuple(shifts.shape)}"
            )
        shifts = shifts.to(pos.dtype)
        if cell is not None:
            cell = cell.to(pos.dtype)
            if cell.shape == (3, 3):
                shifts = shifts @ cell
            elif cell.dim() == 3 and cell.shape[1:] == (3, 3):
                if batch is None:
                    raise ValueError("A cell per graph, shape (G, 3, 3), needs batch")
                shifts = torch.einsum("ek,ekl->el", shifts, cell[batch[i]])
            else:
                raise ValueError(f"Expected cell of shape (3, 3) or (G, 3, 3), got {cell.shape}")
        d = d + shifts
    elif cell is not None:
        raise ValueError("cell was given without shifts")
    r2 = (d * d).sum(-1)
    if check:
        _raise_overlap(
            r2, lambda k: f"edge {k[0]} between atoms {i[k[0]].item()} and {j[k[0]].item()}"
        )
    pair_energy, g = _pair_terms(r2, epsilon, sigma, cutoff)
    f = g.unsqueeze(-1) * d
    forces = torch.zeros_like(pos).index_add_(0, i, f)
    if symmetric:
        pair_energy = 0.5 * pair_energy
    else:
        forces.index_add_(0, j, -f)
    if batch is None:
        if num_graphs not in (None, 1):
            raise ValueError(f"Expected num_graphs 1 or None without batch, got {num_graphs}")
        return pair_energy.sum().reshape(1), forces
    if batch.shape != (pos.shape[0],):
        raise ValueError(f"Expected batch of shape ({pos.shape[0]},), got {tuple(batch.shape)}")
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 0
    energy = pos.new_zeros(num_graphs).index_add_(0, batch[i], pair_energy)
    return energy, forces
