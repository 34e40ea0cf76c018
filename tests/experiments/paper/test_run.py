"""A tiny end-to-end run of ``uenn-geo paper`` (a few hundred samples, seconds)."""

import json
import shutil

import pytest
import torch

import uenn_geo
from uenn_geo.cli import main
from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import paper_md_initial_positions
from uenn_geo.experiments.paper.config import PAPER_ADAM_LR, PaperConfig, preset_config
from uenn_geo.experiments.paper.md import run_md_test
from uenn_geo.experiments.paper.published import PAPER_RESULTS


@pytest.mark.slow
def test_paper_command_end_to_end(tmp_path, capsys):
    out, root = tmp_path / "run", tmp_path / "data"
    args = [
        "paper",
        "--out",
        str(out),
        "--root",
        str(root),
        "--num-configs",
        "400",
        "--time-limit",
        "3",
        "--md-steps",
        "200",
        "--fire-compare-time",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    for name in [
        "report.md",
        "metrics.json",
        "model.pt",
        "fig2_loss.png",
        "fig3_parity.png",
        "fig4_position_rmsd.png",
        "fig5_x_atom1.png",
        "fig6_energy_rmsd.png",
        "fig7_energy_sample1.png",
        "train/log.csv",
        "train/checkpoint.pt",
    ]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"] == 240 and metrics["data"]["test"] == 80
    assert 0 < metrics["test_force_rmsd"] < 1.0
    assert metrics["md"]["bounded"]
    assert set(metrics["fire"]) == {"fire_full_batch", "fire_minibatch"}
    assert metrics["symmetrized"] and 0 < metrics["test_force_rmsd_network"] < 1.0
    assert "network before averaging" in (out / "report.md").read_text()
    assert uenn_geo.load_model(out / "model.pt").symmetrize
    assert metrics["config"]["compile"] is None  # the default: compiled where a compiler is
    assert metrics["train"]["compiled"] == (shutil.which("g++") is not None)
    report = (out / "report.md").read_text()
    assert f"| Test force RMSD (eV/A) | {PAPER_RESULTS['test_force_rmsd']} |" in report
    model = uenn_geo.load_model(out / "model.pt")
    assert model.metadata["experiment"] == "paper"
    assert metrics["config"]["max_steps"] is None  # --time-limit alone: a wall-clock budget
    assert "test force RMSD" in capsys.readouterr().out
    assert metrics["train"]["stop_reason"] == "time_limit"
    # cached data is reused by a second run (same file name)
    files = list((root / "paper_argon" / "processed").glob("paper_n400_*.pt"))
    assert len(files) == 1
    # the graph model, its report beside the first run's
    graph = tmp_path / "graph"
    args[args.index(str(out))] = str(graph)
    args[args.index("2")] = "0"  # no FIRE runs
    assert main([*args, "--model", "graph", "--compare", str(out)]) == 0
    metrics = json.loads((graph / "metrics.json").read_text())
    assert metrics["config"]["model"] == "graph"
    assert metrics["compare"][str(out)]["test_force_rmsd"] == pytest.approx(
        json.loads((out / "metrics.json").read_text())["test_force_rmsd"]
    )
    report = (graph / "report.md").read_text()
    assert "## Side by side" in report
    assert (
        "| paper | paper, online sampling, 3 s | this run: graph, online sampling, 3 s |" in report
    )
    with pytest.raises(ValueError, match="no metrics.json"):
        preset_config("default", compare=(str(tmp_path / "nowhere"),))


def test_md_test_with_exact_forces_has_zero_error():
    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, data):
            return lennard_jones(data.pos.reshape(-1, 4, 3))[1].reshape(-1, 3)

    md = run_md_test(Exact(), samples=3, steps=50)
    assert md["md_states_jacobian_asymmetry"] < 1e-12  # minus a Hessian: symmetric
    assert max(md["position_rmsd"]) < 1e-12
    assert max(md["energy_rmsd"]) < 1e-12
    assert md["bounded"]
    assert md["x_atom1"]["exact"][0] == pytest.approx(paper_md_initial_positions()[0, 0].item())


