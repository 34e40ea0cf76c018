"""Training checkpoints: a versioned format, and the check that a run may resume from one.

A resumed run is the same run: the checkpoint records the model configuration, the training
settings and the run's identity (what the caller passes as ``identity``: for ``uenn-geo
train`` the SHA-1 of each data file, or a built-in set's name and size, and a hash of the
split), and :func:`load_checkpoint` refuses any difference, naming it, except the limits
(:data:`RESUMABLE_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uenn_geo.files import atomic_save
from uenn_geo.models import MODELS, model_from_record
from uenn_geo.train.config import TrainConfig

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "uenn-geo-checkpoint"
CHECKPOINT_VERSION = 1

#: How a refusal says to start afresh (the flag of ``uenn-geo train``, the argument of
#: :func:`uenn_geo.train.train`).
AFRESH = "start afresh with --restart (train(..., resume=False)) or use another --out"

#: Fields of :class:`TrainConfig` that may change when a run is resumed (limits, display;
#: Muon's reading of its matrices, which the optimiser's saved state then fixes).
RESUMABLE_FIELDS = frozenset(
    {"max_epochs", "max_steps", "time_limit", "patience", "progress", "compile", "muon_nd_as"}
)


def save_checkpoint(
    path: Path,
    config: TrainConfig,
    content: dict[str, Any],
    identity: dict[str, Any] | None = None,
) -> None:
    """Write ``content`` (model record, optimiser state, counters...) atomically, with the
    format tag, the training settings and the run's ``identity`` that
    :func:`load_checkpoint` checks."""
    tag = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
    config_dict = dataclasses.asdict(config)
    atomic_save({**tag, "train_config": config_dict, "identity": identity, **content}, path)


def load_checkpoint(
    path: Path, model: nn.Module, config: TrainConfig, identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The checkpoint at ``path``, once checked to fit ``model``, ``config`` and
    ``identity`` (checked key by key where both the checkpoint and the caller have one).

    Raises:
        ValueError: not a checkpoint (or a damaged, truncated one), another version, another
            model configuration, other training settings than those a resumed run may
            change, or another identity (data, split); the message names what changed.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or damaged file: many kinds
        raise ValueError(
            f"{path} cannot be read (damaged or truncated, e.g. by a full disk: {err}); {AFRESH}"
        ) from err
    _check_format(ckpt, path)
    _check_model(ckpt["model"], model, path)
    _check_config(ckpt["train_config"], config, path)
    _check_identity(ckpt.get("identity"), identity, path)
    return ckpt


def _check_identity(saved: dict[str, Any] | None, now: dict[str, Any] | None, path: Path) -> None:
    if not saved or not now:  # checkpoints written before identities, or not given
        return
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        what = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} belongs to another run: {', '.join(changed)} changed ({what}); "
            f"resume with the same inputs, or {AFRESH}"
        )


def _check_format(ckpt: Any, path: Path) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a uenn-geo training checkpoint; {AFRESH}")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {ckpt.get('version')}, expected "
            f"{CHECKPOINT_VERSION}; {AFRESH}"
        )


def _check_model(saved_model: dict[str, Any], model: nn.Module, path: Path) -> None:
    legacy = getattr(type(model), "legacy_config", {})
    saved_config = {**legacy, **saved_model["config"]}
    if saved_config != model.config or type(model_from_record(saved_model)) is not type(model):
        keys = saved_config.keys() | model.config.keys()
        changed = sorted(k for k in keys if saved_config.get(k) != model.config.get(k))
        diff = {k: (saved_config.get(k), model.config.get(k)) for k in changed}
        raise ValueError(
            f"{path} was written for another model configuration: checkpoint has the "
            f"{saved_model['model']!r} model, this run {_name(model)!r}; changed (checkpoint, "
            f"now): {diff}; {AFRESH}"
        )


def _name(model: nn.Module) -> str:
    return next((k for k, cls in MODELS.items() if type(model) is cls), type(model).__name__)


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
            f"{path} was written with other training settings (checkpoint, now): {diff}; {AFRESH}"
        )
