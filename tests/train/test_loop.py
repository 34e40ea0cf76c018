import dataclasses
import math
import shutil
import time
import warnings

import pytest
import torch

from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import sample_paper_configurations
from uenn_geo.files import read_csv
from uenn_geo.models import PaperForceModel, load_model
from uenn_geo.train import DenseForceData, TrainConfig, evaluate, train


def _data(n, seed):
    pos = sample_paper_configurations(n, generator=torch.Generator().manual_seed(seed))
    _, forces = lennard_jones(pos)
    return DenseForceData(pos.float(), forces.float())


@pytest.fixture
def setup():
    tr, va = _data(256, 1), _data(256, 2)
    model = PaperForceModel(hidden=[32, 32])
    model.fit_scales(tr.pos, tr.forces)
    return model, tr, va


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_training_reduces_error_and_writes_files(setup, tmp_path, optimizer):
    model, tr, va = setup
    before = evaluate(model, va)["force_rmse"]
    cfg = TrainConfig(max_epochs=25, batch_size=16, lr=1e-2, progress=False, optimizer=optimizer)
    res = train(model, tr, va, cfg, tmp_path)
    assert res.best_val_rmse < 0.93 * before
    assert res.history[-1]["train_loss"] < 0.7 * res.history[0]["train_loss"]
    assert res.epochs == 25 and res.stop_reason == "max_epochs"
    assert res.best_val_rmse == pytest.approx(evaluate(model, va)["force_rmse"], rel=1e-5)
    rows = read_csv(tmp_path / "log.csv")
    assert len(rows) == 25 and float(rows[-1]["step"]) == 25 * 16
    best = load_model(tmp_path / "model.pt")
    assert evaluate(best, va)["force_rmse"] == pytest.approx(res.best_val_rmse, rel=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


class _SlowData(DenseForceData):
    """Training data whose every batch takes 20 ms to make, as a slow disk would."""

    def _make(self, idx):
        time.sleep(0.02)
        return super()._make(idx)


def test_log_records_the_wait_for_data(setup, tmp_path):
    model, tr, va = setup
    cfg = TrainConfig(max_epochs=2, batch_size=64, progress=False)
    res = train(model, _SlowData(tr.pos, tr.forces), va, cfg, tmp_path)
    rows = read_csv(tmp_path / "log.csv")
    for row, logged in zip(res.history, rows, strict=True):
        wait, epoch = row["data_wait_s"], row["epoch_time_s"]
        assert 4 * 0.02 <= wait <= epoch  # 4 batches of 64, each 20 ms late, within the epoch
        assert float(logged["data_wait_s"]) == wait
    fast = train(model, tr, va, cfg, tmp_path / "fast")  # in memory: slicing only
    assert all(0 <= r["data_wait_s"] <= r["epoch_time_s"] for r in fast.history)


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_resume_equals_uninterrupted(setup, tmp_path, optimizer):
    model, tr, va = setup
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_epochs=6, batch_size=32, progress=False, optimizer=optimizer)
    full = train(model, tr, va, cfg, tmp_path / "a")
    full_state = {k: v.clone() for k, v in model.state_dict().items()}

    calls = []

    def interrupt_after_three(gen):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in epoch 4
        return tr

    model.load_state_dict(init)
    with pytest.raises(KeyboardInterrupt):
        train(model, tr, va, cfg, tmp_path / "b", resample=interrupt_after_three)
    fresh = PaperForceModel(hidden=[32, 32])  # a new process builds a new model
    res = train(fresh, tr, va, cfg, tmp_path / "b")
    assert res.epochs == 6
    assert [r["val_force_rmse"] for r in res.history] == [r["val_force_rmse"] for r in full.history]
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, full_state[k]), k


