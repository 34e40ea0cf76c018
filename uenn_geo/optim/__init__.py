r"""Optimisers: FIRE as used by the paper (appendix A)."""

from uenn_geo.optim.fire import FIRE

__all__ = ["FIRE"]
