r"""The training loop: Adam with mini-batches (default) or FIRE, resumable.

:func:`train` validates every epoch, keeps the best model (``model.pt``), writes a resumable
checkpoint (``checkpoint.pt``) and a CSV log (``log.csv``) into ``out_dir``, all atomically,
and stops on a time limit, a step or epoch limit, a validation plateau, or a non-finite loss
(keeping the last good checkpoint). The loss is :func:`~uenn_geo.train.force_loss`.
Each row of ``log.csv`` holds the epoch's training time ``epoch_time_s`` and, within it,
``data_wait_s``: the seconds its steps waited for their batches (time in the batch
iterator's ``next()``), so that the share of a step spent waiting on data is their ratio.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uenn_geo.files import write_csv
from uenn_geo.models import load_weights, model_record, save_model
from uenn_geo.optim import MuonAdam
from uenn_geo.train import distributed
from uenn_geo.train.checkpoint import load_checkpoint, save_checkpoint
from uenn_geo.train.config import TrainConfig, TrainResult
from uenn_geo.train.loss import LossFunction, has_energy
from uenn_geo.train.metrics import ALL

__all__ = ["train"]


def train(
    model: nn.Module,
    train_data: Any,
    val_data: Any,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = True,
    resample: Callable[[torch.Generator], Any] | None = None,
    metadata: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> TrainResult:
    r"""Train ``model`` on forces; keep the best model by validation force RMSE.

    Args:
        model: a force model (see :mod:`uenn_geo.models`) with its scales already fitted.
        train_data, val_data: :class:`~uenn_geo.train.DenseForceData` or PyG data sets of
            graphs with ``forces``.
        config: the :class:`~uenn_geo.train.TrainConfig`.
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
        identity: what makes this run this run (e.g. data hashes and the split), stored in
            the checkpoint; a resume with another identity is refused, naming the key.
            A resume of a finished run warns that there is nothing to train.

    Returns:
        A :class:`~uenn_geo.train.TrainResult`; the model ends holding the best weights.
    """
    run = _Run(model, config, Path(out_dir) if out_dir is not None else None, metadata)
    run.identity = identity
    if resume:
        run.resume()
    progress = _Progress(config, run.state)
    stop_reason = run.limit_reached()
    while stop_reason is None:
        t0 = time.perf_counter()
        data = resample(run.gen) if resample is not None else train_data
        train_loss = run.train_epoch(data, t0)
        if train_loss is None:
            warnings.warn(
                f"non-finite training loss at epoch {run.state.epoch}, step {run.state.step}: "
                "training stopped; the last good checkpoint and the best model are kept",
                RuntimeWarning,
                stacklevel=2,
            )
            stop_reason = "nan"
            break
        train_time = time.perf_counter() - t0
        val = run.validate(val_data, t0)
        if not math.isfinite(val):
            warnings.warn(
                f"non-finite validation error at epoch {run.state.epoch}: training stopped",
                RuntimeWarning,
                stacklevel=2,
            )
            stop_reason = "nan"
            break
        run.record(train_time, train_loss, val)
        stop_reason = run.limit_reached()
        run.save()
        progress.update(run.state, train_loss, val, run.val_metrics, run.lr)
    progress.close()
    return run.finish(stop_reason or "done")


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _State:
    """Where a run stands: the counters and records a checkpoint keeps, besides the
    optimiser, schedule, weight average and random states."""

    best_state: dict[str, Tensor]
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    compile_s: float = 0.0  # the first compiled step (compilation): not in the schedule
    best_val: float = math.inf
    best_epoch: int = -1
    epochs_since_best: int = 0
    stage_two_started: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> _State:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class _Run:
    """One call of :func:`train`: the model, its optimiser and what goes with it, the state."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        out: Path | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        self.model, self.config, self.out, self.metadata = model, config, out, metadata
        mini_batch = config.mini_batch
        # several ranks: rank 0's weights first, before the weights' average and the best
        # weights copy them; the gradients averaged after each backward (average_gradients)
        distributed.broadcast_state(model)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.optimizer = _make_optimizer(model, config)
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=0.5, patience=5)
            if config.schedule == "plateau" and mini_batch
            else None
        )
        self.ema = (
            _EMA(model, config.ema_decay) if config.ema_decay is not None and mini_batch else None
        )
        self.loss_fn = LossFunction(
            model,
            config.energy_weight,
            config.compile and mini_batch,
            config.stress_weight,
            static_shapes=config.static_shapes,
        )
        self.state = _State(best_state=_copy_state(model))
        self.identity: dict[str, Any] | None = None
        self.data_wait = 0.0  # seconds the last epoch's steps waited for their batches

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0].get("lr", float("nan")))

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    def resume(self) -> None:
        """Continue from the checkpoint in the output directory, if there is one."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return
        ckpt = load_checkpoint(path, self.model, self.config, self.identity)
        load_weights(self.model, ckpt["model"]["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.plateau is not None and ckpt.get("plateau") is not None:
            self.plateau.load_state_dict(ckpt["plateau"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.gen.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = _State.from_dict(ckpt)
        reason = self.limit_reached()
        if reason is not None:
            warnings.warn(
                f"the run in {self.out} has already finished ({reason}: epoch "
                f"{self.state.epoch}, step {self.state.step}); nothing to train. Raise "
                "--max-epochs or --time-limit (max_epochs, time_limit) to continue it, or "
                "start afresh with --restart (resume=False)",
                UserWarning,
                stacklevel=3,
            )

    def limit_reached(self) -> str | None:
        """The stop reason, once a limit is reached."""
        cfg, s = self.config, self.state
        if cfg.max_epochs is not None and s.epoch >= cfg.max_epochs:
            return "max_epochs"
        if cfg.max_steps is not None and s.step >= cfg.max_steps:
            return "max_steps"
        if cfg.time_limit is not None and s.elapsed >= cfg.time_limit:
            return "time_limit"
        if cfg.patience is not None and s.epochs_since_best >= cfg.patience:
            return "plateau"
        return None

    def train_epoch(self, data: Any, t0: float) -> float | None:
        """One pass over ``data`` (cut short by the step or time limit); the mean loss, or
        :obj:`None` at a non-finite loss (whose step is not taken)."""
        cfg, s = self.config, self.state
        cosine = cfg.mini_batch and cfg.schedule == "cosine"
        self.model.train()
        loss_sum, loss_count = 0.0, 0
        device = distributed.device_of(self.model)
        batches = distributed.train_batches(
            data, cfg.batch_size, self.gen, cfg.seed, s.epoch, device
        )
        padded = hasattr(batches, "__len__")  # packed and padded: one shape, their own number
        if padded:
            per_epoch = len(batches)
        else:
            per_epoch = distributed.batches_per_epoch(len(data), cfg.batch_size)
        skip_short = self.loss_fn.compiled is not None and cfg.static_shapes and cfg.batch_size
        skip_short = bool(skip_short) and not padded
        per_rank = math.ceil(len(data) / distributed.world_size())  # the sampler pads the ranks
        if skip_short and per_epoch > 1 and per_rank % cfg.batch_size:
            per_epoch -= 1  # the short last batch is skipped (one compiled shape)
        clock = distributed.StepClock(t0)  # one clock (and loss) for all ranks
        shard = _Timed(batches)
        for k, batch in enumerate(shard):
            if skip_short and k == per_epoch:
                continue  # the short last batch (its structures come in other epochs)
            epoch = s.epoch + k / per_epoch
            frac = _progress_fraction(cfg, epoch, s.step, s.elapsed + clock.now(), s.compile_s)
            if cosine:
                for group in self.optimizer.param_groups:
                    group["lr"] = _cosine_lr(cfg, frac)
            if cfg.stage_two is not None and frac >= cfg.stage_two:
                if not s.stage_two_started:
                    self.start_stage_two()
                self.loss_fn.energy_weight = cfg.stage_two_energy_weight
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn.backward(batch)
            distributed.average_gradients(self.model)  # several ranks: their mean
            loss = clock.agree(loss)
            if k == 0 and not s.compile_s:  # the ranks' mean: one schedule for every rank
                s.compile_s = distributed.agreed_seconds(self.loss_fn.compile_seconds or 0.0)
            if not torch.isfinite(loss):
                return None
            if cfg.grad_clip is not None and cfg.mini_batch:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            loss_sum += loss.item()
            loss_count += 1
            s.step += 1
            if cfg.max_steps is not None and s.step >= cfg.max_steps:
                break
            if cfg.time_limit is not None and s.elapsed + clock.now() >= cfg.time_limit:
                break
        self.data_wait = shard.seconds
        return loss_sum / max(loss_count, 1)

    def validate(self, val_data: Any, t0: float) -> float:
        """Close the epoch begun at ``t0``: the validation force RMSE (eV/A) of the averaged
        weights; a new best is kept (and saved as ``model.pt``)."""
        s = self.state
        if self.ema is not None:
            self.ema.swap()
        cfg = self.config  # stage two's model is picked by stage two's loss
        weight = cfg.stage_two_energy_weight if s.stage_two_started else cfg.energy_weight
        self.val_metrics = _validation(self.model, val_data, cfg, weight)
        val = self.val_metrics["score"]
        s.epoch += 1
        s.elapsed += distributed.agreed_seconds(_since(t0))
        if self.plateau is not None:
            self.plateau.step(val)
        if not math.isfinite(val):
            return val  # the run stops and ends on the best weights
        if val < s.best_val:
            s.best_val, s.best_epoch, s.epochs_since_best = val, s.epoch, 0
            s.best_state = _copy_state(self.model)
            if self.out is not None and distributed.is_main():
                save_model(self.model, self.out / "model.pt", self.metadata)
        else:
            s.epochs_since_best += 1
        if self.ema is not None:
            self.ema.swap()
        return val

    def record(self, train_time: float, train_loss: float, val: float) -> None:
        """Append the epoch's row to the history (``log.csv``)."""
        s, group = self.state, self.optimizer.param_groups[0]
        row = {
            "epoch": s.epoch,
            "step": s.step,
            "elapsed_s": round(s.elapsed, 3),
            "epoch_time_s": round(train_time, 4),
            "data_wait_s": round(self.data_wait, 4),
            "lr": group.get("lr", float("nan")),
            "train_loss": train_loss,
            "val_force_rmse": self.val_metrics["force_rmse"],
        }
        if "energy_rmse_per_atom" in self.val_metrics:
            row["val_energy_rmse_per_atom"] = self.val_metrics["energy_rmse_per_atom"]
            row["val_score"] = val
        if self.config.optimizer == "fire":
            row["fire_dt"] = group["dt"]
        s.history.append(row)

    def start_stage_two(self) -> None:
        """Stage two goes on from the averaged weights (those validated so far), with fresh
        moments (Adam's, Muon's): the live weights' energies drift where a light energy term leaves
        them free, and the moments were scaled to the forces' gradients alone."""
        self.state.stage_two_started = True
        # its scores weigh the energies more: the best model is picked among stage two's
        self.state.best_val, self.state.epochs_since_best = math.inf, 0
        if self.ema is not None:
            with torch.no_grad():
                for p, averaged in zip(self.ema.params, self.ema.shadow, strict=True):
                    p.copy_(averaged)
        self.optimizer.state.clear()

    def save(self) -> None:
        """Write ``checkpoint.pt`` and ``log.csv`` (with an output directory)."""
        if self.out is None or not distributed.is_main():
            return
        content = {
            "model": model_record(self.model),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            **self.state.as_dict(),
        }
        save_checkpoint(self.checkpoint_path, self.config, content, self.identity)
        history = self.state.history
        write_csv(self.out / "log.csv", history, list(history[0]))

    def finish(self, stop_reason: str) -> TrainResult:
        """Load the best weights into the model; the result."""
        s = self.state
        self.model.load_state_dict(s.best_state)
        best = s.history[s.best_epoch - 1] if s.best_epoch > 0 else {}
        return TrainResult(
            best_val_rmse=best.get("val_force_rmse", s.best_val),
            best_epoch=s.best_epoch,
            epochs=s.epoch,
            steps=s.step,
            elapsed=s.elapsed,
            stop_reason=stop_reason,
            history=s.history,
            out_dir=self.out,
            compiled=self.loss_fn.ran_compiled,
        )


