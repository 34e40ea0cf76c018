"""The paper experiment's training budget, its progress output and its published figures."""

import re
from pathlib import Path

import pytest
import torch

import uenn_geo
from uenn_geo.cli import main
from uenn_geo.data.lj import lennard_jones
from uenn_geo.experiments.paper.config import PRESETS, preset_config
from uenn_geo.experiments.paper.md import run_md_test
from uenn_geo.experiments.paper.published import PAPER_RESULTS
from uenn_geo.experiments.paper.run import load_data, train_model


def test_default_presets_are_step_budgets_with_a_wall_clock_guard():
    for name in ("default", "full"):
        cfg = preset_config(name)
        assert cfg.max_steps and cfg.max_steps == PRESETS[name]["max_steps"]
        assert cfg.time_limit is not None  # only a guard: the step budget ends training first
    assert preset_config("default").max_steps == 80_000
    assert preset_config("full").max_steps == 860_000
    # a time limit alone is a wall-clock budget; with max_steps, both apply
    assert preset_config("default", time_limit=300.0).max_steps is None
    both = preset_config("default", time_limit=300.0, max_steps=10)
    assert (both.max_steps, both.time_limit) == (10, 300.0)


def test_cli_budget_options(monkeypatch, tmp_path):
    import uenn_geo.experiments.paper.run as paper

    seen = []
    monkeypatch.setattr(
        paper,
        "run_paper",
        lambda c: seen.append(c) or {"test_force_rmsd": 0.0, "md": {"position_rmsd_at": {}}},
    )
    out = str(tmp_path / "x")
    assert main(["paper", "--out", out]) == 0
    assert main(["paper", "--out", out, "--time-limit", "300"]) == 0
    assert main(["paper", "--out", out, "--max-steps", "5"]) == 0
    assert main(["paper", "--out", out, "--full"]) == 0
    assert [(c.max_steps, c.time_limit) for c in seen] == [
        (80_000, PRESETS["default"]["time_limit"]),
        (None, 300.0),
        (5, PRESETS["default"]["time_limit"]),
        (860_000, PRESETS["full"]["time_limit"]),
    ]


@pytest.fixture
def tiny_config(tmp_path):
    return preset_config(
        "default",
        out=str(tmp_path / "run"),
        root=str(tmp_path / "data"),
        num_configs=60,
        batch_size=8,
        max_steps=7,
        compile=False,
        progress=False,
    )


def test_step_budget_is_honoured(tiny_config, tmp_path):
    data = load_data(tiny_config)
    trained = train_model(tiny_config, data, tmp_path / "run")
    assert trained.result.steps == 7  # 36 training configurations, batch 8: 5 steps per epoch
    assert trained.result.stop_reason == "max_steps"
    assert trained.config.max_steps == 7
    assert trained.config.time_limit == PRESETS["default"]["time_limit"]  # the guard


def test_phases_report_progress_unless_switched_off(tiny_config, capsys):
    from dataclasses import replace

    load_data(tiny_config)
    assert capsys.readouterr().err == ""
    load_data(replace(tiny_config, progress=True))
    assert "uenn-geo paper: data: 60 configurations" in capsys.readouterr().err


class _Exact(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, data):
        return lennard_jones(data.pos.reshape(-1, 4, 3))[1].reshape(-1, 3)


def test_md_test_shows_progress(capsys):
    run_md_test(_Exact(), samples=2, steps=30, progress=True)
    err = capsys.readouterr().err
    assert "MD test" in err and "60/60" in err  # both runs, exact and learned, 30 steps each
    run_md_test(_Exact(), samples=2, steps=30, progress=False)
    assert capsys.readouterr().err == ""


def test_cli_prints_the_published_figure(monkeypatch, tmp_path, capsys):
    import uenn_geo.experiments.paper.run as paper

    monkeypatch.setitem(PAPER_RESULTS, "test_force_rmsd", 0.0123)
    monkeypatch.setattr(
        paper,
        "run_paper",
        lambda c: {"test_force_rmsd": 0.5, "md": {"position_rmsd_at": {}, "energy_rmsd_at": {}}},
    )
    assert main(["paper", "--out", str(tmp_path / "x")]) == 0
    assert "test force RMSD: 5.000e-01 eV/A (paper: 1.23e-02)" in capsys.readouterr().out


def test_published_figures_have_one_definition():
    root = Path(uenn_geo.__file__).parent
    published = root / "experiments" / "paper" / "published.py"
    literal = re.compile(r"0\.00118|1\.18e-0?3|10_000_000|\b4e-4\b|4e-04")
    found = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path != published and literal.search(path.read_text())
    ]
    assert found == []
    assert literal.search(published.read_text())  # the check above can fail


def test_report_takes_the_paper_figures_from_one_place(monkeypatch, tmp_path):
    from uenn_geo.experiments.paper.report import write_paper_report

    monkeypatch.setitem(PAPER_RESULTS, "md_energy_rmsd", 7.5e-4)
    monkeypatch.setitem(PAPER_RESULTS, "md_energy_rmsd_step", 20)
    steps = 30
    series = [0.1 * (i + 1) for i in range(steps + 1)]
    md = {
        "steps": steps,
        "position_rmsd": series,
        "energy_rmsd": series,
        "x_atom1": {"exact": series, "learned": series},
        "energy_sample1": {"exact": series, "learned": series},
    }
    metrics = {
        "config": {
            "model": "paper",
            "seed": 0,
            "r_min": 2.8,
            "sigma": 3.0,
            "sampling": "fixed",
            "optimizer": "adam",
            "batch_size": 256,
            "max_steps": 80_000,
            "time_limit": 1800.0,
        },
        "paper": PAPER_RESULTS,
        "data": {"num_configs": 100, "train": 60, "val": 20, "test": 20},
        "train": {
            "lr": 0.01,
            "steps": 80_000,
            "seconds": 600.0,
            "history": [{"epoch": 1, "train_loss": 1.0, "elapsed_s": 1.0, "val_force_rmse": 0.1}],
        },
        "test_force_rmsd": 0.002,
        "train_force_rmsd": 0.002,
        "md": {
            "position_rmsd_at": {"20": 0.1},
            "energy_rmsd_at": {"20": 0.2},
            "bounded": True,
            "md_states_force_rms": 0.01,
            "md_states_force_rmsd": 0.001,
        },
        "machine": {"threads": 1, "platform": "test", "torch": torch.__version__},
        "total_seconds": 700.0,
        "compare": {},
    }
    parity = {"exact": [-1.0, 1.0], "predicted": [-1.0, 1.0]}
    write_paper_report(tmp_path, metrics, md, parity)
    report = (tmp_path / "report.md").read_text()
    assert f"| Test force RMSD (eV/A) | {PAPER_RESULTS['test_force_rmsd']} |" in report
    assert "| MD energy RMSD at step 20 (eV) | 7.50e-04 | 0.2 |" in report
    assert (tmp_path / "fig6_energy_rmsd.png").is_file()
