r"""Errors as users of the field read them: meV/atom, meV per structure, meV/A.

:func:`error_table` evaluates a model on graphs with reference ``forces`` (and ``energy``,
``stress`` where present) and returns, for all structures and for each ``config_type``:

=========================  ====================================================================
``structures``, ``atoms``  how many were evaluated
``energy_rmse_per_atom``   RMSE of :math:`(E - E^\mathrm{ref}) / N` in meV/atom (and ``_mae``)
``energy_rmse``            RMSE of :math:`E - E^\mathrm{ref}` in meV per structure (and ``_mae``)
``force_rmse``             RMSE over force components in meV/A (and ``force_mae``)
``force_rel_rmse``         ``force_rmse`` over the RMS of the reference forces, in %
``force_rmse_median``      the median and the worst of the structures' own force RMSEs (meV/A)
``force_rmse_worst``
``stress_rmse``            RMSE over stress components in meV/A\ :sup:`3` (structures with one)
=========================  ====================================================================

Energies and stresses are reported only for models with an energy (``has_energy``) and
graphs that carry them.

With ``per_structure`` (a list) :func:`error_table` also appends one row per structure, in
file order (:data:`PER_STRUCTURE_FIELDS`): the signed energy error per atom (meV/atom), the
structure's force RMSE and its largest force error on one atom (meV/A), and for a committee
(:class:`~uenn_geo.models.committee.Committee`) how far its members disagree there: the
largest and the mean over atoms of the force deviation
:math:`d_i = \sqrt{\langle |\mathbf{F}_i^{(m)} - \bar{\mathbf{F}}_i|^2 \rangle_m}` (meV/A)
and the members' energy standard deviation (meV/atom), to check whether the spread predicts
the error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from uenn_geo.models.committee import Committee, force_deviation
from uenn_geo.train.dense import batches
from uenn_geo.train.loss import has_energy

__all__ = ["error_table", "format_table", "ALL", "PER_STRUCTURE_FIELDS"]

#: The row of every structure together.
ALL = "all"

#: The columns of the per-structure rows (meV/atom, meV/A; the last three for committees).
PER_STRUCTURE_FIELDS = [
    "index",
    "config_type",
    "atoms",
    "energy_error_per_atom",
    "force_rmse",
    "force_max_error",
    "force_dev_max",
    "force_dev_mean",
    "energy_dev_per_atom",
]


class _Sums:
    """Running sums of one row of the table."""

    def __init__(self) -> None:
        self.structures = self.atoms = 0
        self.e_sq = self.e_abs = self.ea_sq = self.ea_abs = 0.0
        self.energies = 0
        self.f_sq = self.f_abs = self.f_ref_sq = 0.0
        self.f_count = 0
        self.frame_rmse: list[float] = []
        self.s_sq = 0.0
        self.s_count = 0

    def add(self, sample: dict[str, Any]) -> None:
        self.structures += 1
        self.atoms += sample["atoms"]
        diff, ref = sample["force_diff"], sample["force_ref"]
        self.f_sq += float(diff.square().sum())
        self.f_abs += float(diff.abs().sum())
        self.f_ref_sq += float(ref.square().sum())
        self.f_count += diff.numel()
        self.frame_rmse.append(math.sqrt(float(diff.square().mean())) if diff.numel() else 0.0)
        if sample.get("energy_diff") is not None:
            de = sample["energy_diff"]
            self.energies += 1
            self.e_sq += de * de
            self.e_abs += abs(de)
            self.ea_sq += (de / sample["atoms"]) ** 2
            self.ea_abs += abs(de / sample["atoms"])
        if sample.get("stress_diff") is not None:
            self.s_sq += float(sample["stress_diff"].square().sum())
            self.s_count += 9

    def row(self) -> dict[str, float | int]:
        """The row in meV units."""
        out: dict[str, float | int] = {"structures": self.structures, "atoms": self.atoms}
        if self.energies:
            n = self.energies
            out["energy_rmse_per_atom"] = 1e3 * math.sqrt(self.ea_sq / n)
            out["energy_mae_per_atom"] = 1e3 * self.ea_abs / n
            out["energy_rmse"] = 1e3 * math.sqrt(self.e_sq / n)
            out["energy_mae"] = 1e3 * self.e_abs / n
        if self.f_count:
            rmse = math.sqrt(self.f_sq / self.f_count)
            out["force_rmse"] = 1e3 * rmse
            out["force_mae"] = 1e3 * self.f_abs / self.f_count
            ref = math.sqrt(self.f_ref_sq / self.f_count)
            out["force_rel_rmse"] = 100 * rmse / ref if ref > 0 else math.nan
            frames = sorted(self.frame_rmse)
            out["force_rmse_median"] = 1e3 * frames[len(frames) // 2]
            out["force_rmse_worst"] = 1e3 * frames[-1]
        if self.s_count:
            out["stress_rmse"] = 1e3 * math.sqrt(self.s_sq / self.s_count)
        return out


def _samples(model: nn.Module, batch: Any) -> list[dict[str, Any]]:
    """Per-structure differences of one batch (float64, eV units)."""
    energies = has_energy(model) and getattr(batch, "energy", None) is not None
    stress = energies and getattr(batch, "stress", None) is not None
    if energies or isinstance(model, Committee):  # a committee: its members' forces too
        out = model.energy_forces(batch, compute_stress=stress)
    else:
        out = {"forces": model(batch), "energy": None, "stress": None}
    forces = out["forces"].detach().double()
    members = out.get("members") or {}
    dev = None
    if members.get("forces") is not None:  # a committee: each atom's force deviation
        comm = members["forces"].detach().double()
        dev = force_deviation(comm)
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        ptr = torch.tensor([0, forces.shape[0]])
    types = getattr(batch, "config_type", None)
    if isinstance(types, str):
        types = [types]
    samples = []
    for g in range(ptr.numel() - 1):
        lo, hi = int(ptr[g]), int(ptr[g + 1])
        ref = batch.forces[lo:hi].double()
        sample = {
            "atoms": hi - lo,
            "config_type": types[g] if types is not None else None,
            "force_diff": forces[lo:hi] - ref,
            "force_ref": ref,
        }
        if dev is not None:
            sample["force_dev"] = dev[lo:hi]
            if energies and members.get("energy") is not None:
                energy = members["energy"].detach().double().reshape(len(comm), -1)[:, g]
                sample["energy_dev"] = float(energy.std(correction=0))
        if energies:
            e_ref = float(batch.energy.reshape(-1)[g])
            sample["energy_diff"] = float(out["energy"].reshape(-1)[g]) - e_ref
        if stress and _stress_known(batch, g):
            diff = out["stress"][g].detach().double() - batch.stress.reshape(-1, 3, 3)[g].double()
            sample["stress_diff"] = diff
        samples.append(sample)
    return samples


def _stress_known(batch: Any, g: int) -> bool:
    weight = getattr(batch, "stress_weight", None)
    return weight is None or float(weight.reshape(-1)[g]) > 0


def error_table(
    model: nn.Module,
    data: Any,
    batch_size: int = 64,
    per_structure: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The errors of ``model`` on ``data``: ``{"all": row, config_type: row, ...}`` in meV
    units (see the module docstring); one row per ``config_type`` when there are several.
    Rows of each structure are appended to ``per_structure`` when it is given."""
    was_training = model.training
    model.eval()
    sums: dict[str, _Sums] = defaultdict(_Sums)
    try:
        for batch in batches(data, batch_size):
            for sample in _samples(model, batch):
                if per_structure is not None:
                    per_structure.append(_structure_row(sample, len(per_structure)))
                sums[ALL].add(sample)
                if sample["config_type"] is not None:
                    sums[sample["config_type"]].add(sample)
    finally:
        model.train(was_training)
    if not sums:
        raise ValueError("cannot evaluate on an empty data set")
    table = {ALL: sums[ALL].row()}
    types = [k for k in sums if k != ALL]
    if len(types) > 1:
        table.update({k: sums[k].row() for k in sorted(types)})
    return table


