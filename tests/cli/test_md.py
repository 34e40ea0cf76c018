import argparse
import csv
from dataclasses import MISSING, fields

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

from uenn_geo.cli.md import MDConfig, add_parser, config_from_args, run_md
from uenn_geo.data.paper import paper_md_initial_positions
from uenn_geo.models import UENNForceField, save_model

SMALL = {
    "cutoff": 8.0,
    "num_basis": 6,
    "hidden_channels": 8,
    "mlp_channels": [12],
    "interaction_channels": 3,
    "dtype": "float64",
}


@pytest.fixture
def inputs(tmp_path):
    model = UENNForceField(**SMALL, conservative=True)
    model.energy_scale.fill_(0.05)
    save_model(model, tmp_path / "model.pt")
    atoms = Atoms("Ar4", positions=paper_md_initial_positions().numpy())
    write(tmp_path / "start.xyz", atoms)
    return tmp_path


def config(root, out, **kwargs):
    base = {
        "structure": str(root / "start.xyz"),
        "model": str(root / "model.pt"),
        "out": str(root / out),
        "dt": 2.0,
        "steps": 20,
        "temperature": 40.0,
        "write_every": 5,
        "progress": False,
    }
    return MDConfig(**{**base, **kwargs})


def read_log(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_writes_frames_and_log(inputs):
    summary = run_md(config(inputs, "run"))
    frames = read(inputs / "run" / "trajectory.extxyz", index=":")
    rows = read_log(inputs / "run" / "log.csv")
    assert len(frames) == len(rows) == 20 // 5 + 1
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert [float(r["time_fs"]) for r in rows] == [0.0, 10.0, 20.0, 30.0, 40.0]
    last = frames[-1]
    assert last.arrays["velocities"].shape == (4, 3)
    assert np.abs(last.get_forces()).max() > 0
    assert np.abs(last.positions - frames[0].positions).max() > 1e-3
    assert np.isclose(last.info["potential"], last.get_potential_energy())
    total = [float(r["total"]) for r in rows]
    assert max(total) - min(total) < 1e-3 * max(abs(t) for t in total)  # NVE
    assert summary["steps"] == 20 and summary["frames"] == 5
    assert summary["energy_drift_eV_per_atom_per_ns"] is not None
    with pytest.raises(ValueError, match="--resume"):
        run_md(config(inputs, "run"))


@pytest.mark.parametrize("ensemble", ["nve", "langevin"])
def test_resume_matches_uninterrupted_run(inputs, ensemble):
    run_md(config(inputs, "full", ensemble=ensemble))
    run_md(config(inputs, "split", ensemble=ensemble, steps=10))
    summary = run_md(config(inputs, "split", ensemble=ensemble, resume=True))
    assert summary["steps"] == 10
    full = read(inputs / "full" / "trajectory.extxyz", index=":")
    split = read(inputs / "split" / "trajectory.extxyz", index=":")
    assert len(split) == len(full) == 5
    for a, b in zip(full, split, strict=True):
        assert a.info["step"] == b.info["step"]
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.arrays["velocities"], b.arrays["velocities"])
    assert read_log(inputs / "full" / "log.csv") == read_log(inputs / "split" / "log.csv")


def test_direct_model_and_parser(inputs):
    direct = UENNForceField(**SMALL)
    save_model(direct, inputs / "direct.pt")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "md",
            str(inputs / "start.xyz"),
            "--model",
            str(inputs / "direct.pt"),
            "--out",
            str(inputs / "direct"),
            "--steps",
            "4",
            "--write-every",
            "2",
            "--temperature",
            "20",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    rows = read_log(inputs / "direct" / "log.csv")
    assert len(rows) == 3 and rows[-1]["potential"] == "" and float(rows[-1]["kinetic"]) > 0
    with pytest.raises(ValueError, match="temperature"):
        MDConfig(structure="x", model="y", ensemble="langevin")
    with pytest.raises(ValueError, match="ensemble"):
        MDConfig(structure="x", model="y", ensemble="npt")


def test_parser_defaults_are_mdconfig_defaults():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["md", "start.xyz", "--model", "model.pt"])
    for f in fields(MDConfig):
        if f.default is MISSING:
            continue
        parsed = (not args.no_progress) if f.name == "progress" else getattr(args, f.name)
        assert parsed == f.default, f.name
    assert config_from_args(args) == MDConfig(structure="start.xyz", model="model.pt")
    assert "time step in fs (default: 1.0)" in sub.choices["md"].format_help()
