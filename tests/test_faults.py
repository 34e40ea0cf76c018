"""Fault injection: kill -9 during training and MD then resume, concurrent runs on one output
directory, damaged and truncated files, bad inputs; each asserts the message or the recovery
(see docs/reliability.md). Small data and models; the killed runs are subprocesses."""

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from uenn_geo.cli import main
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import paper_md_initial_positions, sample_paper_configurations
from uenn_geo.files import LOCK_NAME
from uenn_geo.models import UENNForceField, load_model, save_model

SMALL = {"num_blocks": 1, "hidden_channels": 4, "mlp_channels": [6], "num_basis": 6}
MD_MODEL = {"cutoff": 8.0, "num_basis": 6, "hidden_channels": 8, "mlp_channels": [12]}
TIME_COLUMNS = ("elapsed_s", "epoch_time_s", "data_wait_s")


@pytest.fixture(autouse=True)
def _umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """``data.xyz``: 16 argon clusters of 4 atoms with LJ energies and forces; ``start.xyz``
    and ``md.pt``: a structure and a small model for MD."""
    root = tmp_path_factory.mktemp("faults")
    pos = sample_paper_configurations(16, generator=torch.Generator().manual_seed(0)).double()
    energy, forces = lennard_jones(pos)[:2]
    frames = []
    for k in range(len(pos)):
        atoms = ase.Atoms("Ar4", positions=pos[k].numpy())
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy[k]), forces=forces[k].numpy())
        frames.append(atoms)
    ase.io.write(root / "data.xyz", frames, format="extxyz")
    model = UENNForceField(**MD_MODEL, dtype="float64", conservative=True)
    model.energy_scale.fill_(0.05)
    save_model(model, root / "md.pt")
    ase.io.write(root / "start.xyz", ase.Atoms("Ar4", positions=paper_md_initial_positions()))
    return root


def train_args(root, out, *extra, data="data.xyz"):
    return [
        "train",
        "--data",
        str(root / data),
        "--out",
        str(out),
        "--root",
        str(root / "cache"),
        "--cutoff",
        "8",
        "--batch-size",
        "4",
        "--model-kwargs",
        json.dumps(SMALL),
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def md_args(root, out, steps, *extra):
    return [
        "md",
        str(root / "start.xyz"),
        "--model",
        str(root / "md.pt"),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--write-every",
        "1",
        "--dt",
        "2",
        "--temperature",
        "40",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


def spawn(args):
    code = "import sys; from uenn_geo.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.umask(0o022),
    )


def wait_for(proc, ready, what):
    """Poll until ``ready()``; fail with the process's stderr if it ends first."""
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read().decode()}")
        time.sleep(0.02)


def kill_9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def log_rows(path):
    rows = Path(path).read_text().splitlines()
    header = rows[0].split(",")
    keep = [k for k, name in enumerate(header) if name not in TIME_COLUMNS]
    return [[line.split(",")[k] for k in keep] for line in rows]


