r"""``uenn-geo md``: molecular dynamics with a trained model on any structure ASE can read.

:func:`run_md` is the whole command as one Python call; :func:`add_parser` installs the
subcommand. Units: time step in fs, temperature in K, friction in 1/fs, positions in Angstrom,
velocities written in Angstrom/fs, energies in eV (ASE's units, converted once here).

Output in ``out``:

* ``trajectory.extxyz``: frames at steps :math:`0, k, 2k, \dots` (:math:`k` = ``write_every``)
  with positions, momenta (ASE's), ``velocities`` (A/fs), forces, and ``step``, ``time_fs``
  and the energies in the comment line;
* ``log.csv``: ``step, time_fs, potential, kinetic, total, temperature_K`` at the same steps
  (``potential`` and ``total`` empty for a direct-force model), and for a committee of models
  (several ``model`` files) their disagreement: ``force_dev_max`` and ``force_dev_mean``
  (eV/A), the largest and the mean over atoms of :math:`d_i = \sqrt{\langle |\mathbf{F}_i^{(m)}
  - \bar{\mathbf{F}}_i|^2 \rangle_m}`, DeePMD's "model deviation" of the forces, and
  ``energy_dev`` (eV/atom), the members' energy standard deviation over the number of atoms;
  the frames hold :math:`d_i` per atom (``force_dev``);
* ``restart.npz``: the exact (float64) state of the last frame, which ``resume`` continues
  from, so that a resumed NVE run is identical to an uninterrupted one (the extxyz text keeps
  8 decimals; without ``restart.npz`` the last frame is used as written), and the settings a
  resumed run must keep (time step, ensemble, temperature, friction, frame interval, the
  model file's SHA-1).

Nothing is lost on a crash: the directory is locked for the run
(:class:`uenn_geo.files.RunLock`); each frame and each log row is appended whole and forced to
disk before ``restart.npz`` is replaced, so a killed run leaves complete records and at most
one partial record at the end; ``resume`` continues from the newest frame that the
trajectory, the log and ``restart.npz`` all hold, and cuts both files back to it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from uenn_geo.files import (
    RunLock,
    append_record,
    atomic_write,
    check_output_dir,
    csv_row,
    sweep_temporaries,
    write_csv,
)

__all__ = ["MDConfig", "run_md", "config_from_args", "add_parser"]

ENSEMBLES = ("nve", "langevin")
LOG_FIELDS = ["step", "time_fs", "potential", "kinetic", "total", "temperature_K"]
#: The log's further columns for a committee of models (eV/A, eV/A, eV/atom).
COMMITTEE_FIELDS = ["force_dev_max", "force_dev_mean", "energy_dev"]


#: With ``compile="auto"``, runs of at least this many steps are compiled whatever their size:
#: a compilation (about a minute on 2 CPU cores) then costs less than it saves (ethanol: 8.1
#: ms a step eager, 5.4 ms compiled; docs/engines.md).
MD_COMPILE_MIN_STEPS = 50_000


@dataclass(frozen=True)
class MDConfig:
    r"""Settings of :func:`run_md`.

    Args:
        structure: a structure file, anything :func:`ase.io.read` reads (its last frame).
        model: a model file written by :func:`uenn_geo.models.save_model`, or several
            (a sequence): a committee (:class:`~uenn_geo.models.committee.Committee`), which
            moves the atoms with the members' mean forces and logs how far they disagree.
        out: output directory (default: ``"md"``).
        ensemble: ``"nve"`` (velocity Verlet) or ``"langevin"`` (default: ``"nve"``).
        dt: time step in fs (default: :obj:`1.0`).
        steps: total number of steps, counting those of a resumed run (default: :obj:`1000`).
        temperature: initial Maxwell-Boltzmann temperature in K (zero total momentum), and the
            Langevin target; :obj:`None` keeps the file's velocities (zero if it has none)
            (default: :obj:`None`).
        friction: Langevin friction in 1/fs (default: :obj:`0.01`).
        write_every: steps between frames and log rows (default: :obj:`10`).
        seed: seed of the initial velocities and the Langevin noise (default: :obj:`0`).
        resume: continue ``out/trajectory.extxyz`` from its last frame (default: :obj:`False`).
        device: torch device of the model (default: ``"cpu"``).
        skin: Verlet skin of the neighbour list in Angstrom (default: :obj:`1.0`).
        progress: show a progress bar (default: :obj:`True`).
        compile: run the model through :func:`torch.compile` (``True``), eagerly
            (``False``), or (``"auto"``) compiled for runs of at least
            :data:`MD_COMPILE_MIN_STEPS` steps and otherwise as the calculator's ``"auto"``
            decides (structures of 256 atoms or more). The summary reports the compilation
            time (default: ``"auto"``).
    """

    structure: str
    model: str | tuple[str, ...]
    out: str = "md"
    ensemble: str = "nve"
    dt: float = 1.0
    steps: int = 1000
    temperature: float | None = None
    friction: float = 0.01
    write_every: int = 10
    seed: int = 0
    resume: bool = False
    device: str = "cpu"
    skin: float = 1.0
    progress: bool = True
    compile: bool | str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)):
            models = tuple(str(m) for m in self.model)
            if not models:
                raise ValueError("model: give at least one model file")
            object.__setattr__(self, "model", models[0] if len(models) == 1 else models)
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {self.compile!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dt must be a positive number of fs, got {self.dt}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.write_every < 1:
            raise ValueError(f"write_every must be >= 1, got {self.write_every}")
        if self.temperature is not None and not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 K, got {self.temperature}")
        if self.ensemble == "langevin" and self.temperature is None:
            raise ValueError("the langevin ensemble needs a temperature (K)")
        if not self.friction >= 0:
            raise ValueError(f"friction must be >= 0 (1/fs), got {self.friction}")


def _frame(
    atoms: Any, step: int, dt: float, has_energy: bool, committee: bool = False
) -> tuple[Any, dict[str, Any]]:
    """A copy of ``atoms`` with results and velocities attached, and its log row."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import fs

    forces = atoms.get_forces()
    kinetic = float(atoms.get_kinetic_energy())
    potential = float(atoms.get_potential_energy()) if has_energy else None
    row = {
        "step": step,
        "time_fs": step * dt,
        "potential": potential,
        "kinetic": kinetic,
        "total": None if potential is None else potential + kinetic,
        "temperature_K": float(atoms.get_temperature()),
    }
    frame = atoms.copy()
    frame.new_array("velocities", atoms.get_velocities() * fs)  # A/fs
    if committee:  # the members' results of this very call
        from uenn_geo.models.committee import force_deviation

        dev = force_deviation(atoms.calc.results["forces_comm"])
        energies = atoms.calc.results.get("energy_comm")
        row["force_dev_max"] = float(dev.max())
        row["force_dev_mean"] = float(dev.mean())
        row["energy_dev"] = None if energies is None else float(np.std(energies)) / len(atoms)
        frame.new_array("force_dev", dev)
    frame.info.update({k: v for k, v in row.items() if v is not None})
    results = {"forces": forces}
    if potential is not None:
        results["energy"] = potential
    frame.calc = SinglePointCalculator(frame, **results)
    return frame, row


