r"""The paper's experiment end to end (Ma & Chan, sec. 4): data, training, test, MD, report.

:func:`run_paper` is what ``uenn-geo paper`` calls. It generates (or loads) the argon data
set, trains the force model, measures the test force RMSD, runs the MD test (10 samples of
4 atoms at 10 K, 1 fs, exact and learned forces side by side) and writes ``report.md``,
``metrics.json``, ``model.pt`` and the figures matching the paper's Figs. 2-7 into
``out``.

Two ways to train the paper's network are offered. ``sampling="fixed"`` is the paper's
protocol (a fixed set of 100,000 configurations, 60 % for training). ``sampling="online"``,
the default, draws a fresh training set from the same distribution every epoch: the sampling
recipe is a generator, and a fixed 60,000 configurations are too few for this network (it
overfits); validation and test sets stay the fixed ones of the paper's split.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from uenn_geo.data.lj import lennard_jones
from uenn_geo.data.paper import PaperArgon, sample_paper_configurations
from uenn_geo.experiments.paper.config import (
    PAPER_ADAM_LR,
    PAPER_ADAM_LR_LONG,
    PRESETS,
    PaperConfig,
    learning_rate,
    model_kwargs,
    preset_config,
    use_compile,
)
from uenn_geo.experiments.paper.md import jacobian_asymmetry, run_md_test
from uenn_geo.experiments.paper.published import PAPER_RESULTS
from uenn_geo.experiments.paper.report import write_paper_report
from uenn_geo.experiments.paper.summary import budget_label, compare_summary
from uenn_geo.files import atomic_write
from uenn_geo.group import random_orthogonal
from uenn_geo.models import MODELS, PaperForceModel, save_model
from uenn_geo.train import DenseForceData, TrainConfig, TrainResult, evaluate, train

__all__ = [
    "PaperConfig",
    "PRESETS",
    "preset_config",
    "run_paper",
    "run_md_test",
    "jacobian_asymmetry",
    "learning_rate",
    "use_compile",
    "PAPER_ADAM_LR",
    "PAPER_ADAM_LR_LONG",
    "PAPER_RESULTS",
]

#: Temperatures (K) of the compact thermal 4-atom clusters mixed in by ``augment``.
COMPACT_TEMPERATURES = (5.0, 10.0, 20.0, 40.0)
#: Size of that pool; every epoch draws from it with fresh random rotations.
COMPACT_POOL = 8192
#: Test configurations whose forces go into the parity plot (Fig. 3).
PARITY_CONFIGS = 5000
#: MD steps at which the report gives the position and energy RMSD.
MD_CHECK_STEPS = (1500, 4000, 10_000)


def _phase(config: PaperConfig, message: str) -> None:
    """One line on stderr when a phase starts (unless ``config.progress`` is off)."""
    if config.progress:
        print(f"uenn-geo paper: {message}", file=sys.stderr, flush=True)


@dataclass
class _Data:
    """The paper's split as dense tensors, and the data set's summary for ``metrics.json``."""

    train: DenseForceData
    val: DenseForceData
    test: DenseForceData
    summary: dict[str, Any]


@dataclass
class _Trained:
    model: torch.nn.Module
    config: TrainConfig
    result: TrainResult
    resample: Callable[[torch.Generator], DenseForceData] | None


@dataclass
class _Evaluation:
    test: dict[str, float]
    test_network: float | None
    train: dict[str, float]
    parity: dict[str, list[float]]


def run_paper(config: PaperConfig) -> dict[str, Any]:
    """Run the whole experiment; returns the metrics also written to ``metrics.json``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    compared = {d: compare_summary(d) for d in config.compare}
    data = load_data(config)
    trained = train_model(config, data, out)
    evaluation = evaluate_model(config, trained.model, data, out)
    fire = None
    if config.fire_compare_time > 0 and config.optimizer != "fire":
        _phase(config, f"FIRE beside Adam ({config.fire_compare_time:g} s)")
        fire = _fire_comparison(config, data, torch.float32)
    _phase(config, f"MD test ({config.md_samples} samples, {config.md_steps:,} steps)")
    md = run_md_test(
        trained.model,
        samples=config.md_samples,
        steps=config.md_steps,
        temperature=config.md_temperature,
        dt=config.md_dt,
        seed=config.seed,
        progress=config.progress,
    )
    metrics = {
        "config": asdict(config),
        "paper": PAPER_RESULTS,
        "data": data.summary,
        "train": _train_metrics(trained),
        "test_force_rmsd": evaluation.test["force_rmse"],
        "test_force_mae": evaluation.test["force_mae"],
        "test_force_rmsd_network": evaluation.test_network,
        "symmetrized": bool(getattr(trained.model, "symmetrize", False)),
        "train_force_rmsd": evaluation.train["force_rmse"],
        "fire": fire,
        "md": _md_metrics(md),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "total_seconds": time.perf_counter() - t_start,
        "compare": compared,
    }
    _phase(config, f"writing the report into {out}")
    write_paper_report(out, metrics, md, evaluation.parity)
    atomic_write(out / "metrics.json", lambda f: json.dump(metrics, f, indent=1), mode="w")
    return metrics


