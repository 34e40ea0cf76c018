r"""Training force models: Adam with mini-batches (default) or the paper's FIRE.

One function, :func:`train`, is what the command line calls. It validates every epoch,
keeps the best model (``model.pt``), writes a resumable checkpoint (``checkpoint.pt``) and a
CSV log (``log.csv``) into ``out_dir``, all atomically, and stops on a time limit, a step or
epoch limit, a validation plateau, or a non-finite loss (keeping the last good checkpoint).

The loss is the mean squared force error in units of the model's ``force_scale`` (the
paper's standard-deviation scaling, eq. 42); reported errors are in eV/A.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from uenn_geo.files import atomic_save, atomic_write
from uenn_geo.models import model_from_record, model_record, save_model

__all__ = ["TrainConfig", "TrainResult", "DenseForceData", "train", "evaluate", "force_loss"]

CHECKPOINT_FORMAT = "uenn-geo-checkpoint"
CHECKPOINT_VERSION = 1

log = logging.getLogger(__name__)

#: Fields of :class:`TrainConfig` that may change when a run is resumed (limits, display).
_RESUMABLE_FIELDS = {"max_epochs", "max_steps", "time_limit", "patience", "progress", "compile"}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Args:
        optimizer: ``"adam"`` (mini-batch, the fast default) or ``"fire"`` (the paper's).
        lr: Adam's initial learning rate.
        lr_final: learning rate at the end of the cosine schedule, as a fraction of ``lr``.
        schedule: ``"cosine"`` (over the time/step/epoch budget, whichever is tightest),
            ``"plateau"`` (halve on a validation plateau of 5 epochs) or ``"constant"``.
        batch_size: structures per step; :obj:`None` for full batch (the paper's FIRE).
        max_epochs, max_steps, time_limit: stopping limits (time in seconds of training).
        patience: stop after this many epochs without validation improvement.
        weight_decay: Adam's (decoupled, AdamW) weight decay.
        grad_clip: clip the gradient norm to this value (Adam only).
        seed: seeds parameter-independent randomness (shuffling, resampling).
        eval_batch_size: structures per evaluation batch.
        fire: keyword arguments of :class:`~uenn_geo.optim.FIRE`.
        ema_decay: keep an exponential moving average of the weights with this decay
            (warmed up as ``min(decay, (1 + t) / (10 + t))`` at step ``t``); validation, the
            best model and the returned model use the averaged weights. :obj:`None` turns it
            off (default: 0.999 for Adam; FIRE runs never average).
        energy_weight: weight of the energy term of the loss (models with an energy, e.g.
            ``UENNForceField(conservative=True)``, on graphs carrying ``energy`` in eV);
            0 trains on forces only.
        progress: show a progress bar.
        compile: run the training loss (forward and backward) through :func:`torch.compile`
            (Adam only). Inductor generates C++ for the CPU, so this needs a C++ compiler;
            if compilation fails, training warns once and goes on eagerly. Fastest for
            small networks whose step cost is mostly per-operation overhead (the paper's
            network: 1.7x on one CPU thread). A resumed run may change it.
    """

    optimizer: str = "adam"
    lr: float = 2e-3
    lr_final: float = 1e-3
    schedule: str = "cosine"
    batch_size: int | None = 256
    max_epochs: int | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    patience: int | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    eval_batch_size: int = 4096
    fire: dict[str, float] = field(default_factory=dict)
    ema_decay: float | None = 0.999
    energy_weight: float = 0.0
    progress: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "fire"):
            raise ValueError(f"optimizer must be 'adam' or 'fire', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'plateau' or 'constant', got {self.schedule!r}"
            )
        if self.max_epochs is None and self.max_steps is None and self.time_limit is None:
            raise ValueError("give at least one of max_epochs, max_steps and time_limit")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay}")


class _EMA:
    """Exponential moving average of a model's parameters, swapped in for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to undo)."""
        for p, s in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.clone() for s in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, saved in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(saved)
        self.updates = state["updates"]


@dataclass
class TrainResult:
    """What :func:`train` returns; ``history`` holds the rows of ``log.csv``."""

    best_val_rmse: float
    best_epoch: int
    epochs: int
    steps: int
    elapsed: float
    stop_reason: str
    history: list[dict[str, float]]
    out_dir: Path | None
    #: whether this call's steps ran through :func:`torch.compile` (``config.compile``),
    #: to the end
    compiled: bool = False


