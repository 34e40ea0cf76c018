r"""A graph force field: the vector graph layer (eqs. 29-31) feeding equivariant MLPs per atom."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from uenn_geo.constants import ARGON_Z
from uenn_geo.dtypes import dtype_name, resolve_dtype
from uenn_geo.edges import Edges
from uenn_geo.models.base import ForceModel, batch_of, check_positions
from uenn_geo.models.config import LEGACY_CONFIG, checked_config
from uenn_geo.models.pair import fit_pair, has_positions
from uenn_geo.models.response import cells_of, energy_response
from uenn_geo.models.scales import company, fit_force_energy_scales
from uenn_geo.nn.conv import VectorGaussianConv
from uenn_geo.nn.functional import scalar_channels
from uenn_geo.nn.gram import GramInvariants
from uenn_geo.nn.linear import EquivariantLinear
from uenn_geo.nn.mlp import EquivariantMLP

__all__ = ["UENNForceField"]


class UENNForceField(ForceModel):
    r"""A force field of vector graph layers (eqs. 29-31) and equivariant MLPs (eqs. 5-17).

    By default (``conservative=False``) it predicts one force vector per atom directly, not as
    the gradient of an energy; with ``conservative=True`` it predicts an invariant energy and
    takes the forces (and the stress of periodic cells) as its derivatives (sec. 3.6).

    **Block 1** is the paper's construction (sec. 4): the vector graph layer turns the
    neighbourhood of atom :math:`i` into :math:`M` vectors :math:`D_i^a` (eq. 30) and :math:`M`
    invariants :math:`S_i^a` (eq. 29), computed from the one-hot species :math:`v_j` of the
    neighbours; the invariants ride along as scalar features (eq. 15) into an
    :class:`~uenn_geo.nn.EquivariantMLP` (whose activations act on the augmented vectors
    :math:`[D_i^a; S_i^a]`):

    .. math::
        h_i^{(1)} = \mathrm{MLP}_1\big([D_i; S_i]\big) \in \mathbb{R}^{(3+1) \times M}

    **Blocks** :math:`k = 2, \dots, K` pass the neighbours' features through the graph again.
    A linear channel mix (no bias) reduces :math:`h_j^{(k-1)}` to :math:`C` channels
    :math:`[\mathbf{x}_j; s_j] = h_j^{(k-1)} P_k`, and a :class:`~uenn_geo.nn.VectorGaussianConv`
    with node features :math:`v'_j = [v_j, s_j]` and vector features :math:`\mathbf{x}_j` gives

    .. math::
        m_i^a &= \sum_j \sum_b e_{ij}^b \Big[\hat{\mathbf{r}}_{ij} \sum_d v'_{jd}\, w_{bda}
            + \sum_c \mathbf{x}_{jc}\, w_{b,c,a}\Big],
        \qquad \hat{\mathbf{r}}_{ij} = \mathbf{r}_{ij} / r_{ij}

        \mu_i^a &= \sum_j \sum_b e_{ij}^b \Big[\sum_d v'_{jd}\, w'_{bda}
            + \sum_c (\hat{\mathbf{r}}_{ij} \cdot \mathbf{x}_{jc})\, w'_{b,c,a}\Big]

        h_i^{(k)} &= \mathrm{MLP}_k\big(\big[h_i^{(k-1)} \,\big\|\, [m_i; \mu_i]\big]\big)

    (:math:`\|` joins channels): the radial functions weight a linear mix of the neighbours'
    vectors, the bond direction carries their invariants, and the atom's own features skip
    past the graph layer. Every vector term is a vector of the input times invariants, so the
    model is equivariant under all of :math:`O(3)`, reflections included, and under
    permutations of atoms of the same species; positions enter only through
    :math:`\mathbf{r}_{ij}`, so it is translation invariant.

    **Output** (direct mode). The last MLP has one output vector;
    :math:`\mathbf{F}_i = s_F\, h_i^{(K)}`, with the buffer ``force_scale`` :math:`s_F` (eV/A,
    set by :meth:`fit_scales`) so that the network works with forces of unit spread. With
    ``remove_net_force`` the mean force of each
    structure is subtracted, :math:`\mathbf{F}_i \leftarrow \mathbf{F}_i - \frac{1}{N_g}
    \sum_{k \in g} \mathbf{F}_k`: forces that are not an energy gradient do not obey Newton's
    third law by construction, and a nonzero total force would accelerate the centre of mass
    in MD. The projection commutes with rotations and permutations.

    **Pair term** (``pair_term=True``, the default). The first graph layer's neighbour sums
    (eq. 30 before its weights, :meth:`VectorGaussianConv.neighbour_sums`) also feed a linear
    readout, a pair force in the Gaussian basis with one weight per (Gaussian, neighbour
    species, own species):

    .. math::
        \mathbf{F}_i^{\text{pair}} = \sum_j \sum_b c_{b, z_j, z_i}\, e_{ij}^b\,
        \hat{\mathbf{r}}_{ij},
        \qquad \mathbf{F}_i = \mathbf{F}_i^{\text{pair}} + s_F\, h_i^{(K)}

    (in conservative mode the energy :math:`E^{\text{pair}} = \frac{1}{2} \sum_i \sum_j
    \sum_b c_{b, z_j, z_i}\, e_{ij}^b` is added to :math:`E` instead). The weights
    ``pair_weight`` are a buffer, solved in closed form by linear least squares in
    :meth:`fit_scales` (:meth:`fit_pair`), and the network learns what the pair term leaves,
    at unit spread. This is the paper's vector descriptor (eq. 33) with a linear readout: the
    part of the forces that pair interactions explain costs no training (docs/graph.md
    measures what it leaves on Lennard-Jones argon); the neighbour sums are shared with the
    first layer. Until :meth:`fit_scales` is given graphs the weights are zero.

    **Conservative mode.** Invariant scalars can be read out of equivariant vectors through
    their norms (Ma & Chan, sec. 3.6). The last MLP then has :math:`M` = ``hidden_channels``
    outputs :math:`h_{ia} = [\mathbf{x}_{ia}; s_{ia}]`, and a linear readout of their
    invariants gives the energy of atom :math:`i` of species :math:`z_i`

    .. math::
        E_i = s_E \sum_a \big(\alpha_a \|\mathbf{x}_{ia}\|^2 + \beta_a\, s_{ia}\big) + \mu_{z_i},
        \qquad E = \sum_{i \in g} E_i,
        \qquad \mathbf{F}_i = -\frac{\partial E}{\partial \mathbf{r}_i},
        \qquad \sigma = \frac{1}{V} \frac{\partial E}{\partial \varepsilon}

    with the buffers ``energy_scale`` :math:`s_E` (eV) and ``energy_shift`` :math:`\mu_z` (eV per
    atom of each species, float64: energies are float64), set by :meth:`fit_scales`. With
    ``e0s``, :math:`\mu_z = E^0_z`, the readout of an atom without neighbours is subtracted
    (which so has its :math:`E^0_z` exactly), and atoms with neighbours add :math:`b_{z_i}
    c_i` (``binding_shift``, :func:`~uenn_geo.models.scales.company`, fitted before and after
    training by :func:`~uenn_geo.models.scales.refit_energy_shift`). Forces come from autograd (with
    ``create_graph`` in training mode, so a force loss trains the energy); they sum to zero
    and do no work around a closed path, so NVE runs conserve :math:`E + K`. The stress
    (eV/A\ :sup:`3`, ASE's sign: positive under tension) is the derivative with respect to a
    symmetric strain :math:`\varepsilon` that moves positions and cell,
    :math:`\mathbf{r} \to \mathbf{r}(1 + \varepsilon)`, :math:`\mathbf{C} \to
    \mathbf{C}(1 + \varepsilon)`, hence the image shifts :math:`\mathbf{s}_e \to
    \mathbf{s}_e (1 + \varepsilon)`. ``remove_net_force`` is ignored (the net force is zero
    by construction).

    Args:
        cutoff (float): neighbour cutoff :math:`r_c` in Angstrom (default: :obj:`10.2`,
            :math:`3 r_0` of argon).
        num_basis (int): Gaussians :math:`B` of the first graph layer (and of the pair term),
            centres spread on :math:`[r_{\min}, r_c]` (default: :obj:`50`).
        interaction_basis (int, optional): Gaussians of the graph layers of blocks
            :math:`k \geq 2`, the costliest part of the model (their work is proportional to
            it); :obj:`None` uses ``num_basis`` (default: :obj:`16`).
        hidden_channels (int): vectors :math:`M` per atom between blocks and out of each graph
            layer (default: :obj:`32`).
        mlp_channels (list[int]): hidden widths of each block's MLP
            (default: :obj:`[64, 64]`).
        num_blocks (int): number :math:`K` of graph blocks (default: :obj:`2`).
        interaction_channels (int): channels :math:`C` of the mix :math:`P_k` passed to the
            neighbours in blocks :math:`k \geq 2` (default: :obj:`8`).
        atomic_numbers (list[int]): species the model knows; :math:`z` is one-hot encoded in
            this order (default: :obj:`[18]`, argon).
        activation (str): hidden activation, a name from :data:`uenn_geo.nn.ACTIVATIONS`
            (default: ``"softsign_residual"``, eq. 13).
        remove_net_force (bool): subtract the mean force per structure; direct mode only
            (default: :obj:`True`).
        r_min (float): first Gaussian centre in Angstrom (default: :obj:`0.0`).
        dtype (str or torch.dtype, optional): real dtype of the parameters and of the forces
            (default: :obj:`torch.get_default_dtype()`).
        conservative (bool): predict an energy and take forces and stress as its derivatives
            (default: :obj:`False`, direct forces).
        pair_term (bool): add the pair term fitted by :meth:`fit_pair` (default:
            :obj:`True`; models saved before it existed load without it).
        e0s (dict, optional): isolated-atom energies in eV by atomic number (conservative
            mode; see above).
        own_species (bool): give every block's MLP the atom's own species, one-hot, as
            scalar channels :math:`[\mathbf{0}; v_i]` (the graph layers see only the
            neighbours' species) (default: :obj:`False`).
        species_pairs (bool): radial weights per species pair: every graph layer has one
            weight per species of the centre atom (``centre_species`` of
            :class:`~uenn_geo.nn.VectorGaussianConv`) (default: :obj:`False`).
        gram_channels (int): :math:`K > 0` adds to the input of every block's MLP the
            :math:`K (K + 1) / 2` inner products of :math:`K` learned mixes of its channels
            (:class:`~uenn_geo.nn.GramInvariants`) as scalar channels (default: :obj:`0`).
        separate_scalars (bool): the MLPs' scalar rows get weights of their own
            (:class:`~uenn_geo.nn.EquivariantLinear`) (default: :obj:`False`).
        centre_vectors (bool): blocks :math:`k \geq 2` also project the atom's own vectors
            on its bonds (:class:`~uenn_geo.nn.VectorGaussianConv`) (default: :obj:`False`).
        bond_vectors (bool): blocks :math:`k \geq 2` also carry the neighbours' vectors
            projected on the bond along it, :math:`\hat{\mathbf{r}}_{ij}
            (\hat{\mathbf{r}}_{ij} \cdot \mathbf{x}_j)` (angular coupling of order two;
            :class:`~uenn_geo.nn.VectorGaussianConv`) (default: :obj:`False`).
        bond_cubes (bool): the same at order three, with :math:`q_j = \hat{\mathbf{r}}_{ij}
            \cdot \mathbf{x}_j`: :math:`\hat{\mathbf{r}}_{ij} q_j^2` and :math:`q_j^3` (default:
            :obj:`False`).
        bond_quartics (bool): the same at order four: :math:`\hat{\mathbf{r}}_{ij} q_j^3` and
            :math:`q_j^4` (default: :obj:`False`).
        radial_mlp (int): hidden width of learned radial functions of the Gaussians in every
            graph layer (``radial_hidden`` of :class:`~uenn_geo.nn.VectorGaussianConv`;
            default: :obj:`0`, none).
        learnable_basis (bool): train the Gaussians' centres and widths in every graph layer
            (:class:`~uenn_geo.nn.GaussianBasis`) (default: :obj:`False`).
        bias_delta (float): :math:`\delta` of the smooth directions
            :math:`e = x / \sqrt{\|x\|^2 + \delta^2}` in the bias term of every MLP layer
            (``delta`` of :class:`~uenn_geo.nn.EquivariantLinear`), in place of eq. 8's
            :math:`x / \|x\|`, whose direction turns abruptly where a vector feature passes
            near zero, as the first layer's vectors do by symmetry inside a crystal or a
            cluster (default: :obj:`0.0`, eq. 8).
        avg_num_neighbors (float, optional): :math:`\bar{n}`, the mean number of neighbours
            of an atom; every graph layer multiplies its neighbour sums by
            :math:`1 / \sqrt{\bar{n}}` (``sum_scale`` of
            :class:`~uenn_geo.nn.VectorGaussianConv`) (default: :obj:`None`, by 1).
        interaction_cutoff (float, optional): the cutoff of the graph layers of blocks
            :math:`k \geq 2`, at most ``cutoff``: their Gaussians and :math:`f_c` end there,
            so that only the first layer's radial sums reach ``cutoff`` (default:
            :obj:`None`, ``cutoff``).

    Shapes:
        - input: a PyG ``Data``/``Batch`` with ``pos`` :obj:`(N, 3)` (Angstrom), ``z``
          :obj:`(N)`, optional ``batch`` :obj:`(N)`, ``edge_index`` :obj:`(2, E)`, ``shifts``
          :obj:`(E, 3)`, ``cell`` :obj:`(B, 3, 3)`, ``pbc`` :obj:`(B, 3)`
        - output: forces :obj:`(N, 3)` in eV/A; :meth:`energy_forces` also gives energies
          :obj:`(B)` in eV and stresses :obj:`(B, 3, 3)` in eV/A\ :sup:`3`

    Example:
        >>> from torch_geometric.data import Data
        >>> model = UENNForceField(dtype="float64")
        >>> data = Data(pos=torch.randn(4, 3, dtype=torch.float64) * 3, z=torch.full((4,), 18))
        >>> model(data).shape
        torch.Size([4, 3])
        >>> model = UENNForceField(dtype="float64", conservative=True)
        >>> out = model.energy_forces(data)
        >>> out["energy"].shape, out["forces"].shape
        (torch.Size([1]), torch.Size([4, 3]))
    """

    legacy_config = LEGACY_CONFIG
    legacy_buffers = ("binding_shift",)  # older files lack them: initial values (zero)

    def __init__(
        self,
        cutoff: float = 10.2,
        num_basis: int = 50,
        interaction_basis: int | None = 16,
        hidden_channels: int = 32,
        mlp_channels: Sequence[int] = (64, 64),
        num_blocks: int = 2,
        interaction_channels: int = 8,
        atomic_numbers: Sequence[int] = (ARGON_Z,),
        activation: str = "softsign_residual",
        remove_net_force: bool = True,
        r_min: float = 0.0,
        dtype: str | torch.dtype | None = None,
        conservative: bool = False,
        pair_term: bool = True,
        e0s: dict[int | str, float] | None = None,
        own_species: bool = False,
        species_pairs: bool = False,
        gram_channels: int = 0,
        separate_scalars: bool = False,
        centre_vectors: bool = False,
        bond_vectors: bool = False,
        radial_mlp: int = 0,
        bond_cubes: bool = False,
        learnable_basis: bool = False,
        bias_delta: float = 0.0,
        avg_num_neighbors: float | None = None,
        bond_quartics: bool = False,
        interaction_cutoff: float | None = None,
    ) -> None:
        super().__init__()
        dtype = resolve_dtype(dtype)
        self.config: dict[str, Any] = checked_config(
            cutoff=float(cutoff),
            num_basis=int(num_basis),
            interaction_basis=None if interaction_basis is None else int(interaction_basis),
            hidden_channels=int(hidden_channels),
            mlp_channels=[int(c) for c in mlp_channels],
            num_blocks=int(num_blocks),
            interaction_channels=int(interaction_channels),
            atomic_numbers=[int(z) for z in atomic_numbers],
            activation=activation,
            remove_net_force=bool(remove_net_force),
            r_min=float(r_min),
            dtype=dtype_name(dtype),
            conservative=bool(conservative),
            pair_term=bool(pair_term),
            e0s=None if e0s is None else {str(int(z)): float(e) for z, e in e0s.items()},
            own_species=bool(own_species),
            species_pairs=bool(species_pairs),
            gram_channels=int(gram_channels),
            separate_scalars=bool(separate_scalars),
            centre_vectors=bool(centre_vectors),
            bond_vectors=bool(bond_vectors),
            bond_cubes=bool(bond_cubes),
            bond_quartics=bool(bond_quartics),
            radial_mlp=int(radial_mlp),
            learnable_basis=bool(learnable_basis),
            bias_delta=float(bias_delta),
            avg_num_neighbors=None if avg_num_neighbors is None else float(avg_num_neighbors),
            interaction_cutoff=None if interaction_cutoff is None else float(interaction_cutoff),
        )
        self.cutoff = float(cutoff)
        self.num_species = len(atomic_numbers)
        self.remove_net_force = bool(remove_net_force)
        self.conservative = self.has_energy = bool(conservative)
        self._register_scales(dtype)
        self._build_blocks(dtype)
        self.reset_parameters()

    def _register_scales(self, dtype: torch.dtype) -> None:
        """The species table and the fitted buffers: scales, shifts and pair weights."""
        cfg, species = self.config, self.num_species
        numbers = cfg["atomic_numbers"]
        table = torch.full((max(numbers) + 1,), -1, dtype=torch.long)
        table[torch.tensor(numbers)] = torch.arange(species)
        self.register_buffer("z_to_index", table, persistent=False)
        self.register_buffer("force_scale", torch.tensor(1.0, dtype=dtype))
        if self.conservative:
            self.register_buffer("energy_scale", torch.tensor(1.0, dtype=dtype))
            shift = torch.zeros(species, dtype=torch.float64)  # float64: E_i are of 1000s eV
            if cfg["e0s"] is not None:  # E0s, and b_z for atoms with company (refitted)
                shift = torch.tensor([cfg["e0s"][str(z)] for z in numbers], dtype=torch.float64)
                self.register_buffer("binding_shift", torch.zeros_like(shift))
            self.register_buffer("energy_shift", shift)
        pair_weight = None
        if cfg["pair_term"]:
            # c_{(b, d), s}: the pair term's weights, fitted in closed form by fit_pair.
            pair_weight = torch.zeros(cfg["num_basis"] * species, species, dtype=dtype)
        self.register_buffer("pair_weight", pair_weight)

    def _build_blocks(self, dtype: torch.dtype) -> None:
        """The graph layers, channel mixes and MLPs of the blocks, and the energy readout."""
        cfg, species = self.config, self.num_species
        m, c, num_blocks = cfg["hidden_channels"], cfg["interaction_channels"], cfg["num_blocks"]
        conv = {"num_basis": cfg["num_basis"], "cutoff": self.cutoff, "r_min": cfg["r_min"]}
        conv.update(output="both", dtype=dtype, radial_hidden=cfg["radial_mlp"])
        conv.update(learnable_basis=cfg["learnable_basis"])
        conv.update(sum_scale=(cfg["avg_num_neighbors"] or 1.0) ** -0.5)
        conv.update(centre_species=species if cfg["species_pairs"] else 0)
        self.convs = nn.ModuleList([VectorGaussianConv(species, m, **conv)])
        self.mixes = nn.ModuleList()
        self.mlps = nn.ModuleList()
        self.grams = nn.ModuleList() if cfg["gram_channels"] else None
        for k in range(num_blocks):
            c_in = (m if k == 0 else 2 * m) + (species if cfg["own_species"] else 0)
            if self.grams is not None:
                self.grams.append(GramInvariants(c_in, cfg["gram_channels"], dtype=dtype))
                c_in += self.grams[-1].num_invariants
            c_out = 1 if k == num_blocks - 1 and not self.conservative else m
            channels = [c_in, *cfg["mlp_channels"], c_out]
            act, own_weights = cfg["activation"], cfg["separate_scalars"]
            mlp = EquivariantMLP(
                channels,
                act=act,
                num_scalars=1,
                dtype=dtype,
                separate_scalars=own_weights,
                delta=cfg["bias_delta"],
            )
            self.mlps.append(mlp)
            if k > 0:
                self.mixes.append(EquivariantLinear(m, c, bias=False, num_scalars=1, dtype=dtype))
                inter = {**conv, "num_basis": cfg["interaction_basis"] or cfg["num_basis"]}
                inter["cutoff"] = cfg["interaction_cutoff"] or self.cutoff
                inter.update(vector_channels=c, centre_vectors=cfg["centre_vectors"])
                inter.update(bond_vectors=cfg["bond_vectors"], bond_cubes=cfg["bond_cubes"])
                inter.update(bond_quartics=cfg["bond_quartics"])
                self.convs.append(VectorGaussianConv(species + c, m, **inter))
        readout = None
        if self.conservative:
            # alpha_a (squared norms) and beta_a (scalar rows) of the energy readout.
            readout = nn.Linear(2 * m, 1, bias=False, dtype=dtype)
        self.register_module("energy_readout", readout)

    def reset_parameters(self) -> None:
        """Re-initialise every layer (normalised Xavier, zero biases); keeps the fitted buffers."""
        for module in (*self.convs, *self.mixes, *self.mlps, *(self.grams or ())):
            module.reset_parameters()
        if self.energy_readout is not None:
            bound = 1.0 / math.sqrt(self.energy_readout.in_features)
            nn.init.uniform_(self.energy_readout.weight, -bound, bound)

    def species_index(self, z: Tensor | None, num_atoms: int) -> Tensor:
        r"""Map atomic numbers :math:`z` to species indices :math:`0, \dots, S-1`.

        Raises :class:`ValueError` for atomic numbers the model does not know. ``z`` may be
        :obj:`None` only for a single-species model.
        """
        if z is None:
            if self.num_species != 1:
                raise ValueError(
                    f"data has no z but the model knows {self.num_species} species "
                    f"{self.config['atomic_numbers']}; set data.z (atomic numbers, shape (N,))"
                )
            return torch.zeros(num_atoms, dtype=torch.long, device=self.force_scale.device)
        if z.shape != (num_atoms,) or z.dtype.is_floating_point or z.is_complex():
            raise ValueError(
                f"z must be an integer tensor of shape ({num_atoms},), got {tuple(z.shape)} "
                f"{z.dtype}"
            )
        z = z.long()
        inside = (z >= 0) & (z < self.z_to_index.numel())
        index = self.z_to_index[torch.where(inside, z, 0)]
        index = torch.where(inside, index, -1)
        # (skipped under torch.compile, where it would break the graph: uenn-geo train
        # checks the training set's species against the model's before the first step)
        if not torch.compiler.is_compiling() and bool((index < 0).any()):
            unknown = sorted(set(z[index < 0].tolist()))
            raise ValueError(
                f"atomic numbers {unknown} are not among the model's species "
                f"{self.config['atomic_numbers']}"
            )
        return index

    def _inputs(
        self, data: Any, edges: Edges | None = None
    ) -> tuple[Tensor, Tensor, Edges, Tensor, int]:
        """Check ``data``: ``(pos, species, edges, batch, num_graphs)``, the edges laid out."""
        pos = check_positions(data, self.dtype)
        species = self.species_index(getattr(data, "z", None), pos.shape[0])
        edges = self.edges(data, edges).chunked(pos.shape[0])
        batch, num_graphs = batch_of(data, pos.shape[0], pos.device)
        return pos, species, edges, batch, num_graphs

    def energy_forces(
        self, data: Any, edges: Edges | None = None, compute_stress: bool = False
    ) -> dict[str, Tensor | None]:
        r"""Energy, forces and (for periodic cells) stress of every structure in ``data``.

        The direct mode has no energy: ``energy`` and ``stress`` are then :obj:`None`. In
        conservative mode the derivatives come from :mod:`uenn_geo.models.response`.

        Args:
            data: a PyG ``Data``/``Batch`` with ``pos`` (Angstrom) and ``z``; with
                ``compute_stress`` it needs ``cell`` :obj:`(B, 3, 3)` (or PyG's :obj:`(3B, 3)`).
            edges (Edges, optional): the neighbour list, built for this model's cutoff
                (default: built from ``data`` by :func:`uenn_geo.edges.edges_of`).
            compute_stress (bool): also return the stress (default: :obj:`False`).

        Returns:
            dict: ``energy`` :obj:`(B)` in eV, ``forces`` :obj:`(N, 3)` in eV/A and ``stress``
            :obj:`(B, 3, 3)` in eV/A\ :sup:`3` (ASE's sign, positive under tension), each
            :obj:`None` where not computed.
        """
        pos, species, edges, batch, num_graphs = self._inputs(data, edges)
        if not self.conservative:
            forces = self.compute_forces(pos, species, edges, batch, num_graphs)
            return {"energy": None, "forces": forces, "stress": None}
        cell = None
        if compute_stress:
            cell = cells_of(getattr(data, "cell", None), num_graphs, pos)

        def energy(x: Tensor, e: Edges) -> Tensor:
            atomic = self.atomic_energies(x, species, e)
            return atomic.new_zeros(num_graphs).index_add(0, batch, atomic)

        return energy_response(energy, pos, edges, batch, cell, training=self.training, traced=True)

    def _features(self, pos: Tensor, species: Tensor, edges: Edges) -> tuple[Tensor, Tensor]:
        """The output of the last block :obj:`(N, n + 1, C_out)` and the first layer's
        neighbour sums :obj:`(N, n + 1, B S)` (for the pair term)."""
        n = pos.shape[1]
        v = nn.functional.one_hot(species, self.num_species).to(pos.dtype)
        centre = species if self.config["species_pairs"] else None
        sums = self.convs[0].neighbour_sums(pos, edges, v)
        h = self.convs[0].contract(sums, centre)  # (N, n + 1, M): [D; S]
        own = []
        if self.config["own_species"]:  # [0; v_i]: the atom's own species as scalar channels
            own = [scalar_channels(v, n)]
        h = self.mlps[0](self._with_gram(0, torch.cat([h, *own], dim=-1)))
        blocks = zip(self.mixes, self.convs[1:], self.mlps[1:], strict=True)
        for k, (mix, conv, mlp) in enumerate(blocks, start=1):
            y = mix(h)  # (N, n + 1, C): [x_j; s_j]
            v_mix = torch.cat([v, y[:, n, :]], dim=-1)  # (N, S + C): [v_j, s_j]
            message = conv(pos, edges, v_mix, y[:, :n, :], centre=centre)  # (N, n + 1, M)
            h = mlp(self._with_gram(k, torch.cat([h, message, *own], dim=-1)))
        return h, sums

    def _with_gram(self, block: int, x: Tensor) -> Tensor:
        """``x`` and, with ``gram_channels``, its inner-product invariants as scalar channels."""
        if self.grams is None:
            return x
        return torch.cat([x, scalar_channels(self.grams[block](x), x.shape[1] - 1)], dim=-1)

    def _pair_readout(self, sums: Tensor, species: Tensor) -> Tensor:
        r"""Rows of the neighbour sums times :math:`c_{(b, d), z_i}`: :obj:`(N, R)`."""
        out = sums @ self.pair_weight  # (N, R, S)
        if self.num_species == 1:
            return out[..., 0]
        index = species.view(-1, 1, 1).expand(-1, out.shape[1], 1)
        return out.gather(2, index).squeeze(-1)

    def atomic_energies(self, pos: Tensor, species: Tensor, edges: Edges) -> Tensor:
        r"""Energies :math:`E_i` of the atoms in eV :obj:`(N)`, float64 (conservative mode), on
        plain tensors: the readout of the class docstring. Differentiable in ``pos`` and the
        shifts of ``edges``."""
        if self.energy_readout is None:
            msg = "this model predicts forces directly and has no energy; set conservative=True"
            raise ValueError(msg)
        n = pos.shape[1]
        atomic, sums = self._readout(pos, species, edges)
        if self.config["e0s"] is not None:  # E0 alone, E0 + b_z in company (models/scales.py)
            alone = torch.arange(self.num_species, device=pos.device)  # one atom of each
            empty = Edges(alone.new_zeros(2, 0), None, self.cutoff)
            isolated = self._readout(pos.new_zeros(len(alone), n), alone, empty)[0][species]
            c = company(pos, edges, self.cutoff)  # 0: no neighbour, E0 exactly (no round-off)
            atomic = torch.where(c > 0, atomic - isolated, 0.0)
        atomic = atomic * self.energy_scale + self.energy_shift[species]
        if self.config["e0s"] is not None:
            atomic = atomic + self.binding_shift[species] * c
        if self.pair_weight is not None:
            atomic = atomic + 0.5 * self._pair_readout(sums[:, n : n + 1, :], species)[:, 0]
        return atomic

    def _readout(self, pos: Tensor, species: Tensor, edges: Edges) -> tuple[Tensor, Tensor]:
        r"""The energy readout :math:`\epsilon(h_i)` :obj:`(N)` and the neighbour sums."""
        h, sums = self._features(pos, species, edges)
        n = pos.shape[1]
        invariants = torch.cat([h[:, :n, :].square().sum(dim=1), h[:, n, :]], dim=-1)
        return self.energy_readout(invariants).squeeze(-1), sums

    def compute_forces(
        self,
        pos: Tensor,
        species: Tensor,
        edges: Edges,
        batch: Tensor | None = None,
        num_graphs: int = 1,
    ) -> Tensor:
        r"""The network on plain tensors, without neighbour search or data checks.

        This is where :func:`torch.compile` starts (no graph breaks for fixed edges);
        :meth:`energy_forces` calls it in the direct mode. In conservative mode it is
        :math:`-\partial E / \partial \mathbf{r}` of :meth:`atomic_energies`.

        Takes positions :obj:`(N, 3)` (Angstrom), species indices :obj:`(N)`
        (:meth:`species_index`), the neighbour list (:func:`uenn_geo.edges.build_edges`) and
        optionally the graph index per atom and the number of graphs (default: one graph);
        returns the forces :obj:`(N, 3)` in eV/A.
        """
        if self.conservative:
            batch = batch if batch is not None else species.new_zeros(pos.shape[0])
            out = energy_response(
                lambda x, e: self.atomic_energies(x, species, e),
                pos,
                edges,
                batch,
                training=self.training,
            )
            return out["forces"]
        n = pos.shape[1]
        h, sums = self._features(pos, species, edges)
        forces = h[:, :n, 0] * self.force_scale
        if self.pair_weight is not None:
            forces = forces + self._pair_readout(sums[:, :n, :], species)
        if self.remove_net_force:
            if batch is None:
                forces = forces - forces.mean(dim=0, keepdim=True)
            else:
                mean = scatter(forces, batch, dim=0, dim_size=num_graphs, reduce="mean")
                forces = forces - mean[batch]
        return forces

    @torch.no_grad()
    def fit_scales(self, forces: Tensor | Iterable[Any], batch_size: int = 32) -> float:
        r"""Fit the pair term (if any; :meth:`fit_pair`, given graphs with ``pos``, ``forces``,
        ``z``) and set the scales from what it leaves (given forces: the scales only).

        .. math::
            s_F = \sqrt{\frac{1}{3N} \sum_{i, \alpha} \Delta F_{i\alpha}^2}

        with :math:`\Delta F` the forces less the pair term (the forces themselves without
        one; at least :math:`10^{-4}` times their spread). In conservative mode
        ``energy_scale`` becomes :math:`s_E = s_F \cdot 1` A (eV) (energies whose gradients
        have unit spread) and, from energies and without E0s, ``energy_shift`` the
        :math:`\mu_z` of :math:`E_g - E_g^{\text{pair}} \approx \sum_z n_{gz} \mu_z`
        (least squares; :math:`n_{gz}` atoms of species :math:`z` in structure :math:`g`).

        Args:
            forces (Tensor or iterable): forces :obj:`(N, 3)` in eV/A, or graphs carrying
                ``pos`` (A), ``forces`` (eV/A) and optionally ``energy`` (eV).
            batch_size (int): graphs per batch of the pair fit (default: :obj:`32`).

        Returns:
            The new force scale in eV/A.
        """
        species_of = None
        if self.conservative:

            def species_of(d: Any) -> Tensor:
                return self.species_index(getattr(d, "z", None), d.forces.shape[0])

        floor = 0.0
        if self.pair_weight is not None and has_positions(forces):
            full, _ = fit_force_energy_scales(forces)
            forces = self.fit_pair(forces, batch_size)
            floor = 1e-4 * full
        scale, shift = fit_force_energy_scales(forces, species_of, self.num_species)
        scale = max(scale, floor)
        self.force_scale.fill_(scale)
        if self.conservative:
            self.energy_scale.fill_(scale)
            if shift is not None and self.config["e0s"] is None:
                self.energy_shift.copy_(shift.to(self.energy_shift))
        return scale

    @torch.no_grad()
    def fit_pair(
        self, graphs: Iterable[Any], batch_size: int = 32, ridge: float = 1e-9
    ) -> list[Any]:
        """Fit the pair term to the forces of ``graphs`` (:func:`uenn_geo.models.pair.fit_pair`);
        returns the residuals that :meth:`fit_scales` reads."""
        return fit_pair(self, graphs, batch_size, ridge)

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"{self.__class__.__name__}(cutoff={cfg['cutoff']}, num_blocks={cfg['num_blocks']}, "
            f"hidden_channels={cfg['hidden_channels']}, species={cfg['atomic_numbers']}, "
            f"{cfg['dtype']}{', conservative' if self.conservative else ''})"
        )