def load_data(config: PaperConfig, dtype: torch.dtype = torch.float32) -> _Data:
    """The paper's data set (generated once, then cached under ``config.root``), split."""
    _phase(config, f"data: {config.num_configs:,} configurations under {config.root}")
    t0 = time.perf_counter()
    dataset = PaperArgon(
        str(Path(config.root) / "paper_argon"),
        num_configs=config.num_configs,
        seed=config.seed,
        r_min=config.r_min,
        sigma=config.sigma,
        log=False,
    )
    train_data, val_data, test_data = (_dense(d, dtype) for d in dataset.split())
    summary = {
        "num_configs": len(dataset),
        "train": len(train_data),
        "val": len(val_data),
        "test": len(test_data),
        "force_std": float(train_data.forces.std()),
        "seconds": time.perf_counter() - t0,
    }
    return _Data(train_data, val_data, test_data, summary)


def _dense(ds: PaperArgon, dtype: torch.dtype) -> DenseForceData:
    pos, forces = ds.dense_tensors()
    return DenseForceData(pos.to(dtype), forces.to(dtype))


def _online_sampler(
    config: PaperConfig, num_train: int, dtype: torch.dtype
) -> Callable[[torch.Generator], DenseForceData]:
    """A fresh training set per epoch: the paper's recipe plus compact clusters (``augment``)."""
    num_compact = round(config.augment * num_train)
    pool = None
    if num_compact:
        _phase(config, "thermal 4-atom clusters for the training mix (short LJ MD runs)")
        pool = _compact_pool(min(COMPACT_POOL, 4 * num_compact), config.seed)

    def resample(gen: torch.Generator) -> DenseForceData:
        pos = sample_paper_configurations(
            num_train - num_compact, sigma=config.sigma, r_min=config.r_min, generator=gen
        )
        if pool is not None:
            pick = torch.randint(pool.shape[0], (num_compact,), generator=gen)
            pos = torch.cat([pos, _rotate(pool[pick], gen)])
        return DenseForceData(pos.to(dtype), lennard_jones(pos)[1].to(dtype))

    return resample


def train_model(config: PaperConfig, data: _Data, out: Path) -> _Trained:
    """Build the model, fit its scales and train it (resuming from ``out/train``)."""
    torch.manual_seed(config.seed)
    model = MODELS[config.model](**model_kwargs(config))
    _fit_scales(model, data.train)
    resample = None
    if config.sampling == "online":
        resample = _online_sampler(config, len(data.train), data.train.pos.dtype)
    train_cfg = TrainConfig(
        optimizer=config.optimizer,
        lr=_resumed_lr(config, out / "train" / "checkpoint.pt"),
        batch_size=config.batch_size if config.optimizer == "adam" else None,
        max_steps=config.max_steps,
        time_limit=config.time_limit,
        max_epochs=config.max_epochs,
        seed=config.seed,
        progress=config.progress,
        compile=use_compile(config),
    )
    guard = f", stops at {config.time_limit:g} s" if config.max_steps and config.time_limit else ""
    _phase(config, f"training {config.model} ({budget_label(asdict(config))}{guard})")
    result = train(
        model,
        data.train,
        data.val,
        train_cfg,
        out / "train",
        resume=config.resume,
        resample=resample,
        metadata={"experiment": "paper", "config": asdict(config)},
    )
    if result.stop_reason == "time_limit" and config.max_steps:
        _phase(config, f"training stopped at its time guard after {result.steps:,} steps")
    return _Trained(model, train_cfg, result, resample)


