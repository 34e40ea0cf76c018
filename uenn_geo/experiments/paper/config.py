"""Settings of the paper experiment: :class:`PaperConfig`, the presets and the defaults that
depend on them (learning rate, compilation)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from uenn_geo.models import MODELS

__all__ = [
    "PaperConfig",
    "PRESETS",
    "preset_config",
    "learning_rate",
    "use_compile",
    "model_kwargs",
    "PAPER_ADAM_LR",
    "PAPER_ADAM_LR_LONG",
    "LONG_RUN_STEPS",
]

#: Training steps of the default preset (Adam, batch 256). A step budget, not a time budget,
#: so that the result does not depend on how busy the machine is; docs/reproduction.md gives
#: the figure it reproduces and how long it takes.
DEFAULT_STEPS = 80_000
#: Training steps of the ``full`` preset.
FULL_STEPS = 860_000
#: Wall-clock guards of the step budgets (s): training stops there even if steps are left.
#: About six times the training time of the budget on one CPU thread (docs/reproduction.md),
#: so that only a machine slowed down more than that by other work changes the result.
DEFAULT_GUARD = 3600.0
FULL_GUARD = 39_600.0


@dataclass(frozen=True)
class PaperConfig:
    """Settings of :func:`~uenn_geo.experiments.paper.run.run_paper` (see
    ``uenn-geo paper --help``).

    Training stops at the first of ``max_steps``, ``max_epochs`` and ``time_limit`` (seconds
    of wall clock). The default is a step budget with a generous ``time_limit`` as a guard;
    the cosine learning-rate schedule follows whichever limit is closest, which is the step
    budget unless the guard is reached. Lengths are Angstrom, temperatures K, times fs.
    """

    out: str = "runs/paper"
    root: str = "datasets"
    model: str = "paper"
    num_configs: int = 100_000
    seed: int = 0
    r_min: float = 2.8
    sigma: float = 3.0
    sampling: str = "online"
    optimizer: str = "adam"
    max_steps: int | None = DEFAULT_STEPS
    time_limit: float | None = DEFAULT_GUARD
    max_epochs: int | None = None
    batch_size: int | None = 256
    #: Adam's (or FIRE's) initial learning rate; None: :func:`learning_rate`'s choice.
    lr: float | None = None
    remove_net_force: bool = True
    augment: float = 0.3
    #: Seconds of FIRE training (split over full batch and mini-batch) shown beside Adam.
    fire_compare_time: float = 60.0
    md_samples: int = 10
    md_steps: int = 10_000
    md_temperature: float = 10.0
    md_dt: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Output directories of earlier runs shown side by side in the report.
    compare: tuple[str, ...] = ()
    #: Average the trained paper network over the 24 orderings of the 4 identical atoms
    #: (``PaperForceModel.symmetrize``) for testing, MD and the saved model; the report gives
    #: the network's own test error too. Not in the faithful protocol.
    symmetrize: bool = True
    #: :func:`torch.compile` the training loss (falls back to eager mode where it fails);
    #: None: :func:`use_compile`'s choice.
    compile: bool | None = None
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.sampling not in ("online", "fixed"):
            raise ValueError(f"sampling must be 'online' or 'fixed', got {self.sampling!r}")
        if not 0.0 <= self.augment < 1.0:
            raise ValueError(f"augment must lie in [0, 1), got {self.augment}")
        if self.augment and self.sampling != "online":
            raise ValueError("augment needs sampling='online' (the faithful mode has none)")
        if self.num_configs < 5:
            raise ValueError(f"num_configs must be >= 5 (a 60/20/20 split), got {self.num_configs}")
        if self.max_steps is None and self.time_limit is None and self.max_epochs is None:
            raise ValueError("give a training budget: max_steps, time_limit or max_epochs")
        object.__setattr__(self, "compare", tuple(str(d) for d in self.compare))
        for d in self.compare:
            if not (Path(d) / "metrics.json").is_file():
                raise ValueError(f"--compare {d}: no metrics.json there (not a paper run)")


#: Named presets. ``default`` and ``full`` are step budgets with a wall-clock guard;
#: ``faithful`` is the paper's protocol (applied on top of one of them).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"max_steps": DEFAULT_STEPS, "time_limit": DEFAULT_GUARD, "fire_compare_time": 60.0},
    "full": {"max_steps": FULL_STEPS, "time_limit": FULL_GUARD, "fire_compare_time": 60.0},
    "faithful": {
        "sampling": "fixed",
        "remove_net_force": False,
        "augment": 0.0,
        "symmetrize": False,
    },
}


def preset_config(name: str, **overrides: Any) -> PaperConfig:
    """A :class:`PaperConfig` from a preset name and overrides (``None`` values ignored).

    A ``time_limit`` given without ``max_steps`` makes the budget a wall-clock one: the
    preset's step budget is dropped.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**PRESETS[name], **given}
    if "time_limit" in given and "max_steps" not in given:
        values["max_steps"] = None
    return replace(PaperConfig(), **values)


def preset_default(name: str, preset: str = "default") -> Any:
    """The value of setting ``name`` in ``preset`` (for help texts)."""
    return PRESETS[preset].get(name, getattr(PaperConfig(), name))


#: Adam's initial learning rate for the paper network (batch 256, cosine schedule), from the
#: scan in docs/reproduction.md; higher rates were at the edge of stability there.
PAPER_ADAM_LR = 1.5e-2
#: The same for long runs (over :data:`LONG_RUN_STEPS` steps, e.g. ``full``): the cosine
#: schedule keeps the rate near its peak for longer, so the peak is lower.
PAPER_ADAM_LR_LONG = 1e-2
#: Step budgets above this count as long runs for :func:`learning_rate`.
LONG_RUN_STEPS = 400_000


def learning_rate(config: PaperConfig) -> float:
    """``config.lr``, or by default :data:`PAPER_ADAM_LR` for the paper network with Adam
    (:data:`PAPER_ADAM_LR_LONG` for more than :data:`LONG_RUN_STEPS` steps, or, with a
    wall-clock budget, more than an hour) and 2e-3 otherwise (the graph models, and FIRE)."""
    if config.lr is not None:
        return float(config.lr)
    if config.model != "paper" or config.optimizer != "adam":
        return 2e-3
    if config.max_steps is not None:
        long = config.max_steps > LONG_RUN_STEPS
    else:
        long = config.time_limit is not None and config.time_limit > 3600
    return PAPER_ADAM_LR_LONG if long else PAPER_ADAM_LR


def use_compile(config: PaperConfig) -> bool:
    """``config.compile``, or by default: on for the paper network trained with Adam."""
    if config.compile is not None:
        return bool(config.compile)
    return config.model == "paper" and config.optimizer == "adam"


def model_kwargs(config: PaperConfig) -> dict[str, Any]:
    """Constructor arguments of ``MODELS[config.model]``."""
    kwargs = dict(config.model_kwargs)
    if config.model == "paper":
        kwargs.setdefault("remove_net_force", config.remove_net_force)
    return kwargs
