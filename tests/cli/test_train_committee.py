"""``uenn-geo train --committee N`` (uenn_geo.cli.train_committee): members side by side,
one split, and the committee's tables (small slices of rMD17 ethanol from ../shared/data)."""

import json
import re
from dataclasses import replace

import pytest
import torch

from tests.cli.test_train import args, files  # noqa: F401 (the fixture)
from uenn_geo.cli import main
from uenn_geo.cli.eval import EvalJob, run_eval
from uenn_geo.cli.train import TrainJob
from uenn_geo.cli.train_committee import member_jobs
from uenn_geo.engines import load_force_model
from uenn_geo.models import Committee
from uenn_geo.models.committee import model_files


def test_members_differ_in_seed_and_share_the_split(tmp_path):
    job = TrainJob(train_file="t.xyz", seed=3, committee=3, out=str(tmp_path))
    members = member_jobs(job)
    assert [m.seed for m in members] == [3, 4, 5]
    assert {m.resolved_split_seed for m in members} == {3}
    assert [m.out for m in members] == [str(tmp_path / f"member{i}") for i in range(3)]
    assert all(m.committee == 1 and not m.progress for m in members)
    split = member_jobs(TrainJob(train_file="t.xyz", seed=3, split_seed=7, committee=2))
    assert {m.resolved_split_seed for m in split} == {7}
    with pytest.raises(ValueError, match="--committee must be >= 1"):
        TrainJob(train_file="t.xyz", committee=0)


def test_committee_trains_its_members_and_reports_their_mean(files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "committee"
    assert main(args(files, out, "--committee", "2", "--threads", "1")) == 0
    printed = capsys.readouterr().out
    assert "training 2 members" in printed and "member*/model.pt" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["committee"] == 2 and set(metrics["member_errors"]) == {"member0", "member1"}
    each = [json.loads((out / f"member{i}" / "metrics.json").read_text()) for i in range(2)]
    assert each[0]["structures"] == each[1]["structures"]  # one split
    assert metrics["structures"] == each[0]["structures"]
    weights = [torch.load(out / f"member{i}" / "model.pt")["state_dict"] for i in range(2)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two seeds
    # a member is the run of the same options by hand: seed 1, the split of seed 0
    alone = tmp_path / "alone"
    assert main(args(files, alone, "--seed", "1", "--split-seed", "0", "--threads", "1")) == 0
    by_hand = torch.load(alone / "model.pt")["state_dict"]
    assert all(torch.equal(by_hand[k], weights[1][k]) for k in by_hand)
    # the committee's test table is that of `uenn-geo eval --model A B`
    paths = [str(out / f"member{i}" / "model.pt") for i in range(2)]
    table = run_eval(EvalJob(model=tuple(paths), files=(str(files / "test.xyz"),)))["test"]
    ours = metrics["errors"]["test"]["all"]
    assert ours["force_mae"] == pytest.approx(table["all"]["force_mae"], rel=1e-6)
    members_mae = [e["errors"]["test"]["all"]["force_mae"] for e in each]
    assert ours["force_mae"] != members_mae[0] and ours["force_mae"] != members_mae[1]
    # run again, the members resume from their checkpoints (finished: nothing to train)
    assert main(args(files, out, "--committee", "2", "--threads", "1")) == 0
    again = json.loads((out / "metrics.json").read_text())["errors"]["test"]["all"]
    assert again["force_mae"] == pytest.approx(ours["force_mae"], rel=1e-5)
    assert "resum" in (out / "member0" / "train.log").read_text().lower()
    # the folder stands for its members wherever a model is taken
    assert model_files(out) == [out / "member0" / "model.pt", out / "member1" / "model.pt"]
    folder = run_eval(EvalJob(model=str(out), files=(str(files / "test.xyz"),)))["test"]
    assert folder["all"]["force_mae"] == table["all"]["force_mae"]
    committee = load_force_model(str(out))
    assert isinstance(committee, Committee) and len(committee.members) == 2
    assert model_files(out / "member1") == [out / "member1" / "model.pt"]
    with pytest.raises(FileNotFoundError, match="not a finished uenn-geo train folder"):
        model_files(tmp_path)
    (out / "member1" / "model.pt").rename(out / "member1" / "kept.pt")
    with pytest.raises(FileNotFoundError, match="member1/model.pt"):
        model_files(out)  # a member missing is named, not left out


def test_a_failing_member_is_named_with_its_log(files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bad"
    flags = ["--committee", "2", "--model-kwargs", '{"no_such_option": 1}']
    assert main(args(files, out, *flags)) == 2
    err = capsys.readouterr().err
    assert re.search(r"committee member \d failed", err) and "train.log" in err


def test_members_hold_out_the_same_structures(files):  # noqa: F811
    from uenn_geo.cli.train_job import _load_sets

    job = TrainJob(train_file=str(files / "train.xyz"), root=str(files / "cache"), committee=2)
    val = [_load_sets(m).val.indices() for m in member_jobs(job)]
    assert [int(k) for k in val[0]] == [int(k) for k in val[1]]
    other = _load_sets(TrainJob(train_file=str(files / "train.xyz"), root=str(files / "cache")))
    moved = _load_sets(replace(member_jobs(job)[1], split_seed=5)).val.indices()
    assert [int(k) for k in other.val.indices()] == [int(k) for k in val[0]]
    assert [int(k) for k in moved] != [int(k) for k in val[0]]  # --split-seed moves it


def test_stopping_interrupts_then_kills(monkeypatch):
    import subprocess
    import sys
    import time

    from uenn_geo.cli import train_committee

    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout.readline().strip() == "ready"
    monkeypatch.setattr(train_committee, "STOP_GRACE_SECONDS", 1.0)
    start = time.monotonic()
    train_committee._stop([polite, stubborn])
    assert time.monotonic() - start < 10
    assert polite.returncode not in (None, -9) and stubborn.returncode == -9