def assert_readable_by_all(directory):
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_train_killed_at_a_random_point_resumes_to_the_uninterrupted_result(root, capsys):
    epochs = 20
    assert main(train_args(root, root / "reference", "--max-epochs", str(epochs))) == 0
    out = root / "killed"
    proc = spawn(train_args(root, out, "--max-epochs", str(epochs)))
    wait_for(proc, lambda: (out / LOCK_NAME).exists(), "taking the lock")
    # a second run on the same --out is refused, naming the owner
    assert main(train_args(root, out, "--max-epochs", str(epochs))) == 2
    assert f"in use by uenn-geo train (pid {proc.pid}" in capsys.readouterr().err
    kill_at = random.randint(1, epochs - 4)  # an epoch, then a random moment within it
    wait_for(proc, lambda: epochs_done(out) >= kill_at, f"epoch {kill_at}")
    time.sleep(random.uniform(0.0, 0.05))
    kill_9(proc)
    assert proc.returncode == -signal.SIGKILL and (out / LOCK_NAME).exists()
    assert epochs_done(out) < epochs
    (out / ".model.pt.killed.tmp").write_bytes(b"half a file")  # as a killed write leaves
    assert main(train_args(root, out, "--max-epochs", str(epochs))) == 0
    err = capsys.readouterr().err
    assert f"taking over {out / LOCK_NAME}" in err and f"pid {proc.pid}" in err
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()
    ref, res = load_model(root / "reference" / "model.pt"), load_model(out / "model.pt")
    for name, value in ref.state_dict().items():
        assert torch.equal(value, res.state_dict()[name]), name
    assert log_rows(root / "reference" / "log.csv") == log_rows(out / "log.csv")
    metrics = strict_json(out / "metrics.json")
    assert metrics["errors"] == strict_json(root / "reference" / "metrics.json")["errors"]
    assert metrics["epochs"] == epochs
    # the same command again: the run has finished, and it says how to continue
    with pytest.warns(UserWarning, match=rf"already finished \(max_epochs: epoch {epochs}.*"):
        assert main(train_args(root, out, "--max-epochs", str(epochs))) == 0
    assert_readable_by_all(out)
    assert_readable_by_all(root / "cache")


def epochs_done(out):
    log = out / "log.csv"
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


def test_md_killed_at_a_random_point_resumes_exactly(root, capsys):
    out = root / "md-killed"
    proc = spawn(md_args(root, out, 100000))
    wait_for(proc, lambda: (out / "log.csv").exists(), "its first frame")
    assert main(md_args(root, out, 10, "--resume")) == 2  # a concurrent run is refused
    assert f"in use by uenn-geo md (pid {proc.pid}" in capsys.readouterr().err
    time.sleep(random.uniform(0.1, 0.6))
    kill_9(proc)
    text = (out / "trajectory.extxyz").read_text()
    frames = text.count("Properties=")
    steps = frames + 5  # past every frame written, complete or not
    assert main(md_args(root, out, steps, "--resume")) == 0
    assert "taking over" in capsys.readouterr().err
    assert main(md_args(root, root / "md-reference", steps)) == 0
    full = ase.io.read(root / "md-reference" / "trajectory.extxyz", index=":")
    resumed = ase.io.read(out / "trajectory.extxyz", index=":")
    assert [a.info["step"] for a in resumed] == list(range(steps + 1))
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.arrays["velocities"], b.arrays["velocities"])
    reference_log = (root / "md-reference" / "log.csv").read_text()
    assert (out / "log.csv").read_text() == reference_log
    assert_readable_by_all(out)


def test_resume_with_other_data_or_split_is_refused(root, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(root, out, "--max-epochs", "1")) == 0
    frames = ase.io.read(root / "data.xyz", ":")
    ase.io.write(tmp_path / "more.xyz", frames + frames[:2], format="extxyz")
    capsys.readouterr()
    more = train_args(root, out, "--max-epochs", "2", data=tmp_path / "more.xyz")
    assert main(more) == 2
    err = capsys.readouterr().err
    assert "another run: --data (SHA-1 of the file)" in err and "--restart" in err
    assert main(train_args(root, out, "--max-epochs", "2", "--val-fraction", "0.2")) == 2
    assert "split (--val-fraction" in capsys.readouterr().err
    assert main([*more, "--restart"]) == 0