def evaluate_model(
    config: PaperConfig, model: torch.nn.Module, data: _Data, out: Path
) -> _Evaluation:
    """Test and training errors; averages the paper network over atom orderings first
    (``config.symmetrize``) and saves the model that is tested to ``out/model.pt``."""
    _phase(config, f"evaluating on {len(data.test):,} test configurations")
    test_network = None
    if config.symmetrize and isinstance(model, PaperForceModel):
        test_network = evaluate(model, data.test)["force_rmse"]
        model.symmetrize = True  # the same weights, averaged over the atom orderings
    save_model(model, out / "model.pt", metadata={"experiment": "paper", "config": asdict(config)})
    test = evaluate(model, data.test)
    train_err = evaluate(model, _subset(data.train, len(data.test)))
    n = min(len(data.test), PARITY_CONFIGS)
    with torch.no_grad():
        pred = model(data.test._make(slice(0, n)))
    parity = {
        "exact": data.test.forces[:n].reshape(-1).tolist(),
        "predicted": pred.reshape(-1).tolist(),
    }
    return _Evaluation(test, test_network, train_err, parity)


def _train_metrics(trained: _Trained) -> dict[str, Any]:
    result = trained.result
    return {
        "lr": trained.config.lr,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": result.elapsed,
        "seconds_per_step": result.elapsed / max(result.steps, 1),
        "compiled": result.compiled,
        "stop_reason": result.stop_reason,
        "best_val_force_rmsd": result.best_val_rmse,
        "best_epoch": result.best_epoch,
        "history": result.history,
    }


def _at(series: list[float], step: int) -> float:
    return series[step] if step < len(series) else float("nan")


def _md_metrics(md: dict[str, Any]) -> dict[str, Any]:
    """The MD test's numbers at the report's check steps and its scalars."""
    steps = [s for s in MD_CHECK_STEPS if s <= md["steps"]]
    scalars = (
        "bounded",
        "md_states_force_rms",
        "md_states_force_rmsd",
        "md_states_jacobian_asymmetry",
        "exact_energy_drift",
        "seconds_learned",
        "seconds_exact",
    )
    return {
        "position_rmsd_at": {str(s): _at(md["position_rmsd"], s) for s in steps},
        "energy_rmsd_at": {str(s): _at(md["energy_rmsd"], s) for s in steps},
        **{k: md[k] for k in scalars},
    }


def _compact_pool(num: int, seed: int) -> torch.Tensor:
    """Thermal 4-atom argon clusters (the MD test's regime), from short LJ MD runs."""
    from uenn_geo.data.clusters import sample_lj_clusters

    sample = sample_lj_clusters(
        num,
        min_atoms=4,
        max_atoms=4,
        temperatures=COMPACT_TEMPERATURES,
        generator=torch.Generator().manual_seed(10_000 + seed),
    )
    return torch.stack(sample.pos)


def _rotate(pos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each configuration rotated by its own random orthogonal matrix."""
    q = random_orthogonal(3, dtype=pos.dtype, generator=gen, num=pos.shape[0])
    return pos @ q.transpose(-1, -2)


def _fit_scales(model: torch.nn.Module, data: DenseForceData) -> None:
    if isinstance(model, PaperForceModel):
        model.fit_scales(data.pos, data.forces)  # input and force standard deviations
    else:
        model.fit_scales(data)  # graph models also fit their pair term to the positions


def _subset(data: DenseForceData, n: int) -> DenseForceData:
    return DenseForceData(data.pos[:n], data.forces[:n])


def _fire_comparison(config: PaperConfig, data: _Data, dtype: torch.dtype) -> dict[str, Any]:
    """Short FIRE runs beside Adam: full batch (the paper's) and mini-batch, same time."""
    runs = {}
    for name, batch_size in (("fire_full_batch", None), ("fire_minibatch", 4096)):
        torch.manual_seed(config.seed)
        model = MODELS[config.model](**model_kwargs(config))
        _fit_scales(model, data.train)
        cfg = TrainConfig(
            optimizer="fire",
            batch_size=batch_size,
            time_limit=config.fire_compare_time / 2,
            seed=config.seed,
            progress=False,
        )
        res = train(model, data.train, data.val, cfg, None, resample=None)
        runs[name] = {
            "batch_size": batch_size,
            "steps": res.steps,
            "seconds": res.elapsed,
            "seconds_per_step": res.elapsed / max(res.steps, 1),
            "best_val_force_rmsd": res.best_val_rmse,
            "history": res.history,
        }
    return runs


def _resumed_lr(config: PaperConfig, checkpoint: Path) -> float:
    """:func:`learning_rate`, except that a run resumed without an explicit ``lr`` keeps
    the rate it started with (the default depends on the budget, which may change)."""
    if config.lr is None and config.resume and checkpoint.is_file():
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        saved = ckpt.get("train_config", {}).get("lr") if isinstance(ckpt, dict) else None
        if saved is not None:
            return float(saved)
    return learning_rate(config)
