import argparse
import json
import math
import shutil

import pytest
import torch

from uenn_geo.cli.bench import add_parser
from uenn_geo.experiments import bench
from uenn_geo.experiments.bench import (
    BENCH_MODELS,
    BenchConfig,
    BenchSystem,
    argon_fcc,
    format_table,
    run_bench,
)
from uenn_geo.experiments.bench.report import RATES, ratios, scaling
from uenn_geo.experiments.bench.runners import UENNCompiledRunner

EAGER = ("uenn", "schnet", "schnet32", "lj")
needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor needs a C++ compiler (a failed compilation is tested without one)",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _system(num_atoms=32, cutoff=6.0, dtype=torch.float64, seed=0) -> BenchSystem:
    pos, cell = argon_fcc(num_atoms, seed=seed)
    return BenchSystem(
        pos=pos.to(dtype),
        cell=cell.to(dtype).unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
        z=torch.full((num_atoms,), 18),
        cutoff=cutoff,
    )


@pytest.mark.parametrize("name", EAGER)
def test_runner_with_given_and_own_edges(name):
    system = _system()
    runner = BENCH_MODELS[name](system)
    given = runner.forces(runner.prepare(system.neighbors()))
    assert given.shape == (32, 3) and given.dtype == torch.float64
    assert given.abs().max() > 0 and torch.isfinite(given).all()
    torch.testing.assert_close(runner.forces(None), given, rtol=1e-10, atol=1e-12)


def test_schnet32_drops_the_far_neighbours():
    # 10.2 A in this box: every atom has far more than 32 neighbours (periodic images)
    system = _system(cutoff=10.2)
    assert system.neighbors().num_edges > 32 * 32 * 2
    torch.manual_seed(0)
    full = BENCH_MODELS["schnet"](system)
    torch.manual_seed(0)
    nearest = BENCH_MODELS["schnet32"](system)
    assert nearest.model.max_num_neighbors == 32 and full.model.max_num_neighbors is None
    assert torch.equal(full.model.schnet.lin1.weight, nearest.model.schnet.lin1.weight)
    assert not torch.allclose(full.forces(None), nearest.forces(None), atol=1e-6)


def test_quick_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = _parser().parse_args(
        ["bench", "--quick", "--dtypes", "float32", "--threads", "1", "--out", str(out)]
        + ["--models", *EAGER]
    )
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"config", "machine", "results", "ratios", "scaling"}
    assert report["config"]["sizes"] == [32] and report["config"]["repeats"] == 2
    assert isinstance(report["machine"]["torch_scatter"], bool)
    assert report["machine"]["torch_threads"] == 1
    assert [r["model"] for r in report["results"]] == list(EAGER)
    for row in report["results"]:
        assert row["status"] == "ok" and row["edges"] > 0
        for key in RATES:
            assert row[key] > 0 and math.isfinite(row[key])
        assert row["time_total_s"] > 0 and row["peak_memory_mib"] >= 0
    assert [r["model"] for r in report["ratios"]] == ["uenn"]
    (ratio,) = report["ratios"]
    assert ratio["uenn_over_schnet_total"] > 0 and ratio["lj_over_uenn_total"] > 0
    printed = capsys.readouterr().out
    assert "uenn/schnet speed" in printed and "lj/uenn speed" in printed
    assert f"wrote {out}" in printed


def _row(model, atoms, rate, status="ok"):
    t = atoms / rate
    return {
        "model": model,
        "device": "cpu",
        "dtype": "float32",
        "atoms": atoms,
        "edges": 86 * atoms,
        "status": status,
        **{k: rate for k in RATES},
        "time_model_s": t,
        "cpu_time_model_s": 2 * t,
        "time_total_s": t,
        "time_neighbors_s": 0.001,
        "peak_memory_mib": 1.0,
    }


def test_ratios_scaling_and_table():
    results = [
        _row("uenn", 32, 2000.0),
        _row("schnet32", 32, 100.0),
        _row("lj", 32, 6000.0),
        # t ~ N^1.5: the rate falls as N^-0.5
        _row("uenn", 128, 2000.0 / 2.0),
        {**_row("schnet", 128, 1.0), "status": "skipped", "reason": "too big"},
    ]
    (first, second) = ratios(results)
    assert first["atoms"] == 32 and first["uenn_over_schnet32_total"] == pytest.approx(20.0)
    assert first["target_10x_schnet32"] and "uenn_over_schnet_total" not in first
    assert first["lj_over_uenn_model"] == pytest.approx(3.0) and first["target_within_5x_lj"]
    assert second["atoms"] == 128 and set(second) == {"device", "dtype", "atoms", "model", "system"}
    (fit,) = scaling(results)
    assert fit["model"] == "uenn" and fit["atoms"] == [32, 128]
    assert fit["exponent"] == pytest.approx(1.5) and fit["exponent_cpu"] == pytest.approx(1.5)
    machine = {"torch_threads": 1, "torch_scatter": False, "freed_memory_kept": True}
    machine |= {"load_average_start": [1.0, 1.0, 1.0], "load_average_end": None}
    report = {"config": {"cutoff": 10.2}, "machine": machine, "results": results}
    table = format_table(report | {"ratios": [first, second], "scaling": [fit]})
    assert "uenn/schnet32 speed 20.00, 20.00, 20.00, 20.00" in table
    assert "skipped: too big" in table and "t ~ N^1.50 (wall)" in table


