r"""The paper's force model: 4 argon atoms, 6 relative vectors in, 4 forces out (sec. 4)."""

from __future__ import annotations

from itertools import combinations, permutations
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.dtypes import resolve_dtype
from uenn_geo.edges import Edges
from uenn_geo.models.base import ForceModel
from uenn_geo.nn import EquivariantMLP

__all__ = ["PaperForceModel", "PAPER_CHANNELS", "relative_vectors"]

#: Largest structure :class:`PaperForceModel` symmetrizes (6! = 720 orderings).
MAX_SYMMETRIZE_ATOMS = 6

#: Vector counts per layer of the paper's network.
PAPER_CHANNELS = [6, 50, 90, 100, 80, 50, 4]


def relative_vectors(pos: Tensor) -> Tensor:
    r"""All pair vectors :math:`r_{ij} = r_j - r_i`, :math:`i < j`, in lexicographic order.

    For 4 atoms: :math:`\{r_{12}, r_{13}, r_{14}, r_{23}, r_{24}, r_{34}\}`, the paper's input.

    Shapes:
        :obj:`(B, A, n) -> (B, n, A(A-1)/2)` (components, then pair channels)
    """
    num_atoms = pos.shape[-2]
    i, j = zip(*combinations(range(num_atoms), 2), strict=True)
    i = torch.tensor(i, device=pos.device)
    j = torch.tensor(j, device=pos.device)
    return (pos[..., j, :] - pos[..., i, :]).transpose(-1, -2)