def test_resume_refuses_other_config(setup, tmp_path):
    model, tr, va = setup
    train(model, tr, va, TrainConfig(max_epochs=1, batch_size=32, progress=False), tmp_path)
    other = PaperForceModel(hidden=[8])
    with pytest.raises(ValueError, match="another model configuration"):
        train(other, tr, va, TrainConfig(max_epochs=2, batch_size=32, progress=False), tmp_path)
    with pytest.raises(ValueError, match="other training settings"):
        train(model, tr, va, TrainConfig(max_epochs=2, batch_size=64, progress=False), tmp_path)


def test_nan_stops_and_keeps_last_good_checkpoint(setup, tmp_path):
    model, tr, va = setup
    train(model, tr, va, TrainConfig(max_epochs=2, batch_size=32, progress=False), tmp_path)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    bad = DenseForceData(tr.pos.clone(), tr.forces.clone())
    bad.forces[5, 0, 0] = math.nan
    with pytest.warns(RuntimeWarning, match="non-finite training loss"):
        res = train(
            model, bad, va, TrainConfig(max_epochs=4, batch_size=32, progress=False), tmp_path
        )
    assert res.stop_reason == "nan"
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert after["epoch"] == good["epoch"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fire_and_resampling(setup):
    model, tr, va = setup
    before = evaluate(model, va)["force_rmse"]
    res = train(
        model, tr, va, TrainConfig(optimizer="fire", batch_size=None, max_steps=40, progress=False)
    )
    assert res.steps == 40 and res.best_val_rmse < before
    assert "fire_dt" in res.history[0]
    calls = []

    def resample(gen):
        calls.append(1)
        pos = sample_paper_configurations(64, generator=gen)
        return DenseForceData(pos.float(), lennard_jones(pos)[1].float())

    train(
        model, tr, va, TrainConfig(max_epochs=3, batch_size=32, progress=False), resample=resample
    )
    assert len(calls) == 3


def test_config_errors():
    with pytest.raises(ValueError, match="at least one"):
        TrainConfig()
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd", max_epochs=1)
    with pytest.raises(ValueError, match="shape"):
        DenseForceData(torch.zeros(3, 4, 3), torch.zeros(3, 4))


def _fresh(setup):
    model, tr, va = setup
    return model, {k: v.clone() for k, v in model.state_dict().items()}, tr, va


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor needs a C++ compiler (the fallback is tested without one)",
)
def test_compiled_training_matches_eager(setup):
    model, init, tr, va = _fresh(setup)
    cfg = TrainConfig(max_epochs=2, batch_size=48, lr=1e-2, progress=False)  # a partial batch
    eager = train(model, tr, va, cfg)
    model.load_state_dict(init)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback where a compiler exists
        compiled = train(model, tr, va, dataclasses.replace(cfg, compile=True))
    assert compiled.compiled and not eager.compiled
    assert compiled.steps == eager.steps
    assert compiled.best_val_rmse == pytest.approx(eager.best_val_rmse, rel=1e-3)


def test_failed_compilation_falls_back_to_eager(setup, monkeypatch):
    model, init, tr, va = _fresh(setup)
    cfg = TrainConfig(max_epochs=1, batch_size=64, progress=False)
    eager = train(model, tr, va, cfg)
    model.load_state_dict(init)

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*InvalidCxxCompiler"):
        fallback = train(model, tr, va, dataclasses.replace(cfg, compile=True))
    assert not fallback.compiled
    assert fallback.best_val_rmse == pytest.approx(eager.best_val_rmse, rel=1e-6)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("CppCompileError: the backward graph did not compile")


def test_failed_compiled_backward_falls_back_cleanly(setup, monkeypatch):
    model, init, tr, va = _fresh(setup)
    cfg = TrainConfig(max_epochs=1, batch_size=64, progress=False)
    eager = train(model, tr, va, cfg)
    model.load_state_dict(init)
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: lambda *a: _FailingBackward.apply(fn(*a))
    )
    with pytest.warns(RuntimeWarning, match="CppCompileError"):
        fallback = train(model, tr, va, dataclasses.replace(cfg, compile=True))
    # the failed step's partial gradients were dropped: the same result as eager
    assert not fallback.compiled
    assert fallback.best_val_rmse == pytest.approx(eager.best_val_rmse, rel=1e-6)