def _save_restart(
    path: Path, atoms: Any, step: int, rng: np.random.Generator, run: dict[str, Any]
) -> None:
    state = {
        "step": np.array(step),
        "positions": atoms.get_positions(),
        "momenta": atoms.get_momenta(),
        "cell": atoms.cell.array,
        "rng": np.array(json.dumps(rng.bit_generator.state)),
        "run": np.array(json.dumps(run)),
    }
    atomic_write(path, lambda f: np.savez(f, **state))


def _run_settings(cfg: MDConfig) -> dict[str, Any]:
    """What a resumed run must keep (by flag), recorded in ``restart.npz``."""
    from uenn_geo.data.extxyz import file_sha1

    models = cfg.model if isinstance(cfg.model, tuple) else None
    return {
        "--dt": cfg.dt,
        "--ensemble": cfg.ensemble,
        "--temperature": cfg.temperature,
        "--friction": cfg.friction if cfg.ensemble == "langevin" else None,
        "--write-every": cfg.write_every,
        "--model (SHA-1 of the file)": (
            [file_sha1(m) for m in models] if models else file_sha1(cfg.model)
        ),
    }


def _check_settings(saved: dict[str, Any], now: dict[str, Any], out: Path) -> None:
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        what = "; ".join(f"{k} was {saved[k]}, now {now[k]}" for k in changed)
        raise ValueError(
            f"--resume of {out} with other settings ({what}): resume with the settings of "
            "the run, or start afresh with another --out"
        )


