r"""NVE molecular dynamics of one molecule with a trained uenn-geo model, and its checks.

Runs ``uenn-geo md`` (velocity Verlet, Maxwell-Boltzmann velocities at ``--temperature``) from
one frame of a data file for at most ``--time`` seconds of wall time (the run is stopped
there; ``uenn-geo md`` appends every frame and log row whole, so a stopped run leaves complete
records), then reads ``log.csv`` and ``trajectory.extxyz`` and reports:

* **stability**: every bond of the first frame (pairs closer than ``--bond-factor`` times the
  sum of the covalent radii) stays within ``--bond-min`` .. ``--bond-max`` Angstrom in every
  frame, no other pair comes closer than ``--bond-min`` (no atom collapses onto another), and
  no atom leaves (largest distance from the centre of mass below ``--max-radius``);
* **energy conservation**: the drift of the total energy, the slope of a straight-line fit of
  ``total`` against time, in eV/ps (and meV/atom/ps), and the RMS of the fluctuation about it;
* **speed**: MD steps per second of wall time (model evaluation, neighbour lists, output).

Example (rMD17 ethanol, a model from ``uenn-geo train``)::

    python examples/molecule_md.py --model runs/ethanol/model.pt \
        --data ../shared/data/ethanol/test.xyz --time 900 --threads 1 --out /tmp/eth_md

``--analyse-only`` re-reads an existing ``--out`` without running. Units: Angstrom, fs, eV, K.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.data import covalent_radii
from ase.io import read, write


def write_structure(data: str, index: int, path: Path) -> None:
    """One frame of ``data`` as an extended XYZ file (positions and species only)."""
    atoms = read(data, index=index)
    atoms.calc = None
    atoms.info = {}
    write(path, atoms)


def run(args: argparse.Namespace, out: Path) -> float:
    """``uenn-geo md`` for at most ``args.time`` seconds; the wall time it ran."""
    structure = out.parent / f"{out.name}_start.xyz"
    write_structure(args.data, args.frame, structure)
    command = [
        "uenn-geo", "md", str(structure), "--model", args.model, "--dt", str(args.dt),
        "--steps", str(args.steps), "--temperature", str(args.temperature),
        "--ensemble", "nve", "--out", str(out), "--write-every", str(args.write_every),
        "--seed", str(args.seed), "--no-progress",
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    print("running:", " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    try:
        proc.wait(timeout=args.time)
    except subprocess.TimeoutExpired:
        print(f"time limit {args.time:.0f} s reached: stopping the run", flush=True)
        proc.terminate()
        proc.wait()
    return time.perf_counter() - start


def read_log(path: Path) -> dict[str, np.ndarray]:
    """``log.csv`` as float columns (complete rows only)."""
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("total") not in (None, "")]
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def bonds_of(atoms, factor: float) -> list[tuple[int, int]]:
    """Pairs closer than ``factor`` times the sum of their covalent radii."""
    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    n = len(atoms)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if d[i, j] < factor * (r[i] + r[j])]


def analyse(args: argparse.Namespace, out: Path, wall: float | None) -> dict:
    """Stability, energy drift and speed from ``out``'s log and trajectory."""
    log = read_log(out / "log.csv")
    frames = read(out / "trajectory.extxyz", index=":")
    first = frames[0]
    symbols = first.get_chemical_symbols()
    bonds = bonds_of(first, args.bond_factor)
    n = len(first)
    iu = np.triu_indices(n, 1)
    bond_mask = np.zeros((n, n), bool)
    for i, j in bonds:
        bond_mask[i, j] = True
    bond_d = np.array([a.get_all_distances()[tuple(np.array(bonds).T)] for a in frames])
    other_min = np.array([a.get_all_distances()[iu][~bond_mask[iu]].min() for a in frames])
    radius = np.array(
        [np.linalg.norm(a.positions - a.get_center_of_mass(), axis=1).max() for a in frames]
    )
    broken = (bond_d < args.bond_min) | (bond_d > args.bond_max)
    first_bad = None
    bad_frames = np.flatnonzero(
        broken.any(1) | (other_min < args.bond_min) | (radius > args.max_radius)
    )
    if len(bad_frames):
        first_bad = float(log["time_fs"][min(bad_frames[0], len(log["time_fs"]) - 1)])
    t_ps = log["time_fs"] / 1000.0
    total = log["total"]
    slope, intercept = np.polyfit(t_ps, total, 1) if len(t_ps) > 1 else (float("nan"), 0.0)
    resid = total - (slope * t_ps + intercept)
    steps = int(log["step"][-1])
    per_bond = {
        f"{symbols[i]}{i}-{symbols[j]}{j}": [float(bond_d[:, k].min()), float(bond_d[:, k].max())]
        for k, (i, j) in enumerate(bonds)
    }
    result = {
        "model": args.model,
        "frames": len(frames),
        "steps": steps,
        "simulated_ps": float(t_ps[-1]),
        "stable": first_bad is None,
        "first_unstable_fs": first_bad,
        "bond_range_A": [float(bond_d.min()), float(bond_d.max())],
        "closest_nonbonded_A": float(other_min.min()),
        "max_radius_A": float(radius.max()),
        "bonds": per_bond,
        "mean_temperature_K": float(log["temperature_K"].mean()),
        "drift_eV_per_ps": float(slope),
        "drift_meV_per_atom_per_ps": float(1000 * slope / n),
        "total_energy_fluctuation_meV": float(1000 * resid.std()),
        "total_energy_change_meV": float(1000 * (total[-1] - total[0])),
    }
    if wall:
        result["wall_s"] = wall
        result["steps_per_s"] = steps / wall
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model.pt from uenn-geo train")
    p.add_argument("--data", default="../shared/data/ethanol/test.xyz", help="frames file")
    p.add_argument("--frame", type=int, default=0, help="starting frame of --data")
    p.add_argument("--out", default="molecule_md", help="output folder")
    p.add_argument("--time", type=float, default=600.0, help="wall-time limit, s")
    p.add_argument("--ps", type=float, default=100.0, help="simulated time to aim for, ps")
    p.add_argument("--dt", type=float, default=0.5, help="time step, fs")
    p.add_argument("--temperature", type=float, default=300.0, help="initial temperature, K")
    p.add_argument("--write-every", type=int, default=20, help="steps between frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bond-factor", type=float, default=1.2, help="bond: d < f (r_i + r_j)")
    p.add_argument("--bond-min", type=float, default=0.8, help="shortest allowed bond, A")
    p.add_argument("--bond-max", type=float, default=2.0, help="longest allowed bond, A")
    p.add_argument("--max-radius", type=float, default=10.0, help="atom lost beyond, A")
    p.add_argument("--analyse-only", action="store_true", help="only read an existing --out")
    args = p.parse_args(argv)
    args.steps = int(round(args.ps * 1000 / args.dt))
    out = Path(args.out)
    wall = None
    if not args.analyse_only:
        if out.exists() and any(out.iterdir()):
            sys.exit(f"{out} is not empty: choose another --out or use --analyse-only")
        out.parent.mkdir(parents=True, exist_ok=True)
        wall = run(args, out)
    result = analyse(args, out, wall)
    (out / "md_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "bonds"}, indent=1))
    print("bond ranges (A):", {k: [round(x, 3) for x in v] for k, v in result["bonds"].items()})
    return 0 if result["stable"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