def _structure_row(sample: dict[str, Any], index: int) -> dict[str, Any]:
    """One structure's row of :data:`PER_STRUCTURE_FIELDS` (meV units)."""
    diff = sample["force_diff"]
    row: dict[str, Any] = {
        "index": index,
        "config_type": sample["config_type"],
        "atoms": sample["atoms"],
        "force_rmse": 1e3 * math.sqrt(float(diff.square().mean())) if diff.numel() else 0.0,
        "force_max_error": 1e3 * float(diff.norm(dim=-1).max()) if diff.numel() else 0.0,
    }
    if sample.get("energy_diff") is not None:
        row["energy_error_per_atom"] = 1e3 * sample["energy_diff"] / sample["atoms"]
    if sample.get("force_dev") is not None:
        row["force_dev_max"] = 1e3 * float(sample["force_dev"].max())
        row["force_dev_mean"] = 1e3 * float(sample["force_dev"].mean())
    if sample.get("energy_dev") is not None:
        row["energy_dev_per_atom"] = 1e3 * sample["energy_dev"] / sample["atoms"]
    return row


_COLUMNS = [
    ("structures", "N", "{:d}"),
    ("energy_rmse_per_atom", "E RMSE meV/atom", "{:.3g}"),
    ("energy_mae_per_atom", "E MAE meV/atom", "{:.3g}"),
    ("energy_rmse", "E RMSE meV", "{:.3g}"),
    ("energy_mae", "E MAE meV", "{:.3g}"),
    ("force_rmse", "F RMSE meV/A", "{:.3g}"),
    ("force_mae", "F MAE meV/A", "{:.3g}"),
    ("force_rel_rmse", "F rel %", "{:.3g}"),
    ("force_rmse_worst", "F worst meV/A", "{:.3g}"),
    ("stress_rmse", "S RMSE meV/A^3", "{:.3g}"),
]


def format_table(tables: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table of :func:`error_table` results: ``{name: table}``, one row per
    name and ``config_type``; columns without values are left out."""
    rows = [
        (name if key == ALL else f"{name} / {key}", row)
        for name, table in tables.items()
        for key, row in table.items()
    ]
    columns = [c for c in _COLUMNS if any(c[0] in row for _, row in rows)]
    lines = [
        "| set | " + " | ".join(c[1] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for key, _, fmt in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