_STEP = re.compile(r"\bstep=(\d+)")


def _complete_frames(path: Path) -> list[tuple[int, int, str]]:
    """``(step, end offset, text)`` of each complete frame of an extxyz file written by this
    command: a partial frame at the end (a killed write) is left out."""
    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0 or not data[pos:end].strip().isdigit():
            break
        n, frame_end = int(data[pos:end]), end
        for _ in range(n + 1):  # the comment and the atom lines, each ending with a newline
            frame_end = data.find(b"\n", frame_end + 1) if frame_end >= 0 else -1
        if frame_end < 0:
            break
        text = data[pos : frame_end + 1].decode()
        match = _STEP.search(text.split("\n", 2)[1])
        if match is None:
            break
        frames.append((int(match.group(1)), frame_end + 1, text))
        pos = frame_end + 1
    return frames


def _cut_log(path: Path, step: int) -> list[dict[str, str]]:
    """Cut ``log.csv`` after the row of ``step`` (dropping a partial last line); its rows."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # complete lines only
    rows, end = [], 0
    header = next(csv.reader([lines[0].decode()])) if lines else LOG_FIELDS
    for k, line in enumerate(lines):
        end += len(line) + 1
        if k == 0:
            continue
        row = dict(zip(header, next(csv.reader([line.decode()])), strict=False))
        rows.append(row)
        if int(row["step"]) == step:
            os.truncate(path, end)
            return rows
    raise ValueError(
        f"{path} has no row for step {step}, the last complete frame; start afresh with "
        "another --out"
    )


def _resume_state(out: Path, atoms: Any, cfg: MDConfig, rng: np.random.Generator) -> int:
    """Put the state of the newest frame that the trajectory (complete frames), the log and
    ``restart.npz`` agree on into ``atoms``, cut the trajectory after it; return its step."""
    from ase.io import read

    trajectory = out / "trajectory.extxyz"
    frames = _complete_frames(trajectory)
    if not frames:
        raise ValueError(f"{trajectory} has no complete frame to resume from")
    restart = out / "restart.npz"
    state = np.load(restart) if restart.exists() else None
    if state is not None and "run" in state:
        _check_settings(json.loads(str(state["run"])), _run_settings(cfg), out)
    steps = [step for step, _, _ in frames]
    exact = state is not None and int(state["step"]) in steps
    k = steps.index(int(state["step"])) if exact else len(frames) - 1
    step, end, text = frames[k]
    last = read(io.StringIO(text), format="extxyz")
    if len(last) != len(atoms) or (last.numbers != atoms.numbers).any():
        raise ValueError(
            f"{trajectory} holds {len(last)} atoms {last.get_chemical_formula()}, "
            f"the structure has {len(atoms)} {atoms.get_chemical_formula()}"
        )
    if step % cfg.write_every != 0:
        raise ValueError(f"the last frame is at step {step}, not a multiple of write_every")
    if exact:
        atoms.set_positions(state["positions"])
        atoms.set_momenta(state["momenta"])
        atoms.set_cell(state["cell"])
        rng.bit_generator.state = json.loads(str(state["rng"]))
    else:
        warnings.warn(
            f"no restart.npz for step {step} in {out}: resuming from the extxyz frame, whose "
            "text keeps 8 decimals",
            RuntimeWarning,
            stacklevel=4,  # _resume_state < _start < run_md < its caller
        )
        atoms.set_positions(last.get_positions())
        atoms.set_momenta(last.get_momenta())
        atoms.set_cell(last.cell)
    os.truncate(trajectory, end)
    return step


def _maxwell_boltzmann(atoms: Any, temperature: float, rng: np.random.Generator) -> None:
    """ASE's Maxwell-Boltzmann momenta (``thermalize_momenta`` from ASE 3.29 on)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29: the same distribution under its older name
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)