class _Timed:
    """An iterator over ``batches`` that adds up the seconds spent in its ``next()``: for the
    training batches, the time the steps wait for their data (with DataLoader workers, the
    start of the workers and any batch not ready when the step asks for it; in memory, the
    slicing and collating), beside the steps' compute."""

    def __init__(self, batches: Any) -> None:
        self.batches = iter(batches)
        self.seconds = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0


class _Progress:
    """A progress bar over the budget that governs the schedule: steps, epochs, or seconds
    (only a time limit)."""

    def __init__(self, config: TrainConfig, state: _State) -> None:
        from tqdm.auto import tqdm

        off = not config.progress
        if config.max_steps:
            self.unit, total = "step", config.max_steps
        elif config.max_epochs:
            self.unit, total = "epoch", config.max_epochs
        else:
            self.unit, total = "s", round(config.time_limit or 0)
        self.total = total
        self.shown = min(self._count(state), total)
        self.bar = tqdm(total=total, unit=self.unit, disable=off, initial=self.shown)

    def _count(self, state: _State) -> int:
        return {"step": state.step, "epoch": state.epoch, "s": round(state.elapsed)}[self.unit]

    def update(
        self, state: _State, train_loss: float, val: float, metrics: dict, lr: float
    ) -> None:
        shown = min(self._count(state), self.total)
        self.bar.update(shown - self.shown)
        self.shown = shown
        self.bar.set_postfix(loss=f"{train_loss:.3e}", val=f"{val:.3e}")
        if self.bar.disable:
            return
        line = f"epoch {state.epoch:4d}  loss {train_loss:.3e}"
        if "energy_rmse_per_atom" in metrics:
            line += f"  E {1e3 * metrics['energy_rmse_per_atom']:.2f} meV/atom"
        line += f"  F {1e3 * metrics['force_rmse']:.1f} meV/A"
        if "force_rel_rmse" in metrics:
            line += f" ({metrics['force_rel_rmse']:.1f} %)"
        self.bar.write(line + f"  lr {lr:.2e}  {state.elapsed:.0f} s")

    def close(self) -> None:
        self.bar.close()


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