class PaperForceModel(ForceModel):
    r"""Ma & Chan's argon force model: :math:`F = \mathrm{MLP}(\{r_{ij}\})` (sec. 4).

    The :math:`A(A-1)/2` relative vectors of a structure of ``num_atoms`` atoms, divided by
    the stored input scale, pass through :class:`~uenn_geo.nn.EquivariantMLP` with channels
    ``[A(A-1)/2, *hidden, A]``; the :math:`A` output vectors times the stored force scale are
    the forces. Both scales are buffers (the paper's standard-deviation scaling), so a saved
    model maps raw positions (Angstrom) to forces (eV/A) with no outside state. Translation
    invariant by construction, O(3)-equivariant; not permutation-symmetric (the paper's
    design: atoms are told apart by their slot).

    Args:
        num_atoms (int): atoms per structure (default: :obj:`4`).
        hidden (list[int]): hidden vector counts (default: the paper's
            :obj:`[50, 90, 100, 80, 50]`).
        act (str): hidden activation name from :data:`uenn_geo.nn.ACTIVATIONS`
            (default: :obj:`"softsign_residual"`, eq. 13).
        residue (float): :math:`a` of the softsign activation (default: :obj:`0.1`).
        remove_net_force (bool): subtract the mean force of each structure, so that the
            predicted forces sum to zero and momentum is conserved in MD (default:
            :obj:`False`, the paper's model).
        symmetrize (bool): average the forces over the :math:`A!` orderings of the atoms,
            :math:`\mathbf{F}(\mathbf{r}) = \frac{1}{A!} \sum_{\pi} P_\pi^{-1}
            \mathbf{F}_{\mathrm{net}}(P_\pi \mathbf{r})`, which makes the model
            permutation-equivariant for identical atoms (the network alone tells atoms apart
            by their slot). The same weights; :math:`A!` network evaluations per structure
            (24 for 4 atoms). Usually switched on after training
            (``model.symmetrize = True``); saved with the model (default: :obj:`False`,
            the paper's model).
        dtype (str): parameter dtype name (default: :obj:`"float32"`).

    Shapes:
        ``data.pos``: :obj:`[B * A, 3]` (Angstrom), ``data.batch``: :obj:`[B * A]`
        :math:`\rightarrow` forces :obj:`[B * A, 3]` (eV/A)
    """

    def __init__(
        self,
        num_atoms: int = 4,
        hidden: list[int] | None = None,
        act: str = "softsign_residual",
        residue: float = 0.1,
        remove_net_force: bool = False,
        symmetrize: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        if num_atoms < 2:
            raise ValueError(f"num_atoms must be >= 2, got {num_atoms}")
        if symmetrize and num_atoms > MAX_SYMMETRIZE_ATOMS:
            raise ValueError(
                f"symmetrize averages over num_atoms! orderings; at most "
                f"{MAX_SYMMETRIZE_ATOMS} atoms, got {num_atoms}"
            )
        hidden = list(PAPER_CHANNELS[1:-1] if hidden is None else hidden)
        self.config = {
            "num_atoms": num_atoms,
            "hidden": hidden,
            "act": act,
            "residue": residue,
            "remove_net_force": remove_net_force,
            "symmetrize": symmetrize,
            "dtype": dtype,
        }
        self.num_atoms = num_atoms
        self.cutoff = None  # every atom of a structure, no neighbour list
        self.has_energy = False
        self.remove_net_force = remove_net_force
        torch_dtype = resolve_dtype(dtype)
        num_pairs = num_atoms * (num_atoms - 1) // 2
        if act == "softsign_residual":
            from uenn_geo.nn import SoftsignResidual

            activation: str | nn.Module = SoftsignResidual(residue)
        else:
            activation = act
        self.mlp = EquivariantMLP(
            [num_pairs, *hidden, num_atoms], act=activation, dtype=torch_dtype
        )
        self.register_buffer("input_scale", torch.ones((), dtype=torch_dtype))
        self.register_buffer("force_scale", torch.ones((), dtype=torch_dtype))

    @torch.no_grad()
    def fit_scales(self, graphs: Any, forces: Tensor | None = None) -> float:
        r"""Set the input and force scales to the standard deviations of the training data.

        Args:
            graphs: positions :obj:`[B, A, 3]` (Angstrom) with ``forces`` :obj:`[B, A, 3]`
                (eV/A), or an object with both as ``pos`` and ``forces`` in that layout
                (:class:`uenn_geo.train.DenseForceData`).

        Returns:
            The force scale in eV/A.
        """
        pos = graphs if forces is not None else graphs.pos
        forces = forces if forces is not None else graphs.forces
        self.input_scale.fill_(relative_vectors(pos).std().item())
        self.force_scale.fill_(forces.std().item())
        return float(self.force_scale)

    #: Models saved before ``symmetrize`` existed load without it.
    legacy_config = {"symmetrize": False}

    @property
    def symmetrize(self) -> bool:
        """Whether the forces are averaged over the atom orderings (see the class docs)."""
        return bool(self.config["symmetrize"])

    @symmetrize.setter
    def symmetrize(self, value: bool) -> None:
        if value and self.num_atoms > MAX_SYMMETRIZE_ATOMS:
            raise ValueError(f"symmetrize needs at most {MAX_SYMMETRIZE_ATOMS} atoms")
        self.config["symmetrize"] = bool(value)

    def forward_dense(self, pos: Tensor) -> Tensor:
        """Forces :obj:`[B, A, 3]` from positions :obj:`[B, A, 3]`."""
        if pos.dim() != 3 or pos.shape[1] != self.num_atoms:
            raise ValueError(
                f"positions must have shape (B, {self.num_atoms}, n), got {tuple(pos.shape)}"
            )
        if not self.symmetrize:
            return self._network(pos)
        b, a, n = pos.shape
        perms = torch.tensor(list(permutations(range(a))), device=pos.device)  # (P, A)
        forces = self._network(pos[:, perms].reshape(-1, a, n)).view(b, -1, a, n)
        inverse = torch.argsort(perms, dim=1)  # atom i sat in slot inverse[p, i]
        index = inverse.view(1, -1, a, 1).expand(b, -1, a, n)
        return forces.gather(2, index).mean(dim=1)

    def _network(self, pos: Tensor) -> Tensor:
        x = relative_vectors(pos.to(self.input_scale.dtype)) / self.input_scale
        forces = (self.mlp(x) * self.force_scale).transpose(-1, -2)
        if self.remove_net_force:
            forces = forces - forces.mean(dim=1, keepdim=True)
        return forces

    def energy_forces(
        self, data: Any, edges: Edges | None = None, compute_stress: bool = False
    ) -> dict[str, Tensor | None]:
        """Forces of every atom of ``data`` (no energy: the model predicts forces directly)."""
        if edges is not None:
            raise ValueError("the paper model sees every atom of a structure; pass no edges")
        return {"energy": None, "forces": self._forces(data), "stress": None}

    def _forces(self, data: Any) -> Tensor:
        pos = data.pos
        if pos.dim() != 2 or pos.shape[0] % self.num_atoms:
            raise ValueError(
                f"data.pos must have shape [B * {self.num_atoms}, n] (structures of "
                f"{self.num_atoms} atoms, consecutive), got {tuple(pos.shape)}"
            )
        batch = getattr(data, "batch", None)
        num_graphs = pos.shape[0] // self.num_atoms
        if (
            batch is not None
            and not torch.compiler.is_compiling()  # a check, not a graph break
            and batch.numel()
            and int(batch[-1]) + 1 != num_graphs
        ):
            raise ValueError(
                f"the paper model needs exactly {self.num_atoms} atoms per structure: "
                f"{pos.shape[0]} atoms in {int(batch[-1]) + 1} graphs"
            )
        forces = self.forward_dense(pos.reshape(num_graphs, self.num_atoms, -1))
        return forces.reshape(pos.shape[0], -1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_atoms={self.num_atoms}, mlp={self.mlp!r})"