def test_memory_guard_skips_larger_boxes():
    config = BenchConfig(
        sizes=(32, 64), dtypes=("float64",), models=("lj",), repeats=1, warmup=0,
        memory_fraction=1e-9,
    )  # fmt: skip
    report = run_bench(config)
    first, second = report["results"]
    assert first["atoms"] == 32 and first["status"] == "ok"
    assert second["atoms"] == 64 and second["status"] == "skipped"
    assert "estimated peak memory" in second["reason"]
    assert "skipped" in format_table(report)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"models": ("dimenet",)}, "models must be among"),
        ({"sizes": (30,)}, "multiples of 4"),
        ({"dtypes": ("float16",)}, "dtypes must be among"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"memory_fraction": 0.0}, "memory_fraction"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_bench(BenchConfig(**kwargs))


@pytest.mark.slow
@needs_compiler
def test_compiled_runner_gives_the_eager_forces():
    system = _system(dtype=torch.float32)
    torch.manual_seed(0)
    eager = BENCH_MODELS["uenn"](system)
    torch.manual_seed(0)
    compiled = BENCH_MODELS["uenn_compiled"](system)
    edges = system.neighbors()
    ref = eager.forces(eager.prepare(edges))
    assert ref.abs().max() > 0
    for prepared in (compiled.prepare(edges), None):  # given and own neighbour list
        torch.testing.assert_close(compiled.forces(prepared), ref, rtol=1e-4, atol=1e-6)
    # another number of edges: the same compiled graph (dynamic shapes), the right forces
    system.pos = system.pos + 0.3 * torch.randn_like(system.pos)
    edges = system.neighbors()
    torch.testing.assert_close(
        compiled.forces(compiled.prepare(edges)),
        eager.forces(eager.prepare(edges)),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.slow
@needs_compiler
def test_quick_run_compiles():
    config = BenchConfig(sizes=(32,), dtypes=("float32",), models=("uenn_compiled",), repeats=1)
    report = run_bench(config)
    (row,) = report["results"]
    assert row["status"] == "ok" and row["compile_s"] > 0 and row["rate_total"] > 0
    assert [r["model"] for r in report["ratios"]] == ["uenn_compiled"]


def test_failed_compilation_is_a_skipped_row(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(UENNCompiledRunner, "forces", broken)
    config = BenchConfig(
        sizes=(32,), dtypes=("float32",), models=("uenn_compiled", "lj"), repeats=1, warmup=0
    )
    rows = {r["model"]: r for r in bench.run_bench(config)["results"]}
    assert rows["uenn_compiled"]["status"] == "skipped"
    assert "no compiler here" in rows["uenn_compiled"]["reason"]
    assert rows["lj"]["status"] == "ok"


def test_calculator_runner_moves_atoms_and_matches_the_network():
    from uenn_geo.experiments.bench.paths import CalculatorRunner, MDMotion

    system = _system(cutoff=6.0)
    torch.manual_seed(0)
    bare = BENCH_MODELS["uenn"](system)
    torch.manual_seed(0)
    calc = CalculatorRunner(system)
    calc.calc.evaluator.compile = False
    # the same weights; the first call is at the first MD position, not the start
    moved = calc.forces(None)
    assert calc.motion.calls == 1 and calc.nl_builds == 1
    assert not torch.allclose(moved, bare.forces(None).double())
    calc.motion.calls = 2 * MDMotion.HALF_PERIOD - 1  # the next call is back at the start
    torch.testing.assert_close(calc.forces(None), bare.forces(None), rtol=1e-7, atol=1e-9)


def test_unsupported_rows_are_skipped_with_the_reason(tmp_path):
    from uenn_geo.experiments.bench.systems import ETHANOL_FILE

    if not ETHANOL_FILE.is_file():
        pytest.skip(f"{ETHANOL_FILE} is absent")
    config = BenchConfig(
        systems=("ethanol32",),
        models=("uenn", "uenn_calc", "lj", "schnet_acc"),
        dtypes=("float32",),
        devices=("cpu",),
        repeats=1,
        threads=1,
    )
    report = run_bench(config)
    rows = {r["model"]: r for r in report["results"]}
    assert rows["uenn_calc"]["status"] == "skipped" and "batch" in rows["uenn_calc"]["reason"]
    assert rows["lj"]["status"] == "skipped" and "argon" in rows["lj"]["reason"]
    assert rows["uenn"]["status"] == "ok" and rows["uenn"]["atoms"] == 288
    assert rows["uenn"]["system"] == "ethanol32" and rows["uenn"]["path"] == "network"
    (q,) = report["ratios"]
    assert q["system"] == "ethanol32" and q["target_schnet_acc"] == 10.0
    assert "ethanol32" in format_table(report)


def test_conservative_runner_and_targets():
    system = _system(cutoff=6.0)
    runner = BENCH_MODELS["uenn_cons"](system)
    assert runner.model.has_energy
    forces = runner.forces(runner.prepare(system.neighbors()))
    assert forces.shape == (32, 3) and torch.isfinite(forces).all() and forces.abs().max() > 0
    rows = [
        {**_row("uenn_cons", 32, 600.0), "system": "argon"},
        {**_row("schnet_acc", 32, 100.0), "system": "argon"},
    ]
    (q,) = ratios(rows)
    assert q["target_schnet_acc"] == 5.0 and q["target_met_schnet_acc"]
    assert not q["target_10x_schnet_acc"]


def test_mace_row_runs_or_says_why():
    from uenn_geo.experiments.bench.runners import Unsupported

    system = _system(cutoff=5.0, dtype=torch.float32)
    try:
        runner = BENCH_MODELS["mace"](system)
    except Unsupported as why:
        assert "mace-torch" in str(why)
        return
    forces = runner.forces(runner.prepare(system.neighbors()))
    assert forces.shape == (32, 3) and forces.dtype == torch.float32
    torch.testing.assert_close(runner.forces(None), forces)