@dataclass
class _Output:
    """The files of a run in ``out`` and the log rows written so far (step order)."""

    out: Path
    dt: float
    has_energy: bool
    run: dict[str, Any] = field(default_factory=dict)
    committee: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fields(self) -> list[str]:
        """The columns of ``log.csv``."""
        return LOG_FIELDS + COMMITTEE_FIELDS if self.committee else LOG_FIELDS

    @property
    def trajectory(self) -> Path:
        return self.out / "trajectory.extxyz"

    @property
    def log(self) -> Path:
        return self.out / "log.csv"

    def record(
        self, atoms: Any, step: int, rng: np.random.Generator, files: tuple[Any, Any] | None = None
    ) -> dict[str, Any]:
        """Write the frame of ``step`` and its log row (appended whole to the open ``files``,
        trajectory and log, or as new files), then the restart state; return the row."""
        from ase.io import write

        frame, row = _frame(atoms, step, self.dt, self.has_energy, self.committee)
        text = io.StringIO()
        write(text, frame, format="extxyz")
        if files is None:  # the first frame: the trajectory last, as it marks a started run
            write_csv(self.log, [row], self.fields)
            _save_restart(self.out / "restart.npz", atoms, step, rng, self.run)
            atomic_write(self.trajectory, lambda f: f.write(text.getvalue()), mode="w")
            self.rows.append(row)
            return row
        else:
            append_record(files[0], text.getvalue())
            append_record(files[1], csv_row(row, self.fields))
        self.rows.append(row)
        _save_restart(self.out / "restart.npz", atoms, step, rng, self.run)
        return row


def _start(cfg: MDConfig, output: _Output, atoms: Any, rng: np.random.Generator) -> int:
    """Resume ``output`` (cutting what was written after the restart state) or begin it with
    the frame of step 0; return the step the run continues from."""
    from ase.md.velocitydistribution import Stationary

    if output.trajectory.exists() and not cfg.resume:
        raise ValueError(
            f"{output.trajectory} exists; pass --resume to continue it or choose --out"
        )
    if not output.trajectory.exists():
        output.out.mkdir(parents=True, exist_ok=True)
        if cfg.temperature is not None:
            _maxwell_boltzmann(atoms, cfg.temperature, rng)
            Stationary(atoms)
        output.record(atoms, 0, rng)
        return 0
    start = _resume_state(output.out, atoms, cfg, rng)
    output.rows = _cut_log(output.log, start)
    return start


def _integrator(cfg: MDConfig, atoms: Any, rng: np.random.Generator) -> Any:
    """ASE's velocity Verlet (NVE) or Langevin dynamics for ``cfg``."""
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    if cfg.ensemble == "nve":
        return VelocityVerlet(atoms, timestep=cfg.dt * fs)
    return Langevin(
        atoms,
        timestep=cfg.dt * fs,
        temperature_K=cfg.temperature,
        friction=cfg.friction / fs,
        fixcm=False,
        rng=rng,
    )


