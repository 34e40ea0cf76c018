"""The settings of ``uenn-geo train``: :class:`TrainJob`, every default in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from uenn_geo.cli.options import defaults_of
from uenn_geo.models import MODELS
from uenn_geo.train import TrainConfig

__all__ = ["TrainJob"]

_CONFIG_DEFAULTS = defaults_of(TrainConfig)


#: With ``compile="auto"``, runs limited by time alone to at least this many seconds train
#: through :func:`torch.compile` on structures of at most :data:`COMPILE_MAX_ATOMS` atoms on
#: average (a step is then mostly per-operation overhead, which compiling removes), and on
#: larger structures of files whose neighbour lists are stored, packed into batches of one shape
#: (:class:`~uenn_geo.train.packing.PackedGraphs`); the compilation costs less than the
#: faster steps give back (docs/training.md measures both).
COMPILE_MIN_SECONDS = 300.0
COMPILE_MAX_ATOMS = 20

#: Structures per step when ``batch_size`` is not given: :data:`SMALL_BATCH` for files whose
#: structures hold more than :data:`COMPILE_MAX_ATOMS` atoms on average, else
#: :data:`BATCH`. On EMT copper (30 atoms) batches of 8 lowered the test force RMSE of a
#: 600-s run by a third against 16 (4 did better still on copper, but diverged on 3BPA); on
#: rMD17 ethanol (9 atoms) 8 gave equal forces and worse energies than 16 (docs/training.md).
BATCH = 16
SMALL_BATCH = 8

#: How Muon reads a graph layer's radial weights (``muon_nd_as`` of
#: :class:`~uenn_geo.train.TrainConfig`) on files of one element, whose layers then hold one
#: species pair: one matrix per Gaussian. On EMT copper it lowered the test force RMSE of
#: 600-s runs by 12-14 % against one matrix for all Gaussians (two and three runs), while
#: rMD17 ethanol and 3BPA did better with one matrix per species pair (docs/training.md,
#: "Muon").
ONE_ELEMENT_MUON_ND_AS = "batch"

#: On top of :data:`~uenn_geo.cli.train_job.FILE_MODEL` for files of one element whose
#: structures hold more than :data:`COMPILE_MAX_ATOMS` atoms on average, unless a cutoff is
#: given: the first graph layer's radial sums reach 5.5 A over 32 Gaussians, the second layer
#: stops at 5 A (``interaction_cutoff``) with 16, and it passes 4 channels to the neighbours,
#: not 8. On EMT copper (whose EMT reaches 5.9 A) 600-s runs reached lower test force errors
#: than the defaults at 5 A (docs/training.md, "Thirty-second round"), and 24-32 % lower
#: again with the first layer's finer Gaussians, which fit EMT's radial functions 6-13x more
#: closely (docs/training.md, "Thirty-third round"); on rMD17 ethanol they did not help.
ONE_ELEMENT_MODEL = {
    "cutoff": 5.5,
    "num_basis": 32,
    "interaction_cutoff": 5.0,
    "interaction_basis": 16,
    "interaction_channels": 4,
}

#: Stage two (``stage_two``, ``stage_two_energy_weight``) by default for files of structures
#: of more than one composition (atoms of each species), for the graph model with energies:
#: the energy weight rises from 0.01 to 1 for the last 20 % of the budget. Forces fix the
#: energies of one composition up to a constant, but not those of different ones against
#: each other: on EMT copper (clusters of 13-55 atoms and cells of 27-32; 600 s, two seeds
#: side by side) the forces stayed level (2.97 against 2.91 meV/A, 3.21 against 3.17) and
#: the energy error fell 1.9x and 3.8x, where with forces alone clusters and bulk cells sat
#: 1-2 meV/atom off in opposite directions (docs/training.md, "Where the energy error is").
#: Sets of one molecule stay in one stage: on 3BPA and rMD17 ethanol stage two left the
#: forces level and the energies no better (docs/training.md, docs/molecules.md).
STAGE_TWO = 0.8
STAGE_TWO_ENERGY_WEIGHT = 1.0


@dataclass(frozen=True)
class TrainJob:
    """Settings of ``uenn-geo train`` (:func:`run_training`).

    Data (one of ``data`` and ``train_file``):
        data: a structure file (extended XYZ or anything ASE reads), a directory written by
            ``uenn-geo prepare`` (HDF5 shards, read lazily; its own split) or a built-in set
            (:data:`~uenn_geo.data.registry.DATASET_NAMES`), split into training, validation
            and test sets.
        train_file: the training structures; ``valid_file`` or ``val_fraction`` of them
            validate, and ``test_files`` test.
        valid_file: the validation structures.
        test_files: files evaluated at the end, one table each.
        energy_key, forces_key, stress_key: where the references are, e.g. ``REF_energy``
            (default: ASE's calculator results, then ``info``/``arrays``).
        config_type_weights: loss weight per ``config_type`` (others: 1).
        e0s: isolated-atom energies (:func:`uenn_geo.data.e0s.resolve_e0s`): ``"isolated"``,
            ``"average"``, a file, or a JSON mapping; default: the training file's
            isolated-atom frames if any.

    Model:
        model: a name of :data:`uenn_geo.models.MODELS` (default: ``"graph"``).
        cutoff: Angstrom (default: 5.0 for files, the model's own for built-in sets).
        dtype: ``"float32"`` (default) or ``"float64"``.
        direct: predict forces directly, without an energy (default: the model has an
            energy whenever the data has energies).
        model_kwargs: further keyword arguments of the model (for files, the graph model's
            ``r_min`` defaults to :data:`~uenn_geo.cli.data_stats.R_MIN_MARGIN` below the
            training structures' shortest interatomic distance).

    Training (see :class:`~uenn_geo.train.TrainConfig`):
        energy_weight: weight of the per-atom energy term (default: 0.01 when the model has
            an energy and the data energies, else 0); stress_weight likewise (default 0).
        stage_two: fraction of the budget after which the energy weight becomes
            ``stage_two_energy_weight``; 0: one stage (default:
            :meth:`resolved_stage_two`: :data:`STAGE_TWO` for files of structures of more
            than one composition, one stage otherwise).
        stage_two_energy_weight: default :data:`STAGE_TWO_ENERGY_WEIGHT` for those files,
            :class:`~uenn_geo.train.TrainConfig`'s otherwise.
        time_limit, max_epochs, lr, lr_final, weight_decay, ema_decay, amsgrad, seed: as in
            TrainConfig (``ema_decay`` 0 turns the moving average off).
        grad_clip: clip the gradient norm to this; 0 turns it off (default: ``FILE_GRAD_CLIP``
            of :mod:`uenn_geo.cli.train_job` for files, none for built-in sets).
        batch_size: structures per step (and process); default (:obj:`None`):
            :data:`SMALL_BATCH` for files of structures of more than :data:`COMPILE_MAX_ATOMS`
            atoms on average, :data:`BATCH` otherwise (:meth:`resolved_batch_size`).
        val_fraction, test_fraction: shares of ``data`` held out (``test_fraction`` of a
            ``train_file`` only when given).
        committee: train this many models side by side (seeds ``seed``, ``seed + 1``, ...;
            one split) and evaluate their mean (:mod:`uenn_geo.cli.train_committee`).
        split_seed: the seed of that random split (default: ``seed``); a committee's
            members share it, so that they hold out the same structures.
        out, root, resume, progress: output folder, processed-data cache, continue from
            ``out/checkpoint.pt``, show progress.
        compile: run the training step through :func:`torch.compile` (``True``), eagerly
            (``False``), or (``"auto"``, the default) compiled for runs limited by time alone
            with ``time_limit`` of at least :data:`COMPILE_MIN_SECONDS` on structures of at
            most :data:`COMPILE_MAX_ATOMS` atoms on average (small molecules) or, for files and
            the default graph model, with stored neighbour lists (packed into batches of one
            shape). One process only
            (several ranks train eagerly). The compilation (20 s to 2.5 minutes on 2 CPU
            cores, less with inductor's on-disk cache) counts against ``time_limit`` but not
            against the learning-rate schedule.

    Scale (``docs/scale.md``):
        device: ``"cpu"`` (default) or ``"cuda"``; under ``torchrun`` / ``srun`` each process
            takes ``cuda:LOCAL_RANK`` and ``batch_size`` is per process.
        num_workers: DataLoader worker processes reading a prepared (HDF5) data set.
    """

    data: str | None = None
    train_file: str | None = None
    valid_file: str | None = None
    test_files: tuple[str, ...] = ()
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    config_type_weights: dict[str, float] = field(default_factory=dict)
    e0s: str | dict[str, float] | None = None
    out: str = "runs/train"
    root: str = "datasets"
    model: str = "graph"
    cutoff: float | None = None
    dtype: str | None = None
    direct: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    energy_weight: float | None = None
    stress_weight: float = 0.0
    stage_two: float | None = None
    stage_two_energy_weight: float | None = None
    time_limit: float | None = 600.0
    max_epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float = _CONFIG_DEFAULTS["lr"]
    lr_final: float = _CONFIG_DEFAULTS["lr_final"]
    weight_decay: float = _CONFIG_DEFAULTS["weight_decay"]
    ema_decay: float = _CONFIG_DEFAULTS["ema_decay"]
    grad_clip: float | None = None
    amsgrad: bool = _CONFIG_DEFAULTS["amsgrad"]
    val_fraction: float = 0.1
    test_fraction: float | None = None
    seed: int = _CONFIG_DEFAULTS["seed"]
    split_seed: int | None = None
    committee: int = 1
    resume: bool = True
    progress: bool = True
    compile: bool | str = "auto"  # or "yes" / "no", as on the command line
    device: str | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in (None, "adam", "muon"):
            raise ValueError(f"--optimizer must be adam or muon, got {self.optimizer!r}")
        if self.amsgrad and self.optimizer == "muon":
            raise ValueError("--amsgrad is Adam's: give --optimizer adam with it")
        if self.compile not in (True, False, "auto", "yes", "no"):
            raise ValueError(f"--compile must be auto, yes or no, got {self.compile!r}")
        if (self.data is None) == (self.train_file is None):
            raise ValueError("give exactly one of --data and --train-file")
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {sorted(MODELS)}, got {self.model!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        test = self.test_fraction or 0.0
        if not 0 <= test < 1 or self.val_fraction + test >= 1:
            raise ValueError("--test-fraction must lie in [0, 1) and leave training data")
        if not 0 < self.lr_final <= 1:
            raise ValueError(
                f"--lr-final is a fraction of --lr and must lie in (0, 1], got {self.lr_final}"
            )
        if not self.weight_decay >= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("--weight-decay must be >= 0 and --ema-decay lie in [0, 1)")
        if self.stage_two is not None and not 0 <= self.stage_two < 1:
            raise ValueError(f"--stage-two must lie in [0, 1) (0: one stage), got {self.stage_two}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"--grad-clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        for name in ("time_limit", "max_epochs", "batch_size", "lr", "cutoff"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if not self.committee >= 1:
            raise ValueError(f"--committee must be >= 1 (1: one model), got {self.committee}")
        if self.time_limit is None and self.max_epochs is None:
            raise ValueError("give --time-limit or --max-epochs")
        object.__setattr__(self, "test_files", tuple(self.test_files))
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {self.model_kwargs!r}")

    @property
    def resolved_split_seed(self) -> int:
        """The seed of the split into training, validation and test structures."""
        return self.seed if self.split_seed is None else self.split_seed

    def resolved_batch_size(self, from_file: bool, mean_atoms: float) -> int:
        """``batch_size``, or its default for data of ``mean_atoms`` atoms per structure."""
        if self.batch_size is not None:
            return self.batch_size
        return SMALL_BATCH if from_file and mean_atoms > COMPILE_MAX_ATOMS else BATCH

    def one_element_model(self, species: list[int], small: bool, kwargs: dict) -> dict:
        """:data:`ONE_ELEMENT_MODEL` where it applies (one element, larger structures, no
        cutoff given by ``--cutoff`` or ``--model-kwargs``), else nothing."""
        given = self.cutoff is not None or {"cutoff", "interaction_cutoff"} & set(kwargs)
        return ONE_ELEMENT_MODEL if len(species) == 1 and not small and not given else {}

    @staticmethod
    def resolved_muon_nd_as(from_file: bool, num_species: int) -> str:
        """How Muon reads parameters of more than two dimensions, for data of ``num_species``
        elements."""
        return ONE_ELEMENT_MUON_ND_AS if from_file and num_species == 1 else "rows"

    def resolved_stage_two(
        self, from_file: bool, compositions: int, energies: bool
    ) -> tuple[float, float]:
        """``(stage_two, stage_two_energy_weight)`` for a file (``from_file``) of structures of
        ``compositions`` compositions; ``energies``: the graph model trains on energies
        (``stage_two`` 0: one stage)."""
        mixed = from_file and compositions > 1
        fraction = self.stage_two
        if fraction is None:
            on = mixed and energies and self.model == "graph" and self.energy_weight != 0
            fraction = STAGE_TWO if on else 0.0
        weight = self.stage_two_energy_weight
        if weight is None:
            default = _CONFIG_DEFAULTS["stage_two_energy_weight"]
            weight = STAGE_TWO_ENERGY_WEIGHT if mixed else default
        return fraction, weight

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (what ``config.yaml`` holds)."""
        out = asdict(self)
        out["test_files"] = list(self.test_files)
        return out
