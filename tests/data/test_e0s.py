import json

import pytest
import torch
from torch_geometric.data import Data

from uenn_geo.data.e0s import (
    fit_average_e0s,
    is_isolated_atom,
    isolated_atom_energies,
    resolve_e0s,
)
from uenn_geo.data.extxyz import write_extxyz


def atom(z, energy, kind="IsolatedAtom"):
    return Data(pos=torch.zeros(1, 3), z=torch.tensor([z]), energy=torch.tensor([energy], dtype=torch.float64),
                forces=torch.zeros(1, 3), config_type=kind)  # fmt: skip


def molecule(counts, e0s, binding=0.0):
    z = [z for z, n in counts.items() for _ in range(n)]
    energy = sum(e0s[k] for k in z) + binding
    return Data(pos=torch.randn(len(z), 3), z=torch.tensor(z), energy=torch.tensor([energy], dtype=torch.float64),
                forces=torch.zeros(len(z), 3), config_type="Default")  # fmt: skip


E0S = {1: -13.6, 8: -2041.8}


def test_isolated_frames_are_found_and_checked():
    graphs = [atom(1, -13.6), atom(8, -2041.8, "isolated_atom"), molecule({1: 2, 8: 1}, E0S)]
    assert [is_isolated_atom(g) for g in graphs] == [True, True, False]
    assert isolated_atom_energies(graphs) == E0S
    with pytest.raises(ValueError, match="two isolated-atom energies for Z=1"):
        isolated_atom_energies([atom(1, -13.6), atom(1, -13.0)])


def test_every_source(tmp_path):
    train = [molecule({1: 2, 8: 1}, E0S, 0.1 * k) for k in range(3)]
    train += [molecule({1: 4, 8: 2}, E0S, 0.05), molecule({1: 1, 8: 2}, E0S)]
    isolated = {1: -13.6, 8: -2041.8}
    assert resolve_e0s(None, train, [1, 8], isolated) == isolated
    assert resolve_e0s(None, train, [1, 8], {}) is None
    assert resolve_e0s("isolated", train, [1, 8], isolated) == isolated
    with pytest.raises(ValueError, match="no frames with config_type IsolatedAtom"):
        resolve_e0s("isolated", train, [1, 8], {})
    assert resolve_e0s({"1": -1.0, 8: -2.0}, train, [1, 8]) == {1: -1.0, 8: -2.0}
    assert resolve_e0s(json.dumps({"1": -1.0, "8": -2.0}), train, [1, 8]) == {1: -1.0, 8: -2.0}
    path = tmp_path / "isolated.xyz"
    write_extxyz(path, [atom(1, -13.5), atom(8, -2040.0)])
    assert resolve_e0s(str(path), train, [1, 8]) == {1: -13.5, 8: -2040.0}
    with pytest.raises(ValueError, match="no E0 for atomic numbers \\[8\\]"):
        resolve_e0s({"1": -1.0}, train, [1, 8])
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_e0s("{1: -1", train, [1, 8])
    # least squares recovers E0s that explain the energies up to small binding energies
    average = resolve_e0s("average", train, [1, 8])
    assert average[1] == pytest.approx(-13.6, abs=0.05)
    assert average[8] == pytest.approx(-2041.8, abs=0.1)
    assert fit_average_e0s(train, [1, 8, 6])[6] == 0.0  # absent species
