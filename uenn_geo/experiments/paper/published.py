"""The published figures of Ma & Chan, sec. 4 (the argon experiment), defined once.

Every place that shows the paper's numbers beside ours (``metrics.json``, ``report.md``, the
figures, the ``uenn-geo paper`` summary) reads them from :data:`PAPER_RESULTS`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_RESULTS", "paper_md_energy_claim"]

#: Ma & Chan, sec. 4: the test force RMSD (eV/A) after 10 million full-batch FIRE steps on
#: a fixed 60,000 training configurations, and the MD claim: total-energy RMSD (eq. 46)
#: below ``md_energy_rmsd`` eV at about ``md_energy_rmsd_step`` steps of 1 fs.
PAPER_RESULTS: dict[str, Any] = {
    "test_force_rmsd": 0.00118,
    "training_steps": 10_000_000,
    "optimizer": "FIRE (full batch)",
    "training_data": "60,000 fixed",
    "md_energy_rmsd": 4e-4,
    "md_energy_rmsd_step": 4000,
}


def paper_md_energy_claim(step: int | str) -> float | None:
    """The paper's MD energy RMSD bound (eV) at MD step ``step``, or None where it gives none."""
    if int(step) == PAPER_RESULTS["md_energy_rmsd_step"]:
        return PAPER_RESULTS["md_energy_rmsd"]
    return None
