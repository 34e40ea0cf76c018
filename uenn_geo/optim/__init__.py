r"""Optimisers: FIRE as used by the paper (appendix A), and Muon with Adam for the force
fields."""

from uenn_geo.optim.fire import FIRE
from uenn_geo.optim.muon import MuonAdam, orthogonalise

__all__ = ["FIRE", "MuonAdam", "orthogonalise"]