def _validation(
    model: nn.Module, data: Any, cfg: TrainConfig, energy_weight: float | None = None
) -> dict[str, float]:
    """Validation errors (eV/A, eV/atom) and the score that picks the best model: the force
    RMSE, or with an energy term the loss's own mix of force and per-atom energy errors
    (``energy_weight``, by default the configuration's)."""
    weight = cfg.energy_weight if energy_weight is None else energy_weight
    if weight <= 0 or not has_energy(model) or not _has_energies(data):
        rmse = distributed.force_rmse(model, data, cfg.eval_batch_size)
        return {"force_rmse": rmse, "score": rmse}
    row = distributed.error_table(model, data, cfg.eval_batch_size)[ALL]
    force, energy = row["force_rmse"] / 1e3, row["energy_rmse_per_atom"] / 1e3
    scale = float(model.force_scale)
    score = math.sqrt((force / scale) ** 2 + weight * (energy / scale) ** 2) * scale
    return {
        "force_rmse": force,
        "energy_rmse_per_atom": energy,
        "force_rel_rmse": row["force_rel_rmse"],
        "score": score,
    }


def _has_energies(data: Any) -> bool:
    first = data[0] if len(data) else None
    return first is not None and getattr(first, "energy", None) is not None


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "fire":
        from uenn_geo.optim import FIRE

        return FIRE(model.parameters(), **cfg.fire)
    params = list(model.parameters())
    if cfg.optimizer == "muon":
        return MuonAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, nd_as=cfg.muon_nd_as)
    # one fused kernel for all parameters where torch has it (CPU, CUDA), instead of a loop
    # over the tensors (docs/training.md measures the difference)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    fused = fused and all(p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, fused=fused or None
    )


def _progress_fraction(
    cfg: TrainConfig, epoch: float, step: int, elapsed: float, compile_s: float = 0.0
) -> float:
    """How far the run is, for the schedules: by epochs and steps when either is limited
    (the time limit is then only a guard, so runs are reproducible), else by time, counted
    from the end of the compilation (``compile_s``), so that it does not use up the schedule."""
    fractions = [0.0]
    if cfg.max_epochs:
        fractions.append(epoch / cfg.max_epochs)
    if cfg.max_steps:
        fractions.append(step / cfg.max_steps)
    if cfg.time_limit and not (cfg.max_epochs or cfg.max_steps):
        left = cfg.time_limit - compile_s
        fractions.append((elapsed - compile_s) / left if left > 0 else 1.0)
    return min(1.0, max(fractions))


def _cosine_lr(cfg: TrainConfig, progress: float) -> float:
    low = cfg.lr * cfg.lr_final
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))
