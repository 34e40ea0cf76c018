"""Settings and result of :func:`uenn_geo.train.train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TrainConfig", "TrainResult"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`~uenn_geo.train.train`.

    Args:
        optimizer: ``"adam"`` (mini-batch AdamW, the default), ``"muon"`` (mini-batch Muon
            for the weight matrices and AdamW for the rest,
            :class:`~uenn_geo.optim.MuonAdam`) or ``"fire"`` (FIRE, with which Ma & Chan
            train).
        muon_nd_as: how Muon reads parameters of more than two dimensions (a graph
            layer's radial weights) as matrices: ``"rows"``, one per species pair, or
            ``"batch"``, one per species pair and Gaussian (``nd_as`` of
            :class:`~uenn_geo.optim.MuonAdam`). A resumed run keeps the reading it began
            with: the optimiser's saved state carries it.
        lr: the initial learning rate (Adam's, Muon's).
        lr_final: learning rate at the end of the cosine schedule, as a fraction of ``lr``.
        schedule: ``"cosine"`` (over the time/step/epoch budget, whichever is tightest),
            ``"plateau"`` (halve on a validation plateau of 5 epochs) or ``"constant"``.
        batch_size: structures per step; :obj:`None` for full batch (as with FIRE).
        max_epochs, max_steps, time_limit: stopping limits (time in seconds of training).
        patience: stop after this many epochs without validation improvement.
        weight_decay: Adam's (decoupled, AdamW) weight decay.
        grad_clip: clip the gradient norm to this value (not with FIRE).
        amsgrad: Adam's AMSGrad variant (the running maximum of the second moments), as in
            MACE (``"adam"`` only).
        seed: seeds parameter-independent randomness (shuffling, resampling).
        eval_batch_size: structures per evaluation batch.
        fire: keyword arguments of :class:`~uenn_geo.optim.FIRE`.
        ema_decay: keep an exponential moving average of the weights with this decay
            (warmed up as ``min(decay, (1 + t) / (10 + t))`` at step ``t``); validation, the
            best model and the returned model use the averaged weights. :obj:`None` turns it
            off (default: 0.999 for Adam; FIRE runs never average).
        energy_weight: weight of the energy term of the loss (models with an energy,
            ``model.has_energy``, on graphs carrying ``energy`` in eV); 0 trains on forces
            only.
        stress_weight: weight of the stress term of the loss (graphs carrying ``stress``).
        stage_two: the fraction of the budget after which "stage two" begins (as in MACE):
            the energy weight becomes ``stage_two_energy_weight``. :obj:`None` (default):
            one stage.
        stage_two_energy_weight: the energy weight of stage two.
        progress: show a progress bar and a line per validation.
        compile: run the training loss (forward and backward) through :func:`torch.compile`
            (Adam only). Inductor generates C++ for the CPU, so this needs a C++ compiler;
            if compilation fails, training warns once and goes on eagerly. It helps most
            where a step's cost is mostly per-operation overhead (small networks). A resumed
            run may change it.
        static_shapes: with ``compile``, specialise the compiled step to the shapes of the
            first batch instead of compiling for any shape: for structures that all have the
            same atoms and neighbour-list length (frames of one small molecule), where the
            generated kernels then index without symbolic sizes (faster; docs/training.md
            measures it). The last batch of an epoch, when smaller, is skipped
            (its structures come in other epochs: every epoch is shuffled), so that one
            compilation serves every step; a batch of another shape still runs (compiled
            again, for any shape). A :class:`~uenn_geo.train.packing.PackedGraphs` training
            set makes every batch one shape itself (nothing is skipped).
    """

    optimizer: str = "adam"
    muon_nd_as: str = "rows"
    lr: float = 2e-3
    lr_final: float = 1e-3
    schedule: str = "cosine"
    batch_size: int | None = 256
    max_epochs: int | None = None
    max_steps: int | None = None
    time_limit: float | None = None
    patience: int | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None
    amsgrad: bool = False
    seed: int = 0
    eval_batch_size: int = 4096
    fire: dict[str, float] = field(default_factory=dict)
    ema_decay: float | None = 0.999
    energy_weight: float = 0.0
    stress_weight: float = 0.0
    stage_two: float | None = None
    stage_two_energy_weight: float = 10.0
    progress: bool = True
    compile: bool = False
    static_shapes: bool = False

    @property
    def mini_batch(self) -> bool:
        """Trained by a mini-batch optimiser (Adam, Muon) with its schedule, clip and
        weight average, not by FIRE."""
        return self.optimizer != "fire"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "muon", "fire"):
            raise ValueError(f"optimizer must be 'adam', 'muon' or 'fire', got {self.optimizer!r}")
        if self.muon_nd_as not in ("rows", "batch"):
            raise ValueError(f"muon_nd_as must be 'rows' or 'batch', got {self.muon_nd_as!r}")
        if self.amsgrad and self.optimizer != "adam":
            raise ValueError(
                f"amsgrad is Adam's; it does not apply to {self.optimizer!r} "
                "(--optimizer adam --amsgrad)"
            )
        if self.schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(
                f"schedule must be 'cosine', 'plateau' or 'constant', got {self.schedule!r}"
            )
        if self.max_epochs is None and self.max_steps is None and self.time_limit is None:
            raise ValueError("give at least one of max_epochs, max_steps and time_limit")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("energy_weight", "stress_weight", "stage_two_energy_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stage_two is not None and not 0.0 < self.stage_two < 1.0:
            raise ValueError(f"stage_two must lie in (0, 1) or be None, got {self.stage_two}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {self.ema_decay}")


@dataclass
class TrainResult:
    """What :func:`~uenn_geo.train.train` returns; ``history`` holds the rows of ``log.csv``."""

    best_val_rmse: float
    best_epoch: int
    epochs: int
    steps: int
    elapsed: float
    stop_reason: str
    history: list[dict[str, float]]
    out_dir: Path | None
    #: whether this call's steps ran through :func:`torch.compile` (``config.compile``),
    #: to the end
    compiled: bool = False