def _steps(cfg: MDConfig, dyn: Any, output: _Output, start: int, rng: np.random.Generator) -> float:
    """Run steps ``start + 1 .. cfg.steps``, recording every ``write_every``-th; return the
    wall time in s."""
    from tqdm.auto import tqdm

    bar = tqdm(total=max(cfg.steps - start, 0), unit="step", disable=not cfg.progress)
    t0 = time.perf_counter()
    with open(output.trajectory, "a") as traj, open(output.log, "a", newline="") as log:
        for step in range(start + 1, cfg.steps + 1):
            dyn.run(1)
            bar.update(1)
            if step % cfg.write_every == 0:
                row = output.record(dyn.atoms, step, rng, (traj, log))
                bar.set_postfix(T=f"{row['temperature_K']:.1f} K")
    bar.close()
    return time.perf_counter() - t0


def _summary(
    cfg: MDConfig, rows: list[dict[str, Any]], n_atoms: int, todo: int, wall: float
) -> dict[str, Any]:
    drift = None
    totals = [(r["time_fs"], r["total"]) for r in rows if r["total"] not in (None, "")]
    if cfg.ensemble == "nve" and len(totals) >= 2:
        t, e = np.array(totals, dtype=float).T
        drift = float(np.polyfit(t, e, 1)[0]) * 1e6 / n_atoms  # eV/fs -> eV/atom/ns
    temps = [float(r["temperature_K"]) for r in rows]
    devs = [
        (float(r["force_dev_max"]), int(r["step"]))
        for r in rows
        if r.get("force_dev_max") not in (None, "")
    ]
    committee = {}
    if devs:  # the committee's largest disagreement over the frames, and where
        dev, step = max(devs)
        committee = {"force_dev_max": dev, "force_dev_max_step": step}
    return {
        "steps": todo,
        "total_steps": cfg.steps,
        "frames": len(rows),
        "wall_s": wall,
        "atom_steps_per_s": n_atoms * todo / wall if wall > 0 else float("nan"),
        "mean_temperature_K": float(np.mean(temps)),
        "energy_drift_eV_per_atom_per_ns": drift,
        "out": str(Path(cfg.out)),
        **committee,
    }


def run_md(config: MDConfig) -> dict[str, Any]:
    r"""Run MD with a trained model; write the trajectory, the log and a summary.

    Returns:
        The summary: ``steps`` (run now), ``total_steps``, ``wall_s``, ``atom_steps_per_s``,
        ``mean_temperature_K``, and ``energy_drift_eV_per_atom_per_ns`` (NVE with an energy
        model: slope of a straight-line fit of the total energy, else :obj:`None`); for a
        committee also ``force_dev_max`` (eV/A, the largest over the frames of the run,
        resumed parts included) and ``force_dev_max_step``.
    """
    from uenn_geo.calculator import UENNCalculator
    from uenn_geo.data.extxyz import read_atoms
    from uenn_geo.models.committee import model_files

    structure = Path(config.structure)
    if not structure.is_file():
        raise FileNotFoundError(f"no structure file at {structure}")
    atoms = read_atoms(structure, index=-1)
    out = check_output_dir(config.out)
    with RunLock(out, "md"):
        sweep_temporaries(out)
        given = config.model if isinstance(config.model, tuple) else [config.model]
        paths = [str(f) for p in given for f in model_files(p)]  # folders: their models
        committee = len(paths) > 1
        config = replace(config, model=tuple(paths) if committee else paths[0])
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"no model file at {path}")
        model = paths if committee else paths[0]
        atoms.calc = UENNCalculator(model, device=config.device, skin=config.skin)
        rng = np.random.default_rng(config.seed)
        output = _Output(
            out, config.dt, atoms.calc.has_energy, _run_settings(config), committee=committee
        )
        start = _start(config, output, atoms, rng)
        todo = max(config.steps - start, 0)
        evaluator = atoms.calc.evaluator
        evaluator.compile = config.compile
        if config.compile == "auto" and todo >= MD_COMPILE_MIN_STEPS:
            evaluator.compile = True
        wall = _steps(config, _integrator(config, atoms, rng), output, start, rng)
    summary = _summary(config, output.rows, len(atoms), todo, wall)
    summary["compile_s"] = evaluator.compile_seconds
    return summary


