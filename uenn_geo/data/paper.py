r"""The paper's data set: random 4-atom argon clusters with exact Lennard-Jones forces.

Ma & Chan, sec. 4: 100,000 configurations of 4 argon atoms, each coordinate drawn from
:math:`\mathcal{N}(0, 3\,\mathrm{\AA})`, a configuration rejected (and redrawn) if any pair is
closer than :math:`r_{\min} = 2.8` Angstrom; targets are the exact Lennard-Jones forces; split
60 % / 20 % / 20 % into training, validation and test sets.

Units: positions in Angstrom, energies in eV, forces in eV/Angstrom.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from uenn_geo.data.lj import ARGON_Z, lennard_jones
from uenn_geo.files import atomic_save

__all__ = [
    "sample_paper_configurations",
    "split_indices",
    "PaperArgon",
    "paper_md_initial_positions",
]


def _min_pair_distance(pos: Tensor) -> Tensor:
    i, j = torch.triu_indices(pos.shape[-2], pos.shape[-2], offset=1, device=pos.device)
    return (pos[..., j, :] - pos[..., i, :]).norm(dim=-1).amin(dim=-1)


def sample_paper_configurations(
    num: int,
    num_atoms: int = 4,
    sigma: float = 3.0,
    r_min: float = 2.8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    max_rounds: int = 1000,
) -> Tensor:
    r"""Random atom clusters by rejection sampling (Ma & Chan, sec. 4).

    .. math::
        r_{i\alpha} \sim \mathcal{N}(0, \sigma^2), \qquad
        \text{accept iff } \min_{i<j} |\mathbf{r}_j - \mathbf{r}_i| \ge r_{\min}

    Whole configurations are drawn in vectorised batches, the accepted ones are kept in the
    order drawn, and the next batch is sized from the acceptance rate seen so far, until
    :obj:`num` are accepted. With the paper's parameters (4 atoms, :math:`\sigma = 3`,
    :math:`r_{\min} = 2.8` Angstrom) about two thirds of draws are accepted; 100,000
    configurations take well under a second. The result is fully
    determined by the state of :obj:`generator`.

    Args:
        num (int): Number of configurations.
        num_atoms (int, optional): Atoms per configuration. (default: :obj:`4`)
        sigma (float, optional): Standard deviation of each coordinate in Angstrom.
            (default: :obj:`3.0`)
        r_min (float, optional): Smallest allowed pair distance in Angstrom.
            (default: :obj:`2.8`)
        generator (torch.Generator, optional): Random generator. (default: :obj:`None`)
        dtype (torch.dtype, optional): Floating dtype. (default: :obj:`torch.float64`)
        max_rounds (int, optional): Give up (:class:`ValueError`) after this many batches,
            which only happens when :obj:`r_min` is too large for :obj:`sigma`.
            (default: :obj:`1000`)

    Shapes:
        :math:`(\mathrm{num}, \mathrm{num\_atoms}, 3)`

    Example:
        >>> pos = sample_paper_configurations(10, generator=torch.Generator().manual_seed(0))
        >>> pos.shape
        torch.Size([10, 4, 3])
    """
    if num < 0:
        raise ValueError(f"Expected num >= 0, got {num}")
    if num_atoms < 1:
        raise ValueError(f"Expected num_atoms >= 1, got {num_atoms}")
    if not sigma > 0:
        raise ValueError(f"Expected sigma > 0 (Angstrom), got {sigma}")
    if not r_min >= 0:
        raise ValueError(f"Expected r_min >= 0 (Angstrom), got {r_min}")
    if not dtype.is_floating_point:
        raise TypeError(f"Expected a floating dtype, got {dtype}")
    device = generator.device if generator is not None else None
    accepted: list[Tensor] = []
    count, drawn, kept = 0, 0, 0
    for _ in range(max_rounds):
        if count >= num:
            break
        rate = max(kept / drawn, 0.01) if drawn else 0.5
        batch = max(int(1.1 * (num - count) / rate) + 16, 64)
        pos = torch.randn((batch, num_atoms, 3), generator=generator, dtype=dtype, device=device)
        pos = pos * sigma
        ok = (
            _min_pair_distance(pos) >= r_min
            if num_atoms > 1
            else torch.ones(batch, dtype=torch.bool, device=pos.device)
        )
        pos = pos[ok]
        drawn, kept = drawn + batch, kept + pos.shape[0]
        accepted.append(pos[: num - count])
        count += accepted[-1].shape[0]
    if count < num:
        raise ValueError(
            f"Only {count} of {num} configurations accepted after {max_rounds} batches "
            f"(acceptance {kept}/{drawn}); r_min={r_min} is too large for sigma={sigma}"
        )
    if not accepted:
        return torch.empty((0, num_atoms, 3), dtype=dtype, device=device)
    return torch.cat(accepted)


def split_indices(
    n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
) -> dict[str, Tensor]:
    r"""Deterministic random train/validation/test split of :obj:`n` items.

    Sizes are :math:`\mathrm{round}(0.6\,n)`, :math:`\mathrm{round}(0.2\,n)` and the rest, as in
    the paper; the permutation comes from a fresh generator seeded with :obj:`seed`.

    Args:
        n (int): Number of items.
        seed (int, optional): Seed of the permutation. (default: :obj:`0`)
        fractions (tuple, optional): Train, validation and test fractions.
            (default: :obj:`(0.6, 0.2, 0.2)`)

    Returns:
        dict: ``{"train": ..., "val": ..., "test": ...}`` with disjoint long index tensors.
    """
    if n < 0:
        raise ValueError(f"Expected n >= 0, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"Expected three non-negative fractions summing to 1, got {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    return {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val :],
    }


class PaperArgon(InMemoryDataset):
    r"""The paper's argon data set (Ma & Chan, sec. 4): 4-atom clusters with Lennard-Jones forces.

    Configurations come from :func:`sample_paper_configurations` with a generator seeded by
    :obj:`seed`; energies and forces from :func:`~uenn_geo.data.lj.lennard_jones` (argon,
    no cutoff) in float64. Each graph holds

    * ``pos`` :math:`(4, 3)`, Angstrom, float64,
    * ``forces`` :math:`(4, 3)`, eV/Angstrom, float64,
    * ``energy`` :math:`(1)`, eV, float64,
    * ``z`` :math:`(4)`, long, all 18 (argon).

    Float64 is kept because the forces are compared at the paper's precision
    (RMSD of about :math:`10^{-3}` eV/Angstrom, and far below for the reference itself).

    There are no raw files. The processed file name contains every parameter
    (e.g. ``paper_n100000_seed0_rmin2.8_sigma3.0.pt``), so changing one processes anew, and it
    is written atomically (temporary file, then :func:`os.replace`).

    Args:
        root (str, optional): Root directory. (default: :obj:`"datasets/paper_argon"`)
        num_configs (int, optional): Number of configurations. (default: :obj:`100_000`)
        seed (int, optional): Seed of the sampler and of :meth:`split`. (default: :obj:`0`)
        r_min (float, optional): Smallest pair distance in Angstrom. (default: :obj:`2.8`)
        sigma (float, optional): Standard deviation of each coordinate in Angstrom.
            (default: :obj:`3.0`)
        transform, pre_transform, pre_filter, log, force_reload: As in
            :class:`~torch_geometric.data.InMemoryDataset`.

    Example:
        >>> ds = PaperArgon(root, num_configs=500)  # doctest: +SKIP
        >>> train, val, test = ds.split()  # doctest: +SKIP
        >>> pos, forces = train.dense_tensors()  # (300, 4, 3) each  # doctest: +SKIP
    """

    num_atoms = 4

    def __init__(
        self,
        root: str = "datasets/paper_argon",
        num_configs: int = 100_000,
        seed: int = 0,
        r_min: float = 2.8,
        sigma: float = 3.0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        log: bool = True,
        force_reload: bool = False,
    ) -> None:
        if num_configs < 2:
            raise ValueError(f"Expected num_configs >= 2, got {num_configs}")
        self.num_configs = int(num_configs)
        self.seed = int(seed)
        self.r_min = float(r_min)
        self.sigma = float(sigma)
        super().__init__(root, transform, pre_transform, pre_filter, log, force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> str:
        return (
            f"paper_n{self.num_configs}_seed{self.seed}_rmin{self.r_min!r}_sigma{self.sigma!r}.pt"
        )

    def download(self) -> None:
        pass

    def process(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        pos = sample_paper_configurations(
            self.num_configs,
            num_atoms=self.num_atoms,
            sigma=self.sigma,
            r_min=self.r_min,
            generator=generator,
        )
        energy, forces = lennard_jones(pos)
        if self.pre_transform is None and self.pre_filter is None:
            n, a = self.num_configs, self.num_atoms
            data = Data(
                pos=pos.reshape(n * a, 3),
                forces=forces.reshape(n * a, 3),
                energy=energy,
                z=torch.full((n * a,), ARGON_Z, dtype=torch.long),
            )
            node_slice = torch.arange(0, n * a + 1, a)
            slices = {
                "pos": node_slice,
                "forces": node_slice,
                "energy": torch.arange(n + 1),
                "z": node_slice,
            }
        else:
            z = torch.full((self.num_atoms,), ARGON_Z, dtype=torch.long)
            data_list = [
                Data(pos=p, forces=f, energy=e.reshape(1), z=z.clone())
                for p, f, e in zip(pos, forces, energy, strict=True)
            ]
            if self.pre_filter is not None:
                data_list = [d for d in data_list if self.pre_filter(d)]
            if self.pre_transform is not None:
                data_list = [self.pre_transform(d) for d in data_list]
            data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__), self.processed_paths[0])

    def split(self, seed: int | None = None) -> tuple[PaperArgon, PaperArgon, PaperArgon]:
        r"""Train, validation and test subsets (60 / 20 / 20 %), from :func:`split_indices`.

        Args:
            seed (int, optional): Seed of the split. (default: the data set's :obj:`seed`)
        """
        idx = split_indices(len(self), self.seed if seed is None else seed)
        return self[idx["train"]], self[idx["val"]], self[idx["test"]]

    def dense_tensors(
        self, with_energy: bool = False
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        r"""Positions and forces of this (sub)set as dense tensors, without PyG collation.

        Transforms are not applied.

        Args:
            with_energy (bool, optional): Also return the energies. (default: :obj:`False`)

        Returns:
            ``(pos, forces)`` or ``(pos, forces, energy)``

        Shapes:
            pos :math:`(B, 4, 3)` in Angstrom, forces :math:`(B, 4, 3)` in eV/Angstrom,
            energy :math:`(B)` in eV
        """
        data = self._data
        num_graphs = self.slices["pos"].numel() - 1
        a = self.num_atoms
        if data.pos.shape != (num_graphs * a, 3):
            raise ValueError(
                f"dense_tensors needs {a} atoms per graph, got {data.pos.shape[0]} atoms in "
                f"{num_graphs} graphs"
            )
        pos = data.pos.view(num_graphs, a, 3)
        forces = data.forces.view(num_graphs, a, 3)
        energy = data.energy.view(num_graphs)
        if self._indices is not None:
            idx = torch.as_tensor(list(self.indices()), dtype=torch.long)
            pos, forces, energy = pos[idx], forces[idx], energy[idx]
        return (pos, forces, energy) if with_energy else (pos, forces)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({len(self)}, seed={self.seed}, r_min={self.r_min}, "
            f"sigma={self.sigma})"
        )


def paper_md_initial_positions(
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    r"""Initial positions of the paper's MD test (Ma & Chan, sec. 4), in Angstrom.

    Atoms at (3, 0, 0.1), (-3, -0.1, 0), (0.1, 2.5, 0) and (0, -2.5, -0.1).

    Shapes:
        :math:`(4, 3)`
    """
    return torch.tensor(
        [[3.0, 0.0, 0.1], [-3.0, -0.1, 0.0], [0.1, 2.5, 0.0], [0.0, -2.5, -0.1]],
        dtype=dtype,
        device=device,
    )