def test_data_errors_are_not_blamed_on_compilation(setup, monkeypatch):
    model, _, tr, va = _fresh(setup)
    bad = DenseForceData(tr.pos[:, :3], tr.forces[:, :3])  # 3 atoms for a 4-atom model
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = eager
    cfg = TrainConfig(max_epochs=1, batch_size=64, progress=False, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match="exactly 4 atoms"):
            train(model, bad, va, cfg)


def test_static_shapes_skip_the_short_batch(setup, monkeypatch):
    """With one compiled shape, the short last batch of each epoch is skipped; eager and
    shape-agnostic compiled runs take every batch."""
    model, _, tr, va = _fresh(setup)
    calls = []

    def record(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", record)  # "compiled" = eager, its options kept
    cfg = TrainConfig(max_epochs=2, batch_size=48, progress=False, compile=True)
    every = train(model, tr, va, cfg)
    static = train(model, tr, va, dataclasses.replace(cfg, static_shapes=True))
    eager = train(model, tr, va, dataclasses.replace(cfg, compile=False, static_shapes=True))
    assert every.steps == eager.steps == 2 * math.ceil(256 / 48)
    assert static.steps == 2 * (256 // 48)
    assert calls[1]["dynamic"] is None  # specialise first (a dense model: never dynamic=True)


def test_adam_is_fused_where_torch_has_it(setup):
    from uenn_geo.train.loop import _make_optimizer

    model, *_ = setup
    assert _make_optimizer(model, TrainConfig(max_epochs=1)).defaults["fused"]
    assert _make_optimizer(model.double(), TrainConfig(max_epochs=1)).defaults["fused"]


@pytest.mark.slow
def test_compile_may_change_on_resume(setup, tmp_path):
    model, _, tr, va = _fresh(setup)
    cfg = TrainConfig(max_epochs=1, batch_size=64, progress=False, compile=True)
    train(model, tr, va, cfg, tmp_path)
    res = train(
        model,
        tr,
        va,
        TrainConfig(max_epochs=2, batch_size=64, progress=False, compile=False),
        tmp_path,
    )
    assert res.epochs == 2


def test_the_time_schedule_starts_after_the_compilation():
    from uenn_geo.train.loop import _progress_fraction

    cfg = TrainConfig(time_limit=100.0, progress=False)
    assert _progress_fraction(cfg, 0, 0, 60.0) == pytest.approx(0.6)
    assert _progress_fraction(cfg, 0, 0, 60.0, compile_s=20.0) == pytest.approx(0.5)
    assert _progress_fraction(cfg, 0, 0, 20.0, compile_s=20.0) == 0.0
    assert _progress_fraction(cfg, 0, 0, 150.0, compile_s=120.0) == 1.0  # no time left
    epochs = TrainConfig(time_limit=100.0, max_epochs=10, progress=False)  # epochs govern
    assert _progress_fraction(epochs, 5, 0, 90.0, compile_s=20.0) == pytest.approx(0.5)


def test_stage_two_starts_once_from_the_averaged_weights(tmp_path, monkeypatch, small_energy_model):
    """At the switch the live weights take the moving average's and Adam starts afresh;
    the energy weight is raised; a resumed run past the switch does not switch again."""
    from uenn_geo.data import LJClusters
    from uenn_geo.train import loop

    clusters = LJClusters(str(tmp_path / "lj"), num_configs=8, min_atoms=3, max_atoms=6, log=False)
    model = small_energy_model(clusters)
    seen = []
    start = loop._Run.start_stage_two

    def spy(run):
        averaged = [s.clone() for s in run.ema.shadow]
        start(run)
        same = all(torch.equal(p, a) for p, a in zip(run.ema.params, averaged, strict=True))
        seen.append((run.state.epoch, same, len(run.optimizer.state)))

    monkeypatch.setattr(loop._Run, "start_stage_two", spy)
    cfg = TrainConfig(max_epochs=4, batch_size=4, energy_weight=0.01, stage_two=0.5, progress=False)
    train(model, clusters[:6], clusters[6:], cfg, out_dir=tmp_path / "run")
    assert seen == [(2, True, 0)]  # at the first step of epoch 3 (epochs counted from 0)
    train(
        model, clusters[:6], clusters[6:], dataclasses.replace(cfg, max_epochs=6), tmp_path / "run"
    )
    assert len(seen) == 1


def test_stage_two_picks_its_model_by_its_own_loss(tmp_path, small_energy_model):
    """From the switch on, the validation score weighs the energies as stage two's loss does,
    and the saved model is the best of stage two (scores of the two stages are not
    comparable: stage one's best would otherwise be kept whatever stage two reaches)."""
    from uenn_geo.data import LJClusters

    clusters = LJClusters(str(tmp_path / "lj"), num_configs=8, min_atoms=3, max_atoms=6, log=False)
    model = small_energy_model(clusters)
    cfg = TrainConfig(max_epochs=4, batch_size=4, energy_weight=0.01, stage_two=0.5, progress=False)
    result = train(model, clusters[:6], clusters[6:], cfg, out_dir=tmp_path / "run")
    scale = float(model.force_scale)
    for row in result.history:
        weight = cfg.stage_two_energy_weight if row["epoch"] > 2 else cfg.energy_weight
        f, e = row["val_force_rmse"] / scale, row["val_energy_rmse_per_atom"] / scale
        assert row["val_score"] == pytest.approx(math.sqrt(f * f + weight * e * e) * scale)
    assert result.best_epoch > 2  # a stage-two epoch


def test_muon_reads_a_graph_layers_weights_as_configured_and_a_resumed_run_keeps_it(tmp_path):
    """``muon_nd_as`` reaches the optimiser (the two readings train a graph model, whose
    radial weights have four dimensions, differently), and a run resumed with the other
    reading goes on with the one it began with, as if never interrupted."""
    from uenn_geo.data import LJClusters
    from uenn_geo.models import UENNForceField

    clusters = LJClusters(str(tmp_path / "lj"), num_configs=8, min_atoms=3, max_atoms=6, log=False)
    train_set, val_set = clusters[:6], clusters[6:]

    def small_model():  # radial weights per species pair: four dimensions
        torch.manual_seed(0)
        kwargs = {"num_blocks": 1, "hidden_channels": 8, "mlp_channels": [8], "pair_term": False}
        model = UENNForceField(dtype="float64", conservative=True, species_pairs=True, **kwargs)
        model.fit_scales(clusters)
        return model

    def config(nd_as):
        return TrainConfig(
            max_epochs=3, batch_size=4, progress=False, optimizer="muon", muon_nd_as=nd_as
        )

    states = {}
    for nd_as in ("rows", "batch"):
        model = small_model()
        train(model, train_set, val_set, config(nd_as), out_dir=tmp_path / nd_as)
        states[nd_as] = model.state_dict()
    weight = "convs.0.weight"
    assert states["rows"][weight].dim() == 4
    assert not torch.allclose(states["rows"][weight], states["batch"][weight])

    calls = []

    def interrupt_in_epoch_two(gen):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_set

    with pytest.raises(KeyboardInterrupt):
        train(small_model(), train_set, val_set, config("rows"), tmp_path / "cut",
              resample=interrupt_in_epoch_two)  # fmt: skip
    model = small_model()  # a new process, given the other reading
    train(model, train_set, val_set, config("batch"), out_dir=tmp_path / "cut")
    for k, v in model.state_dict().items():
        assert torch.equal(v, states["rows"][k]), k