def _format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"steps run: {summary['steps']} (total {summary['total_steps']}, "
        f"{summary['frames']} frames)",
        f"wall time: {summary['wall_s']:.1f} s ({summary['atom_steps_per_s']:.3g} atom-steps/s)",
        f"mean temperature: {summary['mean_temperature_K']:.2f} K",
    ]
    if summary.get("compile_s") is not None:
        lines.append(f"torch.compile: {summary['compile_s']:.1f} s of the wall time")
    drift = summary["energy_drift_eV_per_atom_per_ns"]
    if drift is not None:
        lines.append(f"total-energy drift: {drift:.3e} eV/atom/ns")
    if "force_dev_max" in summary:
        lines.append(
            f"committee: largest force deviation {summary['force_dev_max']:.4g} eV/A "
            f"(step {summary['force_dev_max_step']})"
        )
    lines.append(f"output: {summary['out']}/trajectory.extxyz, log.csv")
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> MDConfig:
    """The :class:`MDConfig` of parsed ``uenn-geo md`` options."""
    skip = ("progress", "compile")
    options = {f.name: getattr(args, f.name) for f in fields(MDConfig) if f.name not in skip}
    compile_ = {"auto": "auto", "yes": True, "no": False}[args.compile]
    return MDConfig(**options, progress=not args.no_progress, compile=compile_)


def run_command(args: argparse.Namespace) -> int:
    print(_format_summary(run_md(config_from_args(args))))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install ``uenn-geo md`` (an installer for :func:`uenn_geo.cli.build_parser`).

    Every default is the one of :class:`MDConfig`, read from its fields.
    """
    default = {f.name: f.default for f in fields(MDConfig)}
    p = sub.add_parser(
        "md",
        help="molecular dynamics with a trained model (NVE or Langevin, via ASE)",
        description="Run MD from a structure file (anything ase.io.read reads) with a model "
        "written by uenn-geo; writes trajectory.extxyz and log.csv into --out.",
    )

    def option(flag: str, text: str, **kwargs: Any) -> None:
        """``--flag`` with the default of the field ``flag`` (dashes as underscores)."""
        name = flag[2:].replace("-", "_")
        p.add_argument(flag, default=default[name], help=f"{text} (default: %(default)s)", **kwargs)

    p.add_argument("structure", help="structure file (its last frame is used)")
    p.add_argument(
        "--model",
        required=True,
        nargs="+",
        help="model file (model.pt) or the --out folder of uenn-geo train; several (or a "
        "--committee folder): a committee, moved by their mean forces, with their "
        "disagreement in log.csv",
    )
    option("--out", "output directory")
    option("--ensemble", "NVE (velocity Verlet) or Langevin", choices=ENSEMBLES)
    option("--dt", "time step in fs", type=float)
    option("--steps", "total steps, counting those of a resumed run", type=int)
    option(
        "--temperature",
        "initial Maxwell-Boltzmann temperature and Langevin target in K; none: keep the "
        "file's velocities",
        type=float,
    )
    option("--friction", "Langevin friction in 1/fs", type=float)
    option("--write-every", "steps between frames and log rows", type=int)
    option("--seed", "seed of the initial velocities and the Langevin noise", type=int)
    option("--resume", "continue --out/trajectory.extxyz", action="store_true")
    option("--device", "torch device of the model")
    option("--skin", "neighbour-list skin in Angstrom", type=float)
    p.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="torch.compile the model: auto compiles runs of at least "
        f"{MD_COMPILE_MIN_STEPS} steps or 256 atoms (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--no-progress",
        action="store_true",
        default=not default["progress"],
        help="no progress bar",
    )
    p.set_defaults(func=run_command)
