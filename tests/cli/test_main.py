"""``uenn-geo train`` on a user's extended-XYZ file, end to end (seconds)."""

import json

import pytest
import torch

import uenn_geo
from uenn_geo.cli import build_parser, main
from uenn_geo.data import LJClusters, write_extxyz
from uenn_geo.train import CastFloats, evaluate, load_dataset


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
    assert (out / "log.csv").is_file() and (out / "checkpoint.pt").is_file()
    model = uenn_geo.load_model(out / "model.pt")
    assert model.config["cutoff"] == 6.0 and model.config["num_blocks"] == 1
    # the saved model reproduces the reported validation error on the cached data set
    ds = load_dataset(str(xyz), tmp_path / "cache")
    ds.transform = CastFloats(model.dtype)
    val = ds[torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:2]]
    assert evaluate(model, val, 8)["force_rmse"] == pytest.approx(
        metrics["best_val_force_rmse"], rel=1e-4
    )
    assert "best validation force RMSE" in capsys.readouterr().out


def test_train_command_errors(tmp_path, capsys):
    assert main(["train", "--data", "no-such-set", "--out", str(tmp_path)]) == 2
    assert "neither a file nor a built-in data set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train"])  # --data is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x", "--model", "mace"])
