"""The options of :class:`~uenn_geo.models.UENNForceField` checked before any layer is built:
each error names the option and what to set instead."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LEGACY_CONFIG", "checked_config"]


#: Options that models saved before they existed load with (their values then).
LEGACY_CONFIG: dict[str, Any] = {
    "pair_term": False,
    "interaction_basis": None,
    "e0s": None,
    "own_species": False,
    "species_pairs": False,
    "gram_channels": 0,
    "separate_scalars": False,
    "centre_vectors": False,
    "bond_vectors": False,
    "bond_cubes": False,
    "bond_quartics": False,
    "radial_mlp": 0,
    "learnable_basis": False,
    "bias_delta": 0.0,
    "avg_num_neighbors": None,
    "interaction_cutoff": None,
}


def checked_config(**cfg: Any) -> dict[str, Any]:
    """The configuration of :class:`~uenn_geo.models.UENNForceField`, checked: a clear error
    that names the option and the fix otherwise."""
    numbers = cfg["atomic_numbers"]
    if cfg["num_blocks"] < 1:
        raise ValueError(f"num_blocks must be >= 1, got {cfg['num_blocks']}")
    if not numbers or min(numbers) < 0 or len(set(numbers)) < len(numbers):
        raise ValueError(f"atomic_numbers must be distinct non-negative integers, got {numbers}")
    channels = [cfg["hidden_channels"], cfg["interaction_channels"], *cfg["mlp_channels"]]
    if any(c < 1 for c in channels):
        raise ValueError(
            f"channel counts must be >= 1, got hidden_channels={cfg['hidden_channels']}, "
            f"interaction_channels={cfg['interaction_channels']}, "
            f"mlp_channels={cfg['mlp_channels']}"
        )
    if cfg["radial_mlp"] < 0:
        raise ValueError(f"radial_mlp must be >= 0 (0: none), got {cfg['radial_mlp']}")
    for name in ("radial_mlp", "learnable_basis"):
        if cfg[name] and cfg["pair_term"]:
            raise ValueError(
                f"{name} trains the radial functions that the pair term's closed-form fit "
                f"reads as fixed; set pair_term=False with {name}"
            )
    avg = cfg["avg_num_neighbors"]
    if avg is not None and not (math.isfinite(avg) and avg > 0):
        raise ValueError(f"avg_num_neighbors must be a positive number or None, got {avg}")
    inner = cfg["interaction_cutoff"]
    if inner is not None and not cfg["r_min"] < inner <= cfg["cutoff"]:
        raise ValueError(
            f"interaction_cutoff must lie in (r_min, cutoff] = ({cfg['r_min']}, "
            f"{cfg['cutoff']}] Angstrom, got {inner}; None uses the cutoff"
        )
    if not cfg["bias_delta"] >= 0:
        raise ValueError(f"bias_delta must be >= 0 (0: eq. 8's x / |x|), got {cfg['bias_delta']}")
    if cfg["gram_channels"] < 0:
        raise ValueError(f"gram_channels must be >= 0, got {cfg['gram_channels']}")
    e0s = cfg["e0s"]
    if e0s is not None:
        if not cfg["conservative"]:
            raise ValueError(
                "e0s (isolated-atom energies) need a model with an energy: conservative=True"
            )
        if sorted(int(z) for z in e0s) != sorted(numbers):
            raise ValueError(
                f"e0s must give one energy per species {sorted(numbers)}, got atomic numbers "
                f"{sorted(int(z) for z in e0s)}"
            )
    if not isinstance(cfg["activation"], str):
        raise ValueError(
            f"activation must be a name (the config is JSON), got "
            f"{type(cfg['activation']).__name__}"
        )
    return cfg