class DenseForceData:
    r"""Structures of equal size as dense tensors, batched without PyG collation.

    Args:
        pos (Tensor): positions :obj:`[B, A, 3]` (Angstrom).
        forces (Tensor): forces :obj:`[B, A, 3]` (eV/A).
    """

    def __init__(self, pos: Tensor, forces: Tensor) -> None:
        if pos.dim() != 3 or pos.shape != forces.shape:
            raise ValueError(
                f"pos and forces must both have shape [B, A, 3], got {tuple(pos.shape)} and "
                f"{tuple(forces.shape)}"
            )
        self.pos = pos
        self.forces = forces

    def __len__(self) -> int:
        return self.pos.shape[0]

    def _make(self, idx: Tensor | slice) -> Data:
        pos, forces = self.pos[idx], self.forces[idx]
        b, a = pos.shape[:2]
        batch = torch.arange(b, device=pos.device).repeat_interleave(a)
        return Data(pos=pos.reshape(b * a, -1), forces=forces.reshape(b * a, -1), batch=batch)

    def batches(
        self,
        batch_size: int | None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Data]:
        n = len(self)
        size = n if batch_size is None else batch_size
        if shuffle:
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, size):
                yield self._make(order[start : start + size])
        else:
            for start in range(0, n, size):
                yield self._make(slice(start, start + size))


def _batches(
    data: Any, batch_size: int | None, shuffle: bool, generator: torch.Generator | None
) -> Iterator[Data]:
    if isinstance(data, DenseForceData):
        yield from data.batches(batch_size, shuffle, generator)
        return
    from torch_geometric.loader import DataLoader

    size = len(data) if batch_size is None else batch_size
    yield from DataLoader(data, batch_size=size, shuffle=shuffle, generator=generator)


def force_loss(model: nn.Module, data: Data, energy_weight: float = 0.0) -> Tensor:
    r"""Mean squared force error in units of ``model.force_scale`` (dimensionless).

    With ``energy_weight`` :math:`w > 0` (models with ``energy_forces``) it adds
    :math:`w \langle ((E - E^\mathrm{ref}) / (s_E N_g))^2 \rangle` over the structures
    :math:`g` (:math:`s_E` = ``model.energy_scale``, :math:`N_g` atoms).
    """
    if energy_weight > 0:
        if not getattr(model, "conservative", False):
            raise ValueError("energy_weight > 0 needs a model with an energy (conservative=True)")
        out = model.energy_forces(data)
        pred, energy = out["forces"], out["energy"]
        target = data.forces.to(pred.dtype)
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
        atoms = torch.bincount(batch, minlength=energy.shape[0]).to(energy.dtype)
        ref = data.energy.reshape(-1).to(energy.dtype)
        e_loss = ((energy - ref) / (model.energy_scale * atoms)).square().mean()
        f_loss = ((pred - target) / model.force_scale).square().mean()
        return f_loss + energy_weight * e_loss
    pred = model(data)
    target = data.forces.to(pred.dtype)
    if pred.shape != target.shape:
        raise ValueError(
            f"model returned forces of shape {tuple(pred.shape)}, data has {tuple(target.shape)}"
        )
    return ((pred - target) / model.force_scale).square().mean()


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 4096) -> dict[str, float]:
    """Force RMSE and MAE over all components (eV/A), the paper's "force RMSD"."""
    was_training = model.training
    model.eval()
    sq = ab = 0.0
    count = 0
    for batch in _batches(data, batch_size, False, None):
        diff = (model(batch).double() - batch.forces.double()).flatten()
        sq += diff.square().sum().item()
        ab += diff.abs().sum().item()
        count += diff.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {"force_rmse": math.sqrt(sq / count), "force_mae": ab / count, "components": count}