def test_damaged_files_refuse_to_load(root, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(root, out, "--max-epochs", "1")) == 0
    # 8 bytes zeroed inside the weights of model.pt
    model = out / "model.pt"
    with zipfile.ZipFile(model) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size if "/data/" in i.filename else 0)
    raw = bytearray(model.read_bytes())
    header = info.header_offset
    start = header + 30 + int.from_bytes(raw[header + 26 : header + 28], "little")
    start += int.from_bytes(raw[header + 28 : header + 30], "little")
    raw[start : start + 8] = bytes(8)
    model.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--file", str(root / "data.xyz")]) == 2
    assert "is damaged: its weights do not match their stored SHA-256" in capsys.readouterr().err
    # a truncated checkpoint on resume suggests --restart
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert main(train_args(root, out, "--max-epochs", "2")) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt cannot be read (damaged or truncated" in err and "--restart" in err
    # a model file from before the checksums still loads
    record = torch.load(root / "md.pt", weights_only=True)
    del record["sha256"]
    torch.save(record, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config == load_model(root / "md.pt").config


def test_eval_output_is_readable_by_all(root, tmp_path):
    save_model(UENNForceField(**MD_MODEL, dtype="float64"), tmp_path / "m.pt")
    out = tmp_path / "eval" / "errors.json"
    assert main(["eval", "--model", str(tmp_path / "m.pt"), "--file", str(root / "data.xyz"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert strict_json(out)
    assert_readable_by_all(out.parent)


def cut(text):
    """``text`` cut inside a line near its middle (its last column gone)."""
    return text[: text.index("\n", len(text) // 2) - 20]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda t: "", "the file is empty"),
        (lambda t: cut(t), r"frame 7 \(line 48\): expected 7 columns, got 6"),
        (lambda t: t.rsplit("\n", 4)[0] + "\n", r"frame 15 \(line 91\): .* cut short: 1 of 4 atom"),
        (lambda t: t.rstrip("\n")[:-3], r"frame 15 \(line 96\): the file ends inside a number"),
        (lambda t: t.replace("Ar", "Xx", 1), r"frame 0 \(line 3\): unknown element symbol 'Xx'"),
        (lambda t: "x\n" + t, r"frame 0 \(line 1\): expected the number of atoms"),
    ],
    ids=["empty", "half", "lines", "number", "element", "count"],
)
def test_bad_structure_files_are_named_with_the_frame(root, capsys, tmp_path, content, message):
    (tmp_path / "bad.xyz").write_text(content((root / "data.xyz").read_text()))
    args = train_args(root, tmp_path / "run", "--max-epochs", "1", data=tmp_path / "bad.xyz")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.xyz" in err
    assert re.search(message, err), err


def test_a_file_without_a_final_newline_warns(root, tmp_path):
    from uenn_geo.data.extxyz import read_frames

    (tmp_path / "cut.xyz").write_text((root / "data.xyz").read_text().rstrip("\n"))
    with pytest.warns(UserWarning, match=r"does not end with a newline.*frame 15, line 96"):
        assert len(read_frames(tmp_path / "cut.xyz")) == 16


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--time-limit", "0"], "--time-limit must be > 0, got 0.0"),
        (["--time-limit", "-5"], "--time-limit must be > 0, got -5.0"),
        (["--model-kwargs", '{"num_blockz": 1}'], "--model-kwargs for the graph model"),
    ],
)
def test_bad_options_are_one_line_errors(root, capsys, tmp_path, extra, message):
    assert main(train_args(root, tmp_path / "run", "--max-epochs", "1", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_json_and_an_output_that_is_a_file(root, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(train_args(root, tmp_path / "run", "--model-kwargs", "{num_blocks: 1}"))
    assert exit_.value.code == 2
    assert "--model-kwargs: not valid JSON" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a directory")
    assert main(train_args(root, tmp_path / "file", "--max-epochs", "1")) == 2
    assert "--out " + str(tmp_path / "file") + " is a file" in capsys.readouterr().err
    assert main(md_args(root, tmp_path / "file", 2)) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_is_refused_before_training(root, capsys, tmp_path):
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    assert main(train_args(root, out, "--max-epochs", "1")) == 2
    assert "is not a writable directory" in capsys.readouterr().err


def test_graphs_without_edges_are_warned_about(root, capsys, tmp_path):
    args = train_args(root, tmp_path / "run", "--max-epochs", "1")
    args[args.index("--cutoff") + 1] = "0.5"
    with pytest.warns(UserWarning, match="12 of 12 training structures have no pair of atoms "
                      "within the cutoff 0.5 A"):  # fmt: skip
        assert main(args) == 0
    assert strict_json(tmp_path / "run" / "metrics.json")["epochs"] == 1