def test_jacobian_asymmetry_sees_a_curl():
    from uenn_geo.experiments.paper.md import jacobian_asymmetry

    class Swirl(torch.nn.Module):
        # F = omega x (r - centroid) - r: J = A (x) P - I, with A antisymmetric (the curl) and
        # P = I - 11^T / 4; |J - J^T| / |J + J^T| = |2 A (x) P| / |2 I| = sqrt(2 * 3 / 12)
        def forward(self, data):
            pos = data.pos - data.pos.mean(dim=0)
            omega = torch.tensor([0.0, 0.0, 1.0], dtype=pos.dtype)
            return torch.linalg.cross(omega.expand_as(pos), pos) - data.pos

    class Gradient(torch.nn.Module):  # F = -grad of a quadratic energy: no curl
        def forward(self, data):
            return -2.0 * data.pos

    states = paper_md_initial_positions().expand(2, 4, 3).double()
    assert jacobian_asymmetry(Swirl(), states, torch.float64) == pytest.approx(0.5**0.5)
    assert jacobian_asymmetry(Gradient(), states, torch.float64) < 1e-12
    swirl = Swirl()
    swirl.conservative = True  # a model that says its forces are -dE/dr is taken at its word
    assert jacobian_asymmetry(swirl, states, torch.float64) == 0.0


def test_resumed_run_keeps_its_learning_rate(tmp_path):
    from uenn_geo.experiments.paper.run import _resumed_lr

    ckpt = tmp_path / "checkpoint.pt"
    assert _resumed_lr(preset_config("default"), ckpt) == PAPER_ADAM_LR  # nothing to resume
    torch.save({"train_config": {"lr": 2e-2}}, ckpt)
    assert _resumed_lr(preset_config("default"), ckpt) == 2e-2  # the run's own rate
    assert _resumed_lr(preset_config("default", time_limit=5000.0), ckpt) == 2e-2
    assert _resumed_lr(preset_config("default", lr=3e-3), ckpt) == 3e-3  # asked for
    assert _resumed_lr(preset_config("default", resume=False), ckpt) == PAPER_ADAM_LR


def test_paper_command_passes_its_switches(monkeypatch, tmp_path):
    seen = _fake_run_paper(monkeypatch)
    out = str(tmp_path / "x")
    assert main(["paper", "--out", out, "--no-compile", "--no-symmetrize"]) == 0
    assert main(["paper", "--out", out, "--compile"]) == 0
    assert main(["paper", "--out", out, "--faithful"]) == 0
    assert [c.compile for c in seen] == [False, True, None]
    assert [c.symmetrize for c in seen] == [False, True, False]  # faithful: the paper's model


def _fake_run_paper(monkeypatch, test_force_rmsd=0.0):
    """Replace run_paper by a recorder of the configs it is called with."""
    import uenn_geo.experiments.paper.run as paper

    seen = []

    def fake_run(config):
        seen.append(config)
        md = {"position_rmsd_at": {}, "energy_rmsd_at": {}}
        return {"test_force_rmsd": test_force_rmsd, "md": md}

    monkeypatch.setattr(paper, "run_paper", fake_run)
    return seen


def test_presets_and_errors():
    cfg = preset_config("full", out="x")
    assert cfg.max_steps > preset_config("default").max_steps and cfg.out == "x"
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="sampling"):
        preset_config("default", sampling="bogus")
    with pytest.raises(ValueError, match="training budget"):
        PaperConfig(max_steps=None, time_limit=None)


def test_bad_size_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["paper", "--num-configs", "1", "--out", str(out), "--no-progress"]) == 2
    assert "num_configs must be >= 5 (a 60/20/20 split), got 1" in capsys.readouterr().err
    assert not out.exists()


def test_learning_rate_defaults():
    from uenn_geo.experiments.paper.config import PAPER_ADAM_LR_LONG, learning_rate

    assert learning_rate(preset_config("default")) == PAPER_ADAM_LR
    assert learning_rate(preset_config("full")) == PAPER_ADAM_LR_LONG < PAPER_ADAM_LR
    assert learning_rate(preset_config("default", model="graph")) == 2e-3
    assert learning_rate(preset_config("default", optimizer="fire")) == 2e-3
    assert learning_rate(preset_config("default", lr=3e-4)) == 3e-4
    # the choice follows the step budget, or the time budget where there is none
    assert learning_rate(preset_config("default", max_steps=500_000)) == PAPER_ADAM_LR_LONG
    assert learning_rate(preset_config("default", time_limit=7200.0)) == PAPER_ADAM_LR_LONG
    assert learning_rate(preset_config("default", time_limit=600.0)) == PAPER_ADAM_LR
