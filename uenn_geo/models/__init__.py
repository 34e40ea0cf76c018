"""Force models with one interface (:class:`ForceModel`): a PyG batch with ``pos`` (Angstrom)
in, forces (eV/A) out, and energies (eV) and stresses where the model has an energy.

Every model class takes JSON-serialisable keyword arguments, keeps them in ``model.config``,
and is registered in :data:`MODELS`, so that :func:`save_model` / :func:`load_model` can
rebuild it from a file without pickled code. A model file carries the SHA-256 of its weights
(:func:`weights_sha256`), checked when it is loaded, so a damaged file refuses to load (files
written before the checksum load unchecked).

:class:`Committee` joins trained models of one cutoff into one model that predicts their
mean (and each member's predictions); :func:`load_committee` reads it from several files.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uenn_geo.files import atomic_save
from uenn_geo.models.base import ForceModel
from uenn_geo.models.committee import Committee, load_committee
from uenn_geo.models.forcefield import UENNForceField
from uenn_geo.models.paper import PaperForceModel
from uenn_geo.models.schnet import SchNetForceField

__all__ = [
    "ForceModel",
    "MODELS",
    "PaperForceModel",
    "UENNForceField",
    "SchNetForceField",
    "Committee",
    "load_committee",
    "save_model",
    "load_model",
    "load_weights",
    "model_record",
    "weights_sha256",
    "FORMAT",
]

#: Model classes by name.
MODELS: dict[str, type[ForceModel]] = {
    "paper": PaperForceModel,
    "graph": UENNForceField,
    "schnet": SchNetForceField,  # PyG's SchNet as a baseline, same interface
}

#: Marker and version written into every model file.
FORMAT = "uenn-geo-model"
FORMAT_VERSION = 1


def _model_name(model: nn.Module) -> str:
    for name, cls in MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered model; known: {sorted(MODELS)}")


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_record(model: nn.Module, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dictionary :func:`save_model` writes: name, configuration, weights, their
    SHA-256 (:func:`weights_sha256`), metadata."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": _model_name(model),
        "config": dict(model.config),
        "state_dict": state,
        "sha256": weights_sha256(state),
        "metadata": dict(metadata or {}),
    }


def save_model(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> None:
    """Save ``model`` (weights, configuration, scales, format version) atomically to ``path``."""
    atomic_save(model_record(model, metadata), path)


def model_from_record(record: Any, source: str = "record") -> nn.Module:
    """Rebuild a model from :func:`model_record`'s dictionary, checking it on the way."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{source} is not a uenn-geo model file (no '{FORMAT}' marker); "
            "training checkpoints are loaded with uenn_geo.train, models with load_model"
        )
    if record.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{source} has model format version {record.get('version')}, this uenn-geo "
            f"reads version {FORMAT_VERSION}"
        )
    name = record.get("model")
    if "sha256" in record and weights_sha256(record["state_dict"]) != record["sha256"]:
        raise ValueError(
            f"{source} is damaged: its weights do not match their stored SHA-256 checksum; "
            "use an intact copy (or retrain)"
        )
    if name not in MODELS:
        raise ValueError(f"{source} holds an unknown model {name!r}; known: {sorted(MODELS)}")
    # Keys added to a model's configuration after format 1 default to their old behaviour.
    config = {**getattr(MODELS[name], "legacy_config", {}), **record["config"]}
    known = inspect.signature(MODELS[name]).parameters
    unknown = sorted(set(config) - set(known))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in known.values()):
        raise ValueError(
            f"{source} holds options of the {name!r} model that this uenn-geo does not know: "
            f"{unknown} (written by another version); load it with the version that wrote it"
        )
    model = MODELS[name](**config)
    try:
        load_weights(model, record["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not fit the stored configuration: {err}") from err
    model.metadata = record.get("metadata", {})
    return model


def load_weights(model: nn.Module, state: dict[str, Any]) -> None:
    """``model.load_state_dict(state)`` for states written by any version: buffers added
    since (the model's ``legacy_buffers``) keep their initial values, and fixed E0s
    (``config["e0s"]``) are taken from the configuration, in float64 (files before
    2026-12-04 stored them in the model's dtype)."""
    own, state = model.state_dict(), dict(state)
    for key in getattr(model, "legacy_buffers", ()):
        if key in own:
            state.setdefault(key, own[key])
    if getattr(model, "config", {}).get("e0s") is not None and "energy_shift" in own:
        state["energy_shift"] = own["energy_shift"]
    model.load_state_dict(state)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_model`, on ``map_location``, in evaluation mode.

    Raises:
        ValueError: the file is not a uenn-geo model file, is damaged (its weights' checksum
            or the archive does not check out), has another format version, or its weights
            do not fit its configuration.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is not a uenn-geo model file, or a damaged or truncated one: {err}"
        ) from err
    return model_from_record(record, source=str(path)).to(map_location).eval()
