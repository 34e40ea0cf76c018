"""Training checkpoints: a versioned format, and the check that a run may resume from one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uenn_geo.files import atomic_save
from uenn_geo.models import model_from_record
from uenn_geo.train.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "uenn-geo-checkpoint"
CHECKPOINT_VERSION = 1

#: Fields of :class:`TrainConfig` that may change when a run is resumed (limits, display).
RESUMABLE_FIELDS = frozenset(
    {"max_epochs", "max_steps", "time_limit", "patience", "progress", "compile"}
)


def save_checkpoint(path: Path, config: TrainConfig, content: dict[str, Any]) -> None:
    """Write ``content`` (model record, optimiser state, counters...) atomically, with the
    format tag and the training settings that :func:`load_checkpoint` checks."""
    tag = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    atomic_save({**tag, "train_config": dataclasses.asdict(config), **content}, path)


def load_checkpoint(path: Path, model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint at ``path``, once checked to fit ``model`` and ``config``.

    Raises:
        ValueError: not a checkpoint, another version, another model configuration, or other
            training settings than those a resumed run may change.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    _check_format(ckpt, path)
    _check_model(ckpt["model"], model, path)
    _check_config(ckpt["train_config"], config, path)
    return ckpt


def _check_format(ckpt: Any, path: Path) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a uenn-geo training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}"
        )


def _check_model(saved_model: dict[str, Any], model: nn.Module, path: Path) -> None:
    legacy = getattr(type(model), "legacy_config", {})
    saved_config = {**legacy, **saved_model["config"]}
    if saved_config != model.config or type(model_from_record(saved_model)) is not type(model):
        raise ValueError(
            f"{path} was written for another model configuration: checkpoint has "
            f"{saved_model['model']} {saved_config}, this run has "
            f"{type(model).__name__} {model.config}; use another --out directory or "
            "resume=False"
        )


def _check_config(saved_config: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = {"energy_weight": 0.0, **saved_config}
    old = {k: v for k, v in saved.items() if k not in RESUMABLE_FIELDS}
    now = dataclasses.asdict(config)
    new = {k: v for k, v in now.items() if k not in RESUMABLE_FIELDS}
    if old != new:
        diff = {
            k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)
        }
        raise ValueError(
            f"{path} was written with other training settings (checkpoint, now): {diff}; "
            "use another --out directory or resume=False"
        )
