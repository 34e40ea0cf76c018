r"""A committee of force models: the mean of their predictions, and their spread.

Models trained alone (another seed, another split, another budget) err partly independently,
so the mean of their energies, forces and stresses is usually more accurate than any one of
them, and how far they disagree estimates the error where no reference exists (the
"query by committee" of active learning; MACE's calculator takes several model files for the
same reason). A :class:`Committee` is a :class:`~uenn_geo.models.ForceModel` like its members:
:func:`uenn_geo.train.metrics.error_table` (``uenn-geo eval --model A B``), the ASE calculator
and the evaluator of the engines take it as they take one model, with one neighbour list for
all members.

Units: those of the members (Angstrom, eV, eV/A, eV/A\ :sup:`3`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.edges import Edges
from uenn_geo.models.base import ForceModel

__all__ = ["Committee", "force_deviation", "load_committee", "mean_of_members", "model_files"]


class Committee(ForceModel):
    r"""The mean of force models that share a cutoff, a dtype and the energy.

    .. math::
        E = \frac{1}{M} \sum_{m=1}^{M} E^{(m)}, \qquad
        \mathbf{F}_i = \frac{1}{M} \sum_{m=1}^{M} \mathbf{F}_i^{(m)}

    (and the stress likewise): the forces stay minus the gradient of the energy when every
    member's are, and the mean of equivariant models is equivariant.
    :meth:`energy_forces` also returns every member's predictions under ``"members"``, for
    their spread.

    Args:
        members (sequence of ForceModel): at least one model; all with the same ``cutoff``,
            ``dtype`` and ``has_energy``.

    Raises:
        ValueError: no member, or members that differ in cutoff, dtype or energy.
    """

    def __init__(self, members: Sequence[ForceModel]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("a committee needs at least one model")
        for m in members:
            if not isinstance(m, ForceModel):
                raise TypeError(f"{type(m).__name__} is not a uenn-geo force model")
        first = _signature(members[0])
        for k, m in enumerate(members[1:], start=1):
            for name, value in _signature(m).items():
                if value != first[name]:
                    raise ValueError(
                        f"committee members must share their {name}: member 0 has "
                        f"{first[name]}, member {k} {value}; use models trained with the same "
                        "settings (and move them to one device)"
                    )
        self.members = nn.ModuleList(members)
        self.cutoff = members[0].cutoff
        self.has_energy = bool(members[0].has_energy)
        self.config = {"members": [dict(getattr(m, "config", {}) or {}) for m in members]}
        if self.atomic_numbers == []:
            raise ValueError(
                "committee members must know some species in common; their atomic_numbers "
                f"are {[m.atomic_numbers for m in members]}"
            )
        self.train(any(m.training for m in members))  # as the members are

    def __len__(self) -> int:
        return len(self.members)

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def atomic_numbers(self) -> list[int] | None:
        """The atomic numbers every member knows (:obj:`None`: any)."""
        known = [set(m.atomic_numbers) for m in self.members if m.atomic_numbers is not None]
        if not known:
            return None
        return sorted(set.intersection(*known))

    def energy_forces(
        self, data: Any, edges: Edges | None = None, compute_stress: bool = False
    ) -> dict[str, Any]:
        """The members' mean ``{"energy", "forces", "stress"}`` (:obj:`None` where they
        predict none), and ``"members"``: the same keys stacked over the members
        (:obj:`(M, B)`, :obj:`(M, N, 3)`, :obj:`(M, B, 3, 3)`)."""
        if self.cutoff is not None:
            edges = self.edges(data, edges)  # one list for every member
        return mean_of_members([m.energy_forces(data, edges, compute_stress) for m in self.members])

    def fit_scales(self, graphs: Any) -> float:
        raise ValueError(
            "a committee is made of trained models; fit each member's scales before joining them"
        )


def _signature(model: nn.Module) -> dict[str, Any]:
    """What the members of a committee must share."""
    weight = next(iter(model.parameters()), None)
    device = None if weight is None else weight.device
    return {
        "cutoff": model.cutoff,
        "dtype": model.dtype,
        "has_energy": model.has_energy,
        "device": device,
    }


def mean_of_members(outs: Sequence[dict[str, Tensor | None]]) -> dict[str, Any]:
    """The mean of the members' ``{"energy", "forces", "stress"}`` (:obj:`None` where any
    member has none), and under ``"members"`` the same keys stacked over the members."""
    stacked: dict[str, Tensor | None] = {}
    for key in ("energy", "forces", "stress"):
        values = [o.get(key) for o in outs]
        stacked[key] = None if any(v is None for v in values) else torch.stack(values)
    mean = {k: None if v is None else v.mean(dim=0) for k, v in stacked.items()}
    return {**mean, "members": stacked}


def force_deviation(forces_comm: Any) -> Any:
    r"""Per atom, how far the members' forces :obj:`(M, N, 3)` (a tensor or an array) spread
    about their mean: :math:`d_i = \sqrt{\langle |\mathbf{F}_i^{(m)} - \bar{\mathbf{F}}_i|^2
    \rangle_m}`, :obj:`(N)`, in the forces' units (DeePMD's "model deviation" of the
    forces; ``uenn-geo md`` and ``uenn-geo eval --per-structure`` report it)."""
    spread = forces_comm - forces_comm.mean(0)
    return ((spread**2).sum(-1).mean(0)) ** 0.5


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model files that ``path`` names: the file itself, or in a folder written by
    ``uenn-geo train`` its ``model.pt``, or with ``--committee N`` (its ``config.yaml`` says
    so) its members' ``member0/model.pt`` ... ``member<N-1>/model.pt``.

    Raises:
        FileNotFoundError: a folder without its model file, or a member's.
    """
    path = Path(path)
    if not path.is_dir():
        return [path]
    size = _committee_size(path / "config.yaml")
    files = [path / f"member{i}" / "model.pt" for i in range(size)] if size > 1 else []
    files = files or [path / "model.pt"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a finished uenn-geo train folder: no {', '.join(missing)} (a run "
            "that did not finish resumes when its command is run again); or give model files"
        )
    return files


def _committee_size(config: Path) -> int:
    """``committee`` in a training folder's ``config.yaml`` (1 without one)."""
    import yaml

    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return 1
    return int(values.get("committee", 1)) if isinstance(values, dict) else 1


def load_committee(
    paths: Sequence[str | os.PathLike], map_location: str | torch.device = "cpu"
) -> ForceModel:
    """The model of one file, or the :class:`Committee` of several
    (:func:`uenn_geo.models.load_model` for each), in evaluation mode; a folder stands for
    its model files (:func:`model_files`)."""
    from uenn_geo.models import load_model

    paths = [file for p in paths for file in model_files(p)]
    if not paths:
        raise ValueError("give at least one model file")
    models = [load_model(p, map_location=map_location) for p in paths]
    return models[0] if len(models) == 1 else Committee(models).eval()
