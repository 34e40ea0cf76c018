"""Shared pieces of the training tests."""

import pytest
import torch

from uenn_geo.models import UENNForceField


def _small_energy_model(clusters):
    """A small float64 UENNForceField with an energy, its scales fitted to ``clusters``."""
    torch.manual_seed(0)
    model = UENNForceField(
        cutoff=6.0,
        num_blocks=1,
        hidden_channels=8,
        mlp_channels=[8],
        dtype="float64",
        conservative=True,
    )
    model.fit_scales(clusters)
    return model


@pytest.fixture
def small_energy_model():
    """Builds :func:`_small_energy_model` for a data set."""
    return _small_energy_model
