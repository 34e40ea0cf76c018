"""Training: the loop (Adam or FIRE, resumable checkpoints), losses and evaluation."""

from uenn_geo.train.loop import (
    DATASET_NAMES,
    CastFloats,
    DenseForceData,
    TrainConfig,
    TrainJob,
    TrainResult,
    evaluate,
    force_loss,
    load_dataset,
    run_training,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DenseForceData",
    "CastFloats",
    "train",
    "evaluate",
    "force_loss",
    "load_dataset",
    "DATASET_NAMES",
    "TrainJob",
    "run_training",
]
