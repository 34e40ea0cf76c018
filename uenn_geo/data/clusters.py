r"""Thermal argon clusters of many sizes with exact Lennard-Jones forces.

A data set beyond the paper's fixed 4-atom clusters (section 4): clusters of :math:`N` argon
atoms, :math:`N` drawn from a range, in configurations taken from short molecular-dynamics runs
at a few temperatures, with forces from the Lennard-Jones potential of section 4 (optionally
with the shifted-force cutoff of :func:`~uenn_geo.data.lj.lennard_jones`). Models trained on
small clusters can be tested on larger ones (a held-out set is just other parameters, e.g.
``LJClusters(root, min_atoms=56, max_atoms=79, seed=1)``).

Units: positions in Angstrom, energies in eV, forces in eV/Angstrom, time in fs, masses in u,
temperatures in K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from uenn_geo.constants import (
    ARGON_EPSILON,
    ARGON_MASS,
    ARGON_NN_DISTANCE,
    ARGON_SIGMA,
    ARGON_Z,
)
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import split_indices
from uenn_geo.data.structures import fcc_sites
from uenn_geo.dynamics import maxwell_boltzmann, temperature, velocity_verlet
from uenn_geo.files import atomic_save
from uenn_geo.group import random_rotations

# ``fcc_sites`` lives in uenn_geo.data.structures and is re-exported here.
__all__ = [
    "ARGON_NN_DISTANCE",
    "ClusterSample",
    "fcc_sites",
    "sample_lj_clusters",
    "LJClusters",
]

# The thermalisation half of a run rescales the velocities every this many steps.
_RESCALE_EVERY = 20
# Largest number of pairs (configurations times pairs per configuration) integrated in one
# batch: bigger batches fall out of the CPU caches and run slower per pair.
_MAX_BATCH_PAIRS = 60_000


def _pair_extremes(pos: Tensor) -> tuple[Tensor, Tensor]:
    r"""Smallest pair distance and largest nearest-neighbour distance of each cluster."""
    d = (pos.unsqueeze(-2) - pos.unsqueeze(-3)).norm(dim=-1)
    d.diagonal(dim1=-2, dim2=-1).fill_(math.inf)
    nearest = d.amin(dim=-1)
    return nearest.amin(dim=-1), nearest.amax(dim=-1)


def _lj_forces_gram(pos: Tensor, cutoff: float | None) -> Tensor:
    r"""Argon Lennard-Jones forces of dense clusters :math:`(B, N, 3)`, fast, for the MD only.

    :math:`\mathbf{F}_i = \sum_j g_{ij} (\mathbf{r}_j - \mathbf{r}_i)` with
    :math:`g = U'(r)/r` as in :func:`~uenn_geo.data.lj.lennard_jones` (same potential, same
    shifted-force cutoff), but with the squared distances from the Gram matrix,
    :math:`r_{ij}^2 = |\mathbf{r}_i|^2 + |\mathbf{r}_j|^2 - 2\,\mathbf{r}_i \cdot \mathbf{r}_j`,
    and the sum as a batched matrix product: several times faster than the pair-list form,
    at a relative error of about :math:`10^{-12}` from cancellation (harmless for generating
    configurations; the stored targets come from :func:`~uenn_geo.data.lj.lennard_jones`).
    """
    sq = (pos * pos).sum(-1)
    r2 = torch.baddbmm(sq[:, :, None] + sq[:, None, :], pos, pos.transpose(1, 2), alpha=-2.0)
    r2.diagonal(dim1=1, dim2=2).fill_(math.inf)  # no self pair: g = 0 on the diagonal
    inv = r2.reciprocal()
    c6 = inv.mul(ARGON_SIGMA**2).pow_(3)
    g = c6.mul(2.0).sub_(1.0).mul_(c6).mul_(inv).mul_(-24.0 * ARGON_EPSILON)
    if cutoff is not None:
        rc = float(cutoff)
        sc6 = (ARGON_SIGMA / rc) ** 6
        de_c = -24.0 * ARGON_EPSILON * (2.0 * sc6 * sc6 - sc6) / rc  # U'(r_c)
        g = torch.where(r2 < rc * rc, g - de_c * inv.sqrt(), 0.0)
    return torch.bmm(g, pos) - g.sum(-1, keepdim=True) * pos


class ClusterSample(NamedTuple):
    r"""Result of :func:`sample_lj_clusters`.

    Attributes:
        pos (list[torch.Tensor]): Positions of each configuration, :math:`(N_k, 3)`, Angstrom,
            centre of mass at the origin.
        temperature (torch.Tensor): Target temperature of each configuration in K,
            :math:`(\mathrm{num})`.
        num_rejected (int): Runs that ended with a close pair or an evaporated atom and were
            redone.
    """

    pos: list[Tensor]
    temperature: Tensor
    num_rejected: int


def sample_lj_clusters(
    num_configs: int,
    min_atoms: int = 3,
    max_atoms: int = 55,
    temperatures: Sequence[float] = (20.0, 40.0, 60.0),
    steps: int = 200,
    dt: float = 10.0,
    displacement: float = 0.1,
    r_min: float = 2.5,
    max_neighbor_distance: float = 8.0,
    cutoff: float | None = None,
    generator: torch.Generator | None = None,
    max_rounds: int = 20,
) -> ClusterSample:
    r"""Thermal argon cluster configurations from short Lennard-Jones MD runs.

    For each configuration :math:`k`:

    1. :math:`N_k` is drawn uniformly from ``[min_atoms, max_atoms]`` and :math:`T_k`
       uniformly from :obj:`temperatures`;
    2. the initial cluster is the :math:`N_k` sites of an fcc lattice with nearest-neighbour
       distance :math:`2^{1/6} r_0 = 3.82` Angstrom closest to a point drawn uniformly in a
       cubic cell (:func:`fcc_sites`; the random point varies the shape), rotated by a uniform
       random rotation, centred, and displaced by Gaussian noise of standard deviation
       :obj:`displacement` per coordinate;
    3. velocities are drawn from the Maxwell-Boltzmann distribution at :math:`T_k` without
       centre-of-mass motion (:func:`~uenn_geo.dynamics.maxwell_boltzmann`);
    4. velocity Verlet (:func:`~uenn_geo.dynamics.velocity_verlet`, time step :obj:`dt`) runs
       :obj:`steps` steps with the Lennard-Jones forces of section 4 (argon,
       :math:`\epsilon/k_B = 120` K, :math:`r_0 = 3.4` Angstrom; shifted-force with
       :obj:`cutoff` if given). During the first half the velocities are rescaled to
       :math:`T_k` every 20 steps, which removes the heat released as the lattice fragment
       relaxes; the second half is plain NVE. The final positions are the configuration;
    5. the configuration is rejected, and the run redone with fresh random draws (same
       :math:`N_k` and :math:`T_k`), if a pair is closer than :obj:`r_min` or some atom's
       nearest neighbour is farther than :obj:`max_neighbor_distance` (an evaporated atom);
       accepted positions are shifted to put the centre of mass at the origin.

    The configurations are therefore approximately canonical at :math:`T_k`: the final
    instantaneous temperatures average within a few K of :math:`T_k` and scatter by about
    :math:`T_k \sqrt{2 / (3 N_k - 3)}`, as canonical ones do. Small argon clusters melt at
    about 30-40 K, so 20 K gives solid-like and 40-60 K disordered, liquid-like clusters. In
    the 2 ps runs of the defaults about 3 % of the configurations end with an atom more than
    5 Angstrom from all others (an atom starting to evaporate); these are kept, and only runs
    with an atom farther than :obj:`max_neighbor_distance` from all others are redone (about
    0.1 %). The criteria do not depend on the cluster size, so a held-out set of larger
    clusters needs only other :obj:`min_atoms` and :obj:`max_atoms`.
    ``dt = 10`` fs is :math:`0.005\,\tau` with :math:`\tau = r_0 \sqrt{m/\epsilon} = 2.15`
    ps for argon; over the NVE half the total energy stays within :math:`10^{-3}\,\epsilon`
    per atom of its start (checked in the tests).

    Runs are batched: all pending configurations with the same :math:`N` are integrated
    together (in batches of at most about 60,000 pairs), with the same potential as
    :func:`~uenn_geo.data.lj.lennard_jones` evaluated through Gram matrices and batched matrix
    products, several times faster than the pair-list form. The result is fully determined by
    the state of :obj:`generator`.

    Args:
        num_configs (int): Number of configurations.
        min_atoms (int, optional): Smallest cluster, :math:`\ge 2`. (default: :obj:`3`)
        max_atoms (int, optional): Largest cluster. (default: :obj:`55`)
        temperatures (sequence of float, optional): Temperatures in K to draw from.
            (default: :obj:`(20.0, 40.0, 60.0)`)
        steps (int, optional): MD steps per configuration. (default: :obj:`200`)
        dt (float, optional): Time step in fs. (default: :obj:`10.0`)
        displacement (float, optional): Standard deviation of the initial random
            displacements in Angstrom. (default: :obj:`0.1`)
        r_min (float, optional): Smallest accepted pair distance in Angstrom.
            (default: :obj:`2.5`)
        max_neighbor_distance (float, optional): Largest accepted distance in Angstrom from an
            atom to its nearest neighbour. (default: :obj:`8.0`)
        cutoff (float, optional): Shifted-force cutoff in Angstrom, :obj:`None` for the bare
            potential. (default: :obj:`None`)
        generator (torch.Generator, optional): Random generator. (default: :obj:`None`)
        max_rounds (int, optional): Give up (:class:`ValueError`) if configurations are still
            rejected after this many rounds. (default: :obj:`20`)

    Returns:
        :class:`ClusterSample`: positions (float64, Angstrom), target temperatures (K) and the
        number of rejected runs.

    Example:
        >>> sample = sample_lj_clusters(4, max_atoms=8, steps=20,
        ...                             generator=torch.Generator().manual_seed(0))
        >>> [p.shape[0] for p in sample.pos]
        [5, 6, 8, 3]
    """
    temps = [float(t) for t in temperatures]
    _check_sampler_args(num_configs, min_atoms, max_atoms, temps, steps, dt, displacement)
    if not 0 <= r_min < max_neighbor_distance:
        raise ValueError(
            f"Expected 0 <= r_min < max_neighbor_distance (Angstrom), got r_min={r_min}, "
            f"max_neighbor_distance={max_neighbor_distance}"
        )
    dtype = torch.float64
    sizes = torch.randint(min_atoms, max_atoms + 1, (num_configs,), generator=generator)
    temp = torch.tensor(temps, dtype=dtype)[
        torch.randint(len(temps), (num_configs,), generator=generator)
    ]
    out: list[Tensor | None] = [None] * num_configs
    pending = torch.arange(num_configs)
    num_rejected = 0
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        rejected = []
        for n in torch.unique(sizes[pending]).tolist():
            index = pending[sizes[pending] == n]
            chunk = max(1, _MAX_BATCH_PAIRS // max(1, n * (n - 1) // 2))
            for part in index.split(chunk):
                pos = _run_batch(n, temp[part], steps, dt, displacement, cutoff, generator, dtype)
                closest, farthest = _pair_extremes(pos)
                ok = (closest >= r_min) & (farthest <= max_neighbor_distance)
                pos = pos - pos.mean(dim=-2, keepdim=True)
                for k, p, good in zip(part.tolist(), pos, ok.tolist(), strict=True):
                    if good:
                        out[k] = p
                rejected.append(part[~ok])
        pending = torch.cat(rejected)
        num_rejected += pending.numel()
    if pending.numel() > 0:
        raise ValueError(
            f"{pending.numel()} configurations still rejected after {max_rounds} rounds (a pair "
            f"closer than r_min={r_min} or an atom with no neighbour within "
            f"max_neighbor_distance={max_neighbor_distance} Angstrom); lower the temperatures "
            f"{temps} or the steps"
        )
    return ClusterSample(pos=out, temperature=temp, num_rejected=num_rejected)  # type: ignore[arg-type]


def _check_sampler_args(
    num_configs: int,
    min_atoms: int,
    max_atoms: int,
    temps: list[float],
    steps: int,
    dt: float,
    displacement: float,
) -> None:
    if num_configs < 0:
        raise ValueError(f"Expected num_configs >= 0, got {num_configs}")
    if not 2 <= min_atoms <= max_atoms:
        raise ValueError(
            f"Expected 2 <= min_atoms <= max_atoms, got min_atoms={min_atoms}, "
            f"max_atoms={max_atoms}"
        )
    if not temps or not all(math.isfinite(t) and t >= 0 for t in temps):
        raise ValueError(f"Expected a non-empty list of temperatures >= 0 (K), got {temps}")
    if steps < 0:
        raise ValueError(f"Expected steps >= 0, got {steps}")
    if not dt > 0:
        raise ValueError(f"Expected dt > 0 (fs), got {dt}")
    if not displacement >= 0:
        raise ValueError(f"Expected displacement >= 0 (Angstrom), got {displacement}")


def _run_batch(
    n: int,
    temp: Tensor,
    steps: int,
    dt: float,
    displacement: float,
    cutoff: float | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> Tensor:
    r"""Steps 2-4 of :func:`sample_lj_clusters` for a batch of clusters of :math:`n` atoms."""
    batch = temp.shape[0]
    a = math.sqrt(2.0) * ARGON_NN_DISTANCE
    center = torch.rand(batch, 3, generator=generator, dtype=dtype) * a
    pos = fcc_sites(n, center=center, dtype=dtype)
    pos = pos - pos.mean(dim=-2, keepdim=True)
    pos = pos @ random_rotations(batch, generator, dtype).transpose(-1, -2)
    pos = pos + displacement * torch.randn(pos.shape, generator=generator, dtype=dtype)
    masses = torch.full((n,), ARGON_MASS, dtype=dtype)
    vel = maxwell_boltzmann(masses, 1.0, num_samples=batch, generator=generator)
    vel = vel * temp.sqrt()[:, None, None]

    def force_fn(p: Tensor) -> Tensor:
        return _lj_forces_gram(p, cutoff)

    thermalize = steps // 2
    done = 0
    while done < steps:
        block = min(_RESCALE_EVERY, thermalize - done) if done < thermalize else steps - done
        traj = velocity_verlet(pos, vel, masses, force_fn, dt, block, record_every=block)
        pos, vel = traj.positions[-1], traj.velocities[-1]
        done += block
        if done <= thermalize:
            current = temperature(vel, masses)
            scale = torch.where(current > 0, temp / current.clamp_min(1e-30), 0.0).sqrt()
            vel = vel * scale[:, None, None]
    return pos


class LJClusters(InMemoryDataset):
    r"""Thermal argon clusters of varying size with exact Lennard-Jones energies and forces.

    Configurations come from :func:`sample_lj_clusters` (see there for the recipe: fcc
    fragments, uniform random rotation, short velocity-Verlet runs at temperatures drawn from
    :obj:`temperatures`, rejection of close pairs and evaporated atoms) with a generator seeded
    by :obj:`seed`; energies and forces from :func:`~uenn_geo.data.lj.lennard_jones` (argon,
    shifted-force if :obj:`cutoff` is given, else the bare potential), all in float64: the
    targets are exact, and float64 keeps them so for accuracy tests far below a model's error
    (cast with ``data.pos.float()`` or a transform for float32 models). Each graph holds

    * ``pos`` :math:`(N, 3)`, Angstrom, float64, centre of mass at the origin,
    * ``forces`` :math:`(N, 3)`, eV/Angstrom, float64,
    * ``energy`` :math:`(1)`, eV, float64,
    * ``z`` :math:`(N)`, long, all 18 (argon),
    * ``num_atoms`` :math:`(1)`, long, :math:`N`,
    * ``temperature`` :math:`(1)`, float64, the target temperature of its MD run in K.

    No edges are stored: the force models build their neighbour lists when a graph has no
    ``edge_index``. To store them, pass ``transform=RadiusGraph(r_cut)`` (built on access) or
    ``pre_transform=RadiusGraph(r_cut)`` (built once and saved) from
    :mod:`uenn_geo.neighbors`.

    With the defaults, 3,000 configurations take seconds to generate on one CPU thread; the
    processed file is about 5 MB and loads in milliseconds. A held-out set of larger clusters
    is the same class with other parameters, e.g.
    ``LJClusters(root, min_atoms=56, max_atoms=79, seed=1)``.

    There are no raw files. The processed file name contains every parameter (e.g.
    ``ljclusters_n3000_atoms3-55_T20.0-40.0-60.0_steps200_dt10.0_disp0.1_rmin2.5_nnmax8.0_cutNone_seed0.pt``),
    so changing one processes anew, and it is written atomically.

    Args:
        root (str, optional): Root directory. (default: :obj:`"datasets/lj_clusters"`)
        num_configs (int, optional): Number of configurations. (default: :obj:`3000`)
        min_atoms (int, optional): Smallest cluster. (default: :obj:`3`)
        max_atoms (int, optional): Largest cluster. (default: :obj:`55`)
        temperatures (sequence of float, optional): MD temperatures in K.
            (default: :obj:`(20.0, 40.0, 60.0)`)
        steps (int, optional): MD steps per configuration. (default: :obj:`200`)
        dt (float, optional): MD time step in fs. (default: :obj:`10.0`)
        displacement (float, optional): Initial random displacement in Angstrom.
            (default: :obj:`0.1`)
        r_min (float, optional): Smallest accepted pair distance in Angstrom.
            (default: :obj:`2.5`)
        max_neighbor_distance (float, optional): Largest accepted distance from an atom to its
            nearest neighbour in Angstrom. (default: :obj:`8.0`)
        cutoff (float, optional): Shifted-force cutoff in Angstrom for the MD and the targets,
            :obj:`None` for no cutoff. (default: :obj:`None`)
        seed (int, optional): Seed of the sampler and of :meth:`split`. (default: :obj:`0`)
        transform, pre_transform, pre_filter, log, force_reload: As in
            :class:`~torch_geometric.data.InMemoryDataset`.

    Example:
        >>> ds = LJClusters(root, num_configs=3000)  # doctest: +SKIP
        >>> train, val, test = ds.split()  # doctest: +SKIP
        >>> larger = LJClusters(root, num_configs=500, min_atoms=56, max_atoms=79, seed=1)
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        root: str = "datasets/lj_clusters",
        num_configs: int = 3000,
        min_atoms: int = 3,
        max_atoms: int = 55,
        temperatures: Sequence[float] = (20.0, 40.0, 60.0),
        steps: int = 200,
        dt: float = 10.0,
        displacement: float = 0.1,
        r_min: float = 2.5,
        max_neighbor_distance: float = 8.0,
        cutoff: float | None = None,
        seed: int = 0,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        log: bool = True,
        force_reload: bool = False,
    ) -> None:
        if num_configs < 1:
            raise ValueError(f"Expected num_configs >= 1, got {num_configs}")
        if cutoff is not None and not float(cutoff) > 0:
            raise ValueError(f"Expected cutoff > 0 (Angstrom) or None, got {cutoff}")
        temps = tuple(float(t) for t in temperatures)
        _check_sampler_args(num_configs, min_atoms, max_atoms, list(temps), steps, dt, displacement)
        self.num_configs = int(num_configs)
        self.min_atoms = int(min_atoms)
        self.max_atoms = int(max_atoms)
        self.temperatures = temps
        self.steps = int(steps)
        self.dt = float(dt)
        self.displacement = float(displacement)
        self.r_min = float(r_min)
        self.max_neighbor_distance = float(max_neighbor_distance)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.seed = int(seed)
        super().__init__(root, transform, pre_transform, pre_filter, log, force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_file_names(self) -> str:
        temps = "-".join(repr(t) for t in self.temperatures)
        return (
            f"ljclusters_n{self.num_configs}_atoms{self.min_atoms}-{self.max_atoms}_T{temps}"
            f"_steps{self.steps}_dt{self.dt!r}_disp{self.displacement!r}_rmin{self.r_min!r}"
            f"_nnmax{self.max_neighbor_distance!r}_cut{self.cutoff!r}_seed{self.seed}.pt"
        )

    def download(self) -> None:
        pass

    def process(self) -> None:
        sample = sample_lj_clusters(
            self.num_configs,
            min_atoms=self.min_atoms,
            max_atoms=self.max_atoms,
            temperatures=self.temperatures,
            steps=self.steps,
            dt=self.dt,
            displacement=self.displacement,
            r_min=self.r_min,
            max_neighbor_distance=self.max_neighbor_distance,
            cutoff=self.cutoff,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self.log and sample.num_rejected:
            print(f"LJClusters: {sample.num_rejected} MD runs rejected and redone")
        sizes = torch.tensor([p.shape[0] for p in sample.pos])
        energy = torch.empty(self.num_configs, dtype=torch.float64)
        forces: list[Tensor | None] = [None] * self.num_configs
        for n in torch.unique(sizes).tolist():
            index = (sizes == n).nonzero().flatten()
            e, f = lennard_jones(torch.stack([sample.pos[k] for k in index]), cutoff=self.cutoff)
            energy[index] = e
            for k, fk in zip(index.tolist(), f, strict=True):
                forces[k] = fk
        data_list = [
            Data(
                pos=p,
                forces=f,
                energy=energy[k].reshape(1),
                z=torch.full((p.shape[0],), ARGON_Z, dtype=torch.long),
                num_atoms=torch.tensor([p.shape[0]]),
                temperature=sample.temperature[k].reshape(1),
            )
            for k, (p, f) in enumerate(zip(sample.pos, forces, strict=True))
        ]
        if self.pre_filter is not None:
            data_list = [d for d in data_list if self.pre_filter(d)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__), self.processed_paths[0])

    def split(self, seed: int | None = None) -> tuple[LJClusters, LJClusters, LJClusters]:
        r"""Train, validation and test subsets (60 / 20 / 20 %), from
        :func:`~uenn_geo.data.paper.split_indices`.

        Args:
            seed (int, optional): Seed of the split. (default: the data set's :obj:`seed`)
        """
        idx = split_indices(len(self), self.seed if seed is None else seed)
        return self[idx["train"]], self[idx["val"]], self[idx["test"]]

    def __repr__(self) -> str:
        temps = ", ".join(f"{t:g}" for t in self.temperatures)
        return (
            f"{self.__class__.__name__}({len(self)}, atoms={self.min_atoms}-{self.max_atoms}, "
            f"T=({temps}) K, cutoff={self.cutoff}, seed={self.seed})"
        )