class _LossFunction:
    """:func:`force_loss` of ``model``, through :func:`torch.compile` if the config asks and
    it works here.

    When a compiled step raises, the same step runs eagerly: if that raises too, the error
    is the data's and propagates (compilation stays on); if it succeeds, compilation is what
    failed (e.g. no C++ compiler), so training warns once and goes on eagerly.
    """

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.model = model
        self.energy_weight = config.energy_weight
        self.compiled = None
        self.compiled_steps = 0
        if config.compile and config.optimizer == "adam":
            self.compiled = torch.compile(self._eager)

    def _eager(self, data: Data) -> Tensor:
        return force_loss(self.model, data, self.energy_weight)

    def backward(self, data: Data) -> Tensor:
        """The loss of ``data``, its gradient accumulated into the parameters."""
        if self.compiled is None:
            loss = self._eager(data)
            loss.backward()
            return loss
        try:
            loss = self.compiled(data)
            loss.backward()  # the backward graph may compile only here
            self.compiled_steps += 1
            return loss
        except Exception as err:
            self.model.zero_grad(set_to_none=True)
            loss = self._eager(data)  # a data error raises here, with its own traceback
            loss.backward()
            self.compiled = None
            log.debug("torch.compile failed", exc_info=err)
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); training goes "
                "on without it",
                RuntimeWarning,
                stacklevel=3,
            )
            return loss


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "fire":
        from uenn_geo.optim import FIRE

        return FIRE(model.parameters(), **cfg.fire)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _progress_fraction(cfg: TrainConfig, epoch: float, step: int, elapsed: float) -> float:
    fractions = [0.0]
    if cfg.max_epochs:
        fractions.append(epoch / cfg.max_epochs)
    if cfg.max_steps:
        fractions.append(step / cfg.max_steps)
    if cfg.time_limit:
        fractions.append(elapsed / cfg.time_limit)
    return min(1.0, max(fractions))


def _cosine_lr(cfg: TrainConfig, progress: float) -> float:
    low = cfg.lr * cfg.lr_final
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _check_compatible(ckpt: dict, model: nn.Module, cfg: TrainConfig, path: Path) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a uenn-geo training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    saved_model = ckpt["model"]
    legacy = getattr(type(model), "legacy_config", {})
    saved_config = {**legacy, **saved_model["config"]}
    if saved_config != model.config or type(model_from_record(saved_model)) is not type(model):
        raise ValueError(
            f"{path} was written for another model configuration: checkpoint has "
            f"{saved_model['model']} {saved_config}, this run has "
            f"{type(model).__name__} {model.config}; use another --out directory or "
            "resume=False"
        )
    saved = {"energy_weight": 0.0, **ckpt["train_config"]}
    old = {k: v for k, v in saved.items() if k not in _RESUMABLE_FIELDS}
    new = {k: v for k, v in _config_dict(cfg).items() if k not in _RESUMABLE_FIELDS}
    if old != new:
        diff = {
            k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)
        }
        raise ValueError(
            f"{path} was written with other training settings (checkpoint, now): {diff}; "
            "use another --out directory or resume=False"
        )


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")


