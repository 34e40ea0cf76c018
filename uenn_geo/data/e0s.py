r"""Isolated-atom reference energies (E0s): where they come from.

A DFT total energy is thousands of eV; most of it is the energy of the isolated atoms, which
the model should not have to learn. The E0s :math:`E^0_z` (eV per atom of atomic number
:math:`z`) are subtracted, so the network learns the interaction energy
:math:`E - \sum_i E^0_{z_i}` (as in MACE and NequIP). :func:`resolve_e0s` takes them

* from frames with ``config_type`` ``IsolatedAtom`` (or ``isolated_atom``) in the training
  data (``"isolated"``; such frames are then kept out of the training set),
* from a separate file of such frames (a path),
* from an explicit mapping ``{Z: eV}`` (or its JSON text),
* or fitted by least squares to the training energies (``"average"``):
  :math:`E_g \approx \sum_z n_{gz} E^0_z`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from uenn_geo.data.extxyz import ISOLATED_ATOM_TYPES, read_frames

__all__ = ["is_isolated_atom", "isolated_atom_energies", "fit_average_e0s", "resolve_e0s"]


def is_isolated_atom(data: Any) -> bool:
    """Whether a graph is an isolated-atom frame (one atom, ``config_type`` IsolatedAtom)."""
    return data.pos.shape[0] == 1 and getattr(data, "config_type", None) in ISOLATED_ATOM_TYPES


def isolated_atom_energies(graphs: Iterable[Any], where: str = "the data") -> dict[int, float]:
    """``{Z: energy}`` of the isolated-atom frames among ``graphs`` (eV)."""
    e0s: dict[int, float] = {}
    for d in graphs:
        if not is_isolated_atom(d):
            continue
        energy = getattr(d, "energy", None)
        if energy is None:
            raise ValueError(f"{where}: an isolated-atom frame has no energy")
        z = int(d.z[0])
        value = float(torch.as_tensor(energy).reshape(-1)[0])
        if z in e0s and abs(e0s[z] - value) > 1e-8 * max(1.0, abs(value)):
            raise ValueError(f"{where}: two isolated-atom energies for Z={z}: {e0s[z]}, {value}")
        e0s[z] = value
    return e0s


def fit_average_e0s(graphs: Iterable[Any], species: Sequence[int]) -> dict[int, float]:
    r"""E0s by least squares, :math:`E_g \approx \sum_z n_{gz} E^0_z`, over graphs with
    ``energy``; species absent from every graph get 0."""
    species = [int(z) for z in species]
    column = {z: k for k, z in enumerate(species)}
    rows, energies = [], []
    for d in graphs:
        count = torch.zeros(len(species), dtype=torch.float64)
        for z in d.z.tolist():
            count[column[int(z)]] += 1
        rows.append(count)
        energies.append(float(torch.as_tensor(d.energy).reshape(-1)[0]))
    if not rows:
        raise ValueError("--E0s average needs training frames with energies")
    a, b = torch.stack(rows), torch.tensor(energies, dtype=torch.float64).unsqueeze(1)
    present = a.sum(0) > 0
    solution = torch.linalg.lstsq(a[:, present], b, driver="gelsd").solution.squeeze(1)
    values = torch.zeros(len(species), dtype=torch.float64)
    values[present] = solution
    return {z: float(values[k]) for z, k in column.items()}


def _from_mapping(mapping: Mapping[Any, Any], source: str) -> dict[int, float]:
    try:
        return {int(z): float(e) for z, e in mapping.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: E0s must map atomic numbers to energies in eV") from err


def resolve_e0s(
    spec: str | Mapping[Any, Any] | None,
    train_graphs: Sequence[Any],
    species: Sequence[int],
    isolated: Mapping[int, float] | None = None,
) -> dict[int, float] | None:
    """The E0s ``{Z: eV}`` that ``spec`` names, for every atomic number in ``species``.

    Args:
        spec: :obj:`None` (the isolated-atom frames' energies if the training data has any,
            otherwise no E0s), ``"isolated"``, ``"average"``, a file of isolated-atom frames,
            a mapping ``{Z: eV}``, or the JSON text of one.
        train_graphs: the training graphs (with ``energy`` for ``"average"``).
        species: the atomic numbers the model will know.
        isolated: the isolated-atom energies found in the training data.

    Raises:
        ValueError: the spec is not understood, or leaves a species without an E0.
    """
    isolated = dict(isolated or {})
    if spec is None:
        if not isolated:
            return None
        e0s, source = isolated, "the isolated-atom frames of the training data"
    elif isinstance(spec, Mapping):
        e0s, source = _from_mapping(spec, "--E0s"), "--E0s"
    elif spec == "isolated":
        if not isolated:
            raise ValueError(
                "--E0s isolated: the training data has no frames with config_type "
                f"{' or '.join(ISOLATED_ATOM_TYPES)}; pass a file, a mapping or 'average'"
            )
        e0s, source = isolated, "the isolated-atom frames of the training data"
    elif spec == "average":
        return fit_average_e0s(train_graphs, species)
    elif os.path.isfile(spec):
        frames = read_frames(spec, min_distance=0.0)
        e0s = isolated_atom_energies(
            [f for f in frames if f.pos.shape[0] == 1 and _tag_isolated(f)], spec
        )
        source = spec
    elif spec.strip().startswith("{"):
        try:
            e0s, source = _from_mapping(json.loads(spec), "--E0s"), "--E0s"
        except json.JSONDecodeError as err:
            raise ValueError(f"--E0s is not valid JSON ({err}): {spec!r}") from err
    else:
        raise ValueError(
            f"--E0s {spec!r} is none of: 'isolated', 'average', an existing file, a JSON "
            'mapping such as \'{"1": -13.6, "8": -2041.8}\''
        )
    missing = sorted(set(int(z) for z in species) - set(e0s))
    if missing:
        raise ValueError(f"{source} gives no E0 for atomic numbers {missing}")
    return {int(z): e0s[int(z)] for z in species}


def _tag_isolated(frame: Any) -> bool:
    """In a file given for the E0s, every single-atom frame counts as an isolated atom."""
    frame.config_type = ISOLATED_ATOM_TYPES[0]
    return True


def e0s_path_or_spec(value: str | None) -> str | None:
    """``value`` with a path made absolute, so that a resumed run finds the same file."""
    if value is not None and os.path.isfile(value):
        return str(Path(value).resolve())
    return value
