import argparse
import csv
from dataclasses import MISSING, fields

import numpy as np
import pytest
import torch
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


def test_resume_after_a_crash_mid_frame_matches_uninterrupted_run(inputs):
    """A kill inside a frame's write leaves a partial frame and log line (and restart.npz of
    the frame before): --resume cuts both back and continues exactly."""
    run_md(config(inputs, "full"))
    run_md(config(inputs, "cut", steps=15))
    traj, log = inputs / "cut" / "trajectory.extxyz", inputs / "cut" / "log.csv"
    text = traj.read_text()
    last = text[text.rindex("4\nProperties") :]
    with open(traj, "a") as f:  # half of another frame, as a kill leaves it
        f.write(last[: len(last) // 2])
    with open(log, "a") as f:
        f.write("2")  # the start of the row of step 20, cut inside its first number
    summary = run_md(config(inputs, "cut", resume=True))
    assert summary["steps"] == 5
    full = read(inputs / "full" / "trajectory.extxyz", index=":")
    cut = read(traj, index=":")
    assert [f.info["step"] for f in cut] == [0, 5, 10, 15, 20]
    for a, b in zip(full, cut, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert read_log(inputs / "full" / "log.csv") == read_log(log)


def test_resume_drops_frames_after_the_restart_state(inputs):
    """A kill after a frame and its log row were appended, before restart.npz was replaced."""
    run_md(config(inputs, "full"))
    run_md(config(inputs, "cut", steps=10))
    restart = (inputs / "cut" / "restart.npz").read_bytes()
    run_md(config(inputs, "cut", steps=15, resume=True))
    (inputs / "cut" / "restart.npz").write_bytes(restart)  # back to step 10
    run_md(config(inputs, "cut", resume=True))
    assert read_log(inputs / "full" / "log.csv") == read_log(inputs / "cut" / "log.csv")
    full = read(inputs / "full" / "trajectory.extxyz", index=":")
    cut = read(inputs / "cut" / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in cut] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(full[-1].positions, cut[-1].positions)


@pytest.mark.parametrize(
    ("change", "flag"),
    [({"dt": 1.0}, "--dt"), ({"temperature": 80.0}, "--temperature"), ("model", "--model")],
)
def test_resume_refuses_changed_settings(inputs, change, flag):
    run_md(config(inputs, "run", steps=10))
    if change == "model":
        other = UENNForceField(**SMALL, conservative=True)
        save_model(other, inputs / "other.pt")
        change = {"model": str(inputs / "other.pt")}
    with pytest.raises(ValueError, match=rf"other settings \({flag}.* was .*another --out"):
        run_md(config(inputs, "run", resume=True, **change))
    assert len(read(inputs / "run" / "trajectory.extxyz", index=":")) == 3  # untouched


def test_a_run_directory_in_use_is_refused(inputs):
    from uenn_geo.files import RunLock

    with RunLock(inputs / "busy", "md"), pytest.raises(ValueError, match="in use by uenn-geo md"):
        run_md(config(inputs, "busy"))
    assert not (inputs / "busy" / "trajectory.extxyz").exists()


def test_memory_warning_for_large_neighbour_lists():
    from ase.build import bulk

    from uenn_geo.perf import warn_graph_memory

    copper = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((17, 17, 17))  # 19,652 atoms
    with pytest.warns(RuntimeWarning, match=r"19652 atoms at the cutoff 10.2 A.*smaller cutoff"):
        pairs, needed = warn_graph_memory(copper, 10.2, 0.0, available=8e9)
    assert 6e6 < pairs < 9e6 and 6e9 < needed < 9e9  # 7.4 million pairs, 7.4 GB measured
    small = Atoms("Ar4", positions=paper_md_initial_positions().numpy())
    assert warn_graph_memory(small, 8.0, 1.0, available=8e9)[0] <= 12  # at most all pairs


def test_long_runs_compile_under_auto_and_match_eager(inputs, monkeypatch):
    """compile="auto" compiles runs of MD_COMPILE_MIN_STEPS or more (lowered here), reports the
    compilation time, and follows the eager trajectory to float round-off."""
    import uenn_geo.cli.md as md

    eager = run_md(config(inputs, "eager", steps=10))
    assert eager["compile_s"] is None  # 4 atoms, 10 steps: eager under "auto"
    monkeypatch.setattr(md, "MD_COMPILE_MIN_STEPS", 10)
    compiled = run_md(config(inputs, "compiled", steps=10))
    assert compiled["compile_s"] > 0
    a = read(inputs / "eager" / "trajectory.extxyz", index=-1)
    b = read(inputs / "compiled" / "trajectory.extxyz", index=-1)
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="compile"):
        MDConfig(structure="x", model="y", compile="always")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["md", "s.xyz", "--model", "m.pt", "--compile", "no"])
    assert config_from_args(args).compile is False


def test_committee_moves_by_the_mean_and_logs_its_disagreement(inputs):
    """Two models: the atoms move by the members' mean forces (the same trajectory as the
    Committee model alone), the log and the frames hold the force deviation, equal to that of
    the members evaluated one by one; a model with itself disagrees nowhere; resume matches."""
    from uenn_geo.calculator import UENNCalculator
    from uenn_geo.cli.md import COMMITTEE_FIELDS
    from uenn_geo.models import Committee, load_model
    from uenn_geo.models.committee import force_deviation

    other = UENNForceField(**SMALL, conservative=True)
    other.energy_scale.fill_(0.05)
    save_model(other, inputs / "other.pt")
    pair = (str(inputs / "model.pt"), str(inputs / "other.pt"))
    summary = run_md(config(inputs, "pair", model=pair))
    rows = read_log(inputs / "pair" / "log.csv")
    frames = read(inputs / "pair" / "trajectory.extxyz", index=":")
    assert list(rows[0]) == [
        "step", "time_fs", "potential", "kinetic", "total", "temperature_K", *COMMITTEE_FIELDS
    ]  # fmt: skip
    members = [load_model(p) for p in pair]
    for frame, row in zip(frames, rows, strict=True):
        comm = []
        for m in members:
            atoms = frame.copy()
            atoms.calc = UENNCalculator(m)
            comm.append(atoms.get_forces())
        comm = np.stack(comm)
        dev = np.sqrt(((comm - comm.mean(0)) ** 2).sum(-1).mean(0))
        assert dev.max() > 1e-4  # two different models disagree
        np.testing.assert_allclose(frame.arrays["force_dev"], dev, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(float(row["force_dev_max"]), dev.max(), rtol=1e-4)
        np.testing.assert_allclose(float(row["force_dev_mean"]), dev.mean(), rtol=1e-4)
        np.testing.assert_allclose(frame.get_forces(), comm.mean(0), rtol=1e-4, atol=1e-7)
        assert float(row["energy_dev"]) > 0  # (extxyz keeps 8 decimals: hence rtol 1e-4)
    assert summary["force_dev_max"] == max(float(r["force_dev_max"]) for r in rows)
    np.testing.assert_allclose(force_deviation(np.zeros((3, 4, 3))), np.zeros(4))

    # The same path as the Committee model through the calculator: the mean's trajectory.
    save_model(Committee(members).members[0], inputs / "again.pt")
    same = run_md(config(inputs, "same", model=(pair[0], str(inputs / "again.pt"))))
    assert same["force_dev_max"] == 0.0
    single = read(inputs / "same" / "trajectory.extxyz", index=-1)
    alone = run_md(config(inputs, "alone"))
    assert "force_dev_max" not in alone
    np.testing.assert_array_equal(
        single.positions, read(inputs / "alone" / "trajectory.extxyz", index=-1).positions
    )

    # Resumed, the committee's run is the uninterrupted one; another committee is refused.
    run_md(config(inputs, "split", model=pair, steps=10))
    run_md(config(inputs, "split", model=pair, resume=True))
    assert read_log(inputs / "split" / "log.csv") == rows
    with pytest.raises(ValueError, match=r"other settings \(--model"):
        run_md(config(inputs, "split", model=pair[::-1], steps=30, resume=True))


def test_committee_from_the_command_line(inputs):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["md", "s.xyz", "--model", "a.pt", "b.pt"])
    assert config_from_args(args).model == ("a.pt", "b.pt")
    args = parser.parse_args(["md", "s.xyz", "--model", "a.pt"])
    assert config_from_args(args).model == "a.pt"
    with pytest.raises(ValueError, match="at least one model"):
        MDConfig(structure="s.xyz", model=())
    with pytest.raises(FileNotFoundError, match="no model file at .*missing.pt"):
        run_md(config(inputs, "x", model=(str(inputs / "model.pt"), str(inputs / "missing.pt"))))


def test_a_committee_folder_of_uenn_geo_train_runs_as_a_committee(inputs):
    folder = inputs / "committee"
    folder.mkdir()
    (folder / "config.yaml").write_text("committee: 2\n")  # as uenn-geo train writes it
    for i in range(2):
        torch.manual_seed(i)
        member = UENNForceField(**SMALL, conservative=True)
        member.energy_scale.fill_(0.05)
        save_model(member, folder / f"member{i}" / "model.pt")
    run_md(config(inputs, "from_folder", model=str(folder), steps=5))
    rows = read_log(inputs / "from_folder" / "log.csv")
    assert "force_dev_max" in rows[0] and float(rows[-1]["force_dev_max"]) > 0
    run_md(config(inputs, "one", model=str(inputs), steps=5))  # a folder with a model.pt
    assert "force_dev_max" not in read_log(inputs / "one" / "log.csv")[0]