def train(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    resample: Callable[[torch.Generator], Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    r"""Train ``model`` on forces; keep the best model by validation force RMSE.

    Args:
        model: a force model (see :mod:`uenn_geo.models`) with its scales already fitted.
        train_data, val_data: :class:`DenseForceData` or PyG datasets of graphs with
            ``forces``.
        config: the :class:`TrainConfig`.
        out_dir: where ``model.pt`` (best), ``checkpoint.pt`` (latest, resumable) and
            ``log.csv`` go; :obj:`None` keeps everything in memory.
        resume: continue from ``out_dir/checkpoint.pt`` if present. The checkpoint must come
            from the same model configuration and training settings (limits may differ);
            resuming gives the same result as an uninterrupted run with the same limits
            (exactly so with step or epoch limits; a time limit depends on the machine).
        resample: optional ``f(generator) -> train_data`` drawing a fresh training set at the
            start of every epoch (online sampling from a generator, which removes
            overfitting when the data source is a cheap generator).
        metadata: stored in ``model.pt`` beside the weights.

    Returns:
        A :class:`TrainResult`; the model ends holding the best weights.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out else None
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = _make_optimizer(model, config)
    plateau = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=5)
        if config.schedule == "plateau" and config.optimizer == "adam"
        else None
    )
    ema = (
        _EMA(model, config.ema_decay)
        if config.ema_decay is not None and config.optimizer == "adam"
        else None
    )
    history: list[dict[str, float]] = []
    epoch = step = 0
    elapsed = 0.0
    best_val, best_epoch = math.inf, -1
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    epochs_since_best = 0

    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_compatible(ckpt, model, config, ckpt_path)
        model.load_state_dict(ckpt["model"]["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if plateau is not None and ckpt.get("plateau") is not None:
            plateau.load_state_dict(ckpt["plateau"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        epoch, step, elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed"]
        best_val, best_epoch = ckpt["best_val"], ckpt["best_epoch"]
        best_state = ckpt["best_state"]
        epochs_since_best = ckpt["epochs_since_best"]
        history = ckpt["history"]

    def limits_reached() -> str | None:
        if config.max_epochs is not None and epoch >= config.max_epochs:
            return "max_epochs"
        if config.max_steps is not None and step >= config.max_steps:
            return "max_steps"
        if config.time_limit is not None and elapsed >= config.time_limit:
            return "time_limit"
        if config.patience is not None and epochs_since_best >= config.patience:
            return "plateau"
        return None

    if config.time_limit is not None:
        bar = tqdm(total=round(config.time_limit), unit="s", disable=not config.progress)
        bar.update(min(round(elapsed), round(config.time_limit)))
    else:
        total = config.max_epochs if config.max_epochs is not None else None
        bar = tqdm(total=total, unit="epoch", disable=not config.progress, initial=epoch)

    loss_fn = _LossFunction(model, config)
    stop_reason = limits_reached()
    last_shown = round(elapsed)
    while stop_reason is None:
        t0 = time.perf_counter()
        data = resample(gen) if resample is not None else train_data
        model.train()
        loss_sum, loss_count = 0.0, 0
        nan = False
        for batch in _batches(data, config.batch_size, True, gen):
            if config.optimizer == "adam" and config.schedule == "cosine":
                frac = _progress_fraction(config, epoch, step, elapsed + time.perf_counter() - t0)
                for group in optimizer.param_groups:
                    group["lr"] = _cosine_lr(config, frac)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn.backward(batch)
            if not torch.isfinite(loss):
                nan = True
                break
            if config.grad_clip is not None and config.optimizer == "adam":
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update()
            loss_sum += loss.item()
            loss_count += 1
            step += 1
            if config.max_steps is not None and step >= config.max_steps:
                break
            if config.time_limit is not None and (
                elapsed + time.perf_counter() - t0 >= config.time_limit
            ):
                break
        if nan:
            warnings.warn(
                f"non-finite training loss at epoch {epoch}, step {step}: training stopped; "
                "the last good checkpoint and the best model are kept",
                RuntimeWarning,
                stacklevel=2,
            )
            stop_reason = "nan"
            break
        train_time = time.perf_counter() - t0
        if ema is not None:
            ema.swap()
        val = evaluate(model, val_data, config.eval_batch_size)["force_rmse"]
        epoch += 1
        elapsed += time.perf_counter() - t0
        if plateau is not None:
            plateau.step(val)
        if not math.isfinite(val):
            stop_reason = "nan"
            warnings.warn(
                f"non-finite validation error at epoch {epoch}: training stopped",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        if val < best_val:
            best_val, best_epoch, epochs_since_best = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None:
                save_model(model, out / "model.pt", metadata)
        else:
            epochs_since_best += 1
        if ema is not None:
            ema.swap()
        row = {
            "epoch": epoch,
            "step": step,
            "elapsed_s": round(elapsed, 3),
            "epoch_time_s": round(train_time, 4),
            "lr": optimizer.param_groups[0].get("lr", float("nan")),
            "train_loss": loss_sum / max(loss_count, 1),
            "val_force_rmse": val,
        }
        if config.optimizer == "fire":
            row["fire_dt"] = optimizer.param_groups[0]["dt"]
        history.append(row)
        stop_reason = limits_reached()
        if out is not None:
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "model": model_record(model),
                    "optimizer": optimizer.state_dict(),
                    "plateau": plateau.state_dict() if plateau is not None else None,
                    "ema": ema.state_dict() if ema is not None else None,
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "train_config": _config_dict(config),
                    "epoch": epoch,
                    "step": step,
                    "elapsed": elapsed,
                    "best_val": best_val,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "epochs_since_best": epochs_since_best,
                    "history": history,
                },
                ckpt_path,
            )
            _write_log(out / "log.csv", history)
        if config.time_limit is not None:
            shown = min(round(elapsed), round(config.time_limit))
            bar.update(shown - last_shown)
            last_shown = shown
        else:
            bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3e}", val_rmse=f"{val:.3e}")
    bar.close()
    model.load_state_dict(best_state)
    return TrainResult(
        best_val_rmse=best_val,
        best_epoch=best_epoch,
        epochs=epoch,
        steps=step,
        elapsed=elapsed,
        stop_reason=stop_reason or "done",
        history=history,
        out_dir=out,
        compiled=loss_fn.compiled is not None and loss_fn.compiled_steps > 0,
    )


# --------------------------------------------------------------------------------------
# The `uenn-geo train` job: a data set from a file or a name, a model, train, test.
# --------------------------------------------------------------------------------------


def _named_datasets() -> dict[str, Callable[[str], Any]]:
    from uenn_geo.data import LJClusters, PaperArgon

    return {
        "paper": lambda root: PaperArgon(str(Path(root) / "paper_argon"), log=False),
        "lj-clusters": lambda root: LJClusters(str(Path(root) / "lj_clusters"), log=False),
    }


#: Names accepted by ``uenn-geo train --data`` besides a structure file.
DATASET_NAMES = ("paper", "lj-clusters")


def load_dataset(spec: str, root: str | Path = "datasets") -> Any:
    """A data set from an extended-XYZ (or other ASE-readable) file or a built-in name."""
    path = Path(spec)
    if path.is_file():
        from uenn_geo.data import ExtXYZDataset

        return ExtXYZDataset(str(path), root=str(Path(root) / "extxyz" / path.stem), log=False)
    named = _named_datasets()
    if spec not in named:
        raise ValueError(
            f"--data {spec!r} is neither a file nor a built-in data set; built-in: {sorted(named)}"
        )
    return named[spec](str(root))


@dataclass(frozen=True)
class TrainJob:
    """Settings of ``uenn-geo train``: data, model, limits (seconds), output directory."""

    data: str
    out: str = "runs/train"
    root: str = "datasets"
    model: str = "graph"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    time_limit: float | None = 600.0
    max_epochs: int | None = None
    batch_size: int = 16
    lr: float = 2e-3
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction must lie in (0, 1) and test_fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")


def run_training(job: TrainJob) -> dict[str, Any]:
    """Train a model on ``job.data``; writes ``model.pt``, ``log.csv`` and ``metrics.json``."""
    import json

    from uenn_geo.models import MODELS

    if job.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {job.model!r}")
    dataset = load_dataset(job.data, job.root)
    model_dtype = getattr(torch, job.model_kwargs.get("dtype", "float32"))
    dataset.transform = CastFloats(model_dtype)
    n = len(dataset)
    if n < 3:
        raise ValueError(f"{job.data} holds {n} structures; at least 3 are needed to split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(job.seed))
    n_val = max(1, round(job.val_fraction * n))
    n_test = round(job.test_fraction * n)
    val_set = dataset[perm[:n_val]]
    test_set = dataset[perm[n_val : n_val + n_test]] if n_test else None
    train_set = dataset[perm[n_val + n_test :]]
    kwargs = dict(job.model_kwargs)
    if job.model == "graph" and "atomic_numbers" not in kwargs:
        kwargs["atomic_numbers"] = sorted({int(z) for z in dataset._data.z.unique().tolist()})
    torch.manual_seed(job.seed)
    model = MODELS[job.model](**kwargs)
    if job.model == "paper":
        pos, forces = _stack_positions(train_set)
        model.fit_scales(pos, forces)
    else:
        model.fit_scales(train_set)
    cfg = TrainConfig(
        lr=job.lr,
        batch_size=job.batch_size,
        time_limit=job.time_limit,
        max_epochs=job.max_epochs,
        seed=job.seed,
        eval_batch_size=4 * job.batch_size,
        progress=job.progress,
    )
    out = Path(job.out)
    meta = {"data": job.data, "job": dataclasses.asdict(job)}
    result = train(model, train_set, val_set, cfg, out, resume=job.resume, metadata=meta)
    save_model(model, out / "model.pt", metadata=meta)
    metrics: dict[str, Any] = {
        "data": job.data,
        "structures": {"train": len(train_set), "val": len(val_set), "test": n_test},
        "model": job.model,
        "model_config": model.config,
        "best_val_force_rmse": result.best_val_rmse,
        "epochs": result.epochs,
        "steps": result.steps,
        "seconds": result.elapsed,
        "stop_reason": result.stop_reason,
    }
    if test_set is not None:
        metrics["test"] = evaluate(model, test_set, cfg.eval_batch_size)
    atomic_write(out / "metrics.json", lambda f: json.dump(metrics, f, indent=1), mode="w")
    return metrics


class CastFloats:
    """A PyG transform: floating-point attributes (pos, forces, energy, cell) to one dtype.

    Data sets keep float64 targets; a float32 model casts each batch once, here.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, data: Data) -> Data:
        data = data.clone()
        for key in ("pos", "forces", "energy", "cell", "shifts"):
            value = getattr(data, key, None)
            if isinstance(value, Tensor) and value.is_floating_point():
                setattr(data, key, value.to(self.dtype))
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dtype})"


def _stack_positions(dataset: Any) -> tuple[Tensor, Tensor]:
    pos = torch.stack([d.pos for d in dataset])
    forces = torch.stack([d.forces for d in dataset])
    return pos, forces
