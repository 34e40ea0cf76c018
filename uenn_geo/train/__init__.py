"""Training: the loop (Adam or FIRE, resumable checkpoints), losses and evaluation."""

from uenn_geo.train.config import TrainConfig, TrainResult
from uenn_geo.train.dense import DenseForceData
from uenn_geo.train.loop import train
from uenn_geo.train.loss import evaluate, force_loss, has_energy

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DenseForceData",
    "train",
    "evaluate",
    "force_loss",
    "has_energy",
]
