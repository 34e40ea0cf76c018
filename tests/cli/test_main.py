"""``uenn-geo train`` on a user's extended-XYZ file, end to end (seconds)."""

import dataclasses
import json

import pytest
import torch

import uenn_geo
from uenn_geo.cli import build_parser, main
from uenn_geo.cli.train import TrainJob, job_from_args
from uenn_geo.data import LJClusters, write_extxyz
from uenn_geo.data.registry import load_dataset
from uenn_geo.data.transforms import CastFloats
from uenn_geo.files import read_csv
from uenn_geo.train import TrainConfig, evaluate


@pytest.fixture
def xyz(tmp_path):
    clusters = LJClusters(
        str(tmp_path / "clusters"), num_configs=24, min_atoms=3, max_atoms=8, log=False
    )
    path = tmp_path / "frames.extxyz"
    write_extxyz(path, list(clusters))
    return path


def test_train_command_on_extxyz(tmp_path, xyz, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(xyz),
        "--out",
        str(out),
        "--root",
        str(tmp_path / "cache"),
        "--max-epochs",
        "2",
        "--time-limit",
        "60",
        "--batch-size",
        "4",
        "--cutoff",
        "6.0",
        "--model-kwargs",
        '{"num_blocks": 1, "hidden_channels": 8, "mlp_channels": [8]}',
        "--no-progress",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["structures"] == {"train": 20, "val": 2, "test": 2}
    assert metrics["epochs"] == 2
    assert [int(r["epoch"]) for r in read_csv(out / "log.csv")] == [1, 2]
    assert (out / "checkpoint.pt").is_file()
    model = uenn_geo.load_model(out / "model.pt")
    assert model.config["cutoff"] == 6.0 and model.config["num_blocks"] == 1
    # the saved model reproduces the reported validation error on the cached data set
    ds = load_dataset(str(xyz), tmp_path / "cache")
    ds.transform = CastFloats(model.dtype)
    val = ds[torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:2]]
    assert evaluate(model, val, 8)["force_rmse"] == pytest.approx(
        metrics["best_val_force_rmse"], rel=1e-4
    )
    assert "| validation |" in capsys.readouterr().out


def test_train_command_errors(tmp_path, capsys):
    assert main(["train", "--data", "no-such-set", "--out", str(tmp_path)]) == 2
    assert "neither a file nor a built-in data set" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path)]) == 2  # no data
    assert "exactly one of --data and --train-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x", "--model", "mace"])


def test_train_defaults_are_the_dataclass_defaults():
    args = build_parser().parse_args(["train", "--data", "x"])
    job = job_from_args(args)
    assert job == TrainJob(data="x")
    assert set(vars(args)) == {"command", "data", "config", "func"}  # no restated defaults
    # the training settings the job shares with TrainConfig have one default
    config = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert job.lr == config["lr"] and job.seed == config["seed"]


def test_train_help_prints_the_dataclass_defaults(capsys, monkeypatch):
    from uenn_geo.cli.train_settings import BATCH, COMPILE_MAX_ATOMS, SMALL_BATCH

    monkeypatch.setenv("COLUMNS", "300")  # no wrapped help texts
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    entries = capsys.readouterr().out.split("options:")[1].replace("\n   ", " ").splitlines()
    lines = [" ".join(entry.split()) for entry in entries]  # one line per option
    job = TrainJob(data="x")
    small = f"{SMALL_BATCH} for files of more than {COMPILE_MAX_ATOMS} atoms a structure"
    for flag, value in [
        ("--batch-size", f"{BATCH}; {small}"),  # job.batch_size is None: set by the data
        ("--lr", job.lr),
        ("--time-limit", job.time_limit),
        ("--seed", job.seed),
        ("--out", job.out),
    ]:
        (line,) = [line for line in lines if line.startswith(flag + " ")]
        assert line.endswith(f"(default: {value})"), line


def test_train_options_reach_the_job():
    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "x",
            "--restart",
            "--no-progress",
            "--cutoff",
            "5",
            "--model-kwargs",
            '{"num_blocks": 1}',
            "--lr",
            "0.01",
            "--batch-size",
            "3",
        ]
    )
    job = job_from_args(args)
    assert not job.resume and not job.progress
    assert job.model_kwargs == {"num_blocks": 1} and job.cutoff == 5.0
    assert job.lr == 0.01 and job.batch_size == 3
    args = build_parser().parse_args(["train", "--data", "x", "--model-kwargs", "[1]"])
    with pytest.raises(ValueError, match="JSON object"):
        job_from_args(args)
    with pytest.raises(SystemExit):  # not JSON at all
        build_parser().parse_args(["train", "--data", "x", "--model-kwargs", "{1"])


def test_python_m_uenn_geo_is_the_command():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "uenn_geo", "train", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--committee" in done.stdout
