import argparse
import json
import math

import pytest
import torch

from uenn_geo.cli.bench import add_parser
from uenn_geo.data.lj import ARGON_MASS
from uenn_geo.experiments.bench import (
    BENCH_MODELS,
    RAHMAN_DENSITY,
    BenchConfig,
    PeriodicInteractionGraph,
    argon_fcc,
    format_table,
    run_bench,
)
from uenn_geo.neighbors import radius_graph


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_argon_fcc_density_and_spacing():
    pos, cell = argon_fcc(864, displacement=0.0)
    assert pos.shape == (864, 3) and cell.shape == (3, 3)
    volume = float(torch.linalg.det(cell))  # Angstrom^3
    density = 864 * ARGON_MASS / 6.02214076e23 / (volume * 1e-24)  # g/cm^3
    assert density == pytest.approx(RAHMAN_DENSITY, rel=1e-12)
    # nearest neighbours of an fcc lattice sit at a / sqrt(2), 12 of them
    edge_index, shifts = radius_graph(pos, 4.5, cell=cell)
    a = float(cell[0, 0]) / 6
    r = (pos[edge_index[1]] - pos[edge_index[0]] + shifts).norm(dim=-1)
    assert r.min().item() == pytest.approx(a / math.sqrt(2), rel=1e-9)
    assert edge_index.shape[1] == 12 * 864
    # 10,368 = 4 * 12 * 12 * 18 is not a cube: the most cubic box is used
    _, cell = argon_fcc(10368)
    assert sorted(round(float(x) / a) for x in cell.diagonal()) == [12, 12, 18]


def test_argon_fcc_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 4"):
        argon_fcc(30)
    with pytest.raises(ValueError, match="int >= 4"):
        argon_fcc(2)


def test_schnet_graph_uses_periodic_images():
    pos, cell = argon_fcc(32, seed=1)
    graph = PeriodicInteractionGraph(10.2, cell.unsqueeze(0))
    edge_index, weight = graph(pos, torch.zeros(32, dtype=torch.long))
    # the box (11.6 A) is narrower than 2 r_c: most neighbours are images, all within r_c
    assert edge_index.shape[1] > 32 * 31
    assert float(weight.max()) < 10.2 and float(weight.min()) > 2.5
    graph.use((edge_index[:, :5], torch.zeros(5, 3, dtype=pos.dtype)))
    fixed, _ = graph(pos, torch.zeros(32, dtype=torch.long))
    assert fixed.shape == (2, 5)


def test_quick_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = _parser().parse_args(
        ["bench", "--quick", "--dtypes", "float32", "--threads", "1", "--out", str(out)]
    )
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"config", "machine", "results", "ratios", "scaling"}
    assert report["config"]["sizes"] == [32] and report["config"]["repeats"] == 2
    assert isinstance(report["machine"]["torch_scatter"], bool)
    assert report["machine"]["torch_threads"] == 1
    assert {r["model"] for r in report["results"]} == set(BENCH_MODELS)
    for row in report["results"]:
        assert row["status"] == "ok" and row["edges"] > 0
        for key in ("rate_model", "rate_total", "rate_model_cpu", "rate_total_cpu"):
            assert row[key] > 0 and math.isfinite(row[key])
        assert row["time_total_s"] > 0 and row["peak_memory_mib"] >= 0
    assert [r["model"] for r in report["ratios"]] == ["uenn", "uenn_compiled"]
    for ratio in report["ratios"]:
        assert ratio["uenn_over_schnet_total"] > 0 and ratio["lj_over_uenn_total"] > 0
    (compiled,) = [r for r in report["results"] if r["model"] == "uenn_compiled"]
    assert compiled["compile_s"] > 0
    printed = capsys.readouterr().out
    assert "schnet" in printed and "uenn/schnet" in printed


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
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_bench(BenchConfig(**kwargs))


def test_compiled_runner_gives_the_eager_forces():
    from uenn_geo.experiments.bench import _System

    pos, cell = argon_fcc(32)
    system = _System(
        pos=pos.float(),
        cell=cell.float().unsqueeze(0),
        pbc=torch.ones(1, 3, dtype=torch.bool),
        z=torch.full((32,), 18),
        cutoff=6.0,
    )
    torch.manual_seed(0)
    eager = BENCH_MODELS["uenn"](system, 6.0)
    torch.manual_seed(0)
    compiled = BENCH_MODELS["uenn_compiled"](system, 6.0)
    edges = system.neighbors()
    ref = eager.forces(eager.prepare(edges))
    assert ref.abs().max() > 0
    for prepared in (compiled.prepare(edges), None):  # given and own neighbour list
        assert torch.allclose(compiled.forces(prepared), ref, rtol=1e-4, atol=1e-6)
    # another number of edges: the same compiled graph (dynamic shapes), the right forces
    system.pos = system.pos + 0.3 * torch.randn_like(system.pos)
    edges = system.neighbors()
    assert torch.allclose(
        compiled.forces(compiled.prepare(edges)), eager.forces(eager.prepare(edges)), atol=1e-5
    )


def test_failed_compilation_is_a_skipped_row(monkeypatch):
    from uenn_geo.experiments import bench

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(bench._UENNCompiledRunner, "forces", broken)
    config = BenchConfig(
        sizes=(32,), dtypes=("float32",), models=("uenn_compiled", "lj"), repeats=1, warmup=0
    )
    rows = {r["model"]: r for r in run_bench(config)["results"]}
    assert rows["uenn_compiled"]["status"] == "skipped"
    assert "no compiler here" in rows["uenn_compiled"]["reason"]
    assert rows["lj"]["status"] == "ok"
