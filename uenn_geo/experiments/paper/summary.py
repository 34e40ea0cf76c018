"""What a report needs to know about a paper run: its short label, and an earlier run's numbers.

Shared by :mod:`~uenn_geo.experiments.paper.run` (which reads the runs given to ``--compare``)
and :mod:`~uenn_geo.experiments.paper.report` (which labels them), so that neither imports the
other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["run_label", "budget_label", "compare_summary"]


def budget_label(cfg: dict[str, Any]) -> str:
    """A run's training budget: ``"80,000 steps"``, or ``"600 s"`` for a wall-clock budget."""
    steps = cfg.get("max_steps")
    if steps:
        return f"{steps:,} steps"
    return f"{cfg['time_limit']:.0f} s"


def run_label(cfg: dict[str, Any]) -> str:
    """A run's short name in comparison tables: ``"paper, faithful, 80,000 steps"``."""
    protocol = "faithful" if cfg["sampling"] == "fixed" else f"{cfg['sampling']} sampling"
    return f"{cfg['model']}, {protocol}, {budget_label(cfg)}"


def compare_summary(run_dir: str | Path) -> dict[str, Any]:
    """The numbers of an earlier paper run (its ``metrics.json``) that a report compares."""
    path = Path(run_dir) / "metrics.json"
    try:
        m = json.loads(path.read_text())
        cfg = m["config"]
        return {
            "label": run_label(cfg),
            "dir": str(run_dir),
            "model": cfg["model"],
            "config": cfg,
            "test_force_rmsd": m["test_force_rmsd"],
            "train_force_rmsd": m["train_force_rmsd"],
            "train_seconds": m["train"]["seconds"],
            "training_steps": m["train"]["steps"],
            "md": {k: m["md"][k] for k in ("position_rmsd_at", "energy_rmsd_at", "bounded")},
            "threads": m["machine"]["threads"],
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not the metrics of a paper run ({err})") from err
