"""MD steps per second of a uenn-geo model in ASE, OpenMM and LAMMPS, against the bare network.

For each argon box (Rahman's density, fcc displaced at random) the same model runs

* ``bare``: the compiled network plus the Verlet-skin neighbour list
  (:class:`uenn_geo.engines.Evaluator`), positions nudged before every call, no MD engine;
* ``ase``: ASE's ``VelocityVerlet`` with :class:`uenn_geo.calculator.UENNCalculator`;
* ``openmm``: a ``VerletIntegrator`` on OpenMM's CPU platform with ``MLPotential("uenn-geo")``;
* ``lammps``: ``fix nve`` with :class:`uenn_geo.engines.lammps.UENNFix`;
* ``ase_eager`` (on request): the calculator with ``compile=False``;

all but the last with ``compile=True`` (one compilation, shared), 1 fs steps, and prints steps/s and the
ratio to ``bare`` (engines that are not installed are skipped). Measured within one run, so
the ratios hold on a busy machine where the absolute figures do not.

    python examples/engines_speed.py --sizes 864 10368 --steps 10 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def argon_atoms(num_atoms: int):
    from ase import Atoms

    from uenn_geo.constants import ARGON_MASS
    from uenn_geo.data.structures import argon_fcc

    pos, cell = argon_fcc(num_atoms)
    atoms = Atoms(f"Ar{num_atoms}", positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    atoms.set_masses([ARGON_MASS] * num_atoms)
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.005, size=(num_atoms, 3)))  # ~100 K
    return atoms


def time_steps(step, steps: int) -> float:
    start = time.perf_counter()
    step(steps)
    return steps / (time.perf_counter() - start)


def bare(model, atoms):
    from uenn_geo.engines import Evaluator

    evaluator = Evaluator(model, compile=True)
    pos, rng = atoms.positions.copy(), np.random.default_rng(1)

    def step(n: int) -> None:
        for _ in range(n):
            pos[:] += rng.normal(scale=0.002, size=pos.shape)
            evaluator(pos, atoms.numbers, atoms.cell.array)

    return step


def ase_md(model, atoms):
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from uenn_geo.calculator import UENNCalculator

    atoms = atoms.copy()
    atoms.calc = UENNCalculator(model, compile=True)
    dyn = VelocityVerlet(atoms, timestep=1.0 * fs)
    return dyn.run


def ase_eager_md(model, atoms):
    """The calculator without torch.compile, for comparison."""
    from ase.md.verlet import VelocityVerlet
    from ase.units import fs

    from uenn_geo.calculator import UENNCalculator

    atoms = atoms.copy()
    atoms.calc = UENNCalculator(model, compile=False)
    return VelocityVerlet(atoms, timestep=1.0 * fs).run


def openmm_md(model, atoms):
    import openmm
    import openmm.app as app
    from openmm import unit
    from openmmml import MLPotential

    import uenn_geo.engines.openmm  # noqa: F401  (registers "uenn-geo" without the entry point)

    topology = app.Topology()
    chain = topology.addChain()
    for _ in range(len(atoms)):
        app_atom_residue = topology.addResidue("AR", chain)
        topology.addAtom("Ar", app.Element.getByAtomicNumber(18), app_atom_residue)
    topology.setPeriodicBoxVectors(atoms.cell.array / 10.0 * unit.nanometer)
    system = MLPotential("uenn-geo", model=model, compile=True).createSystem(topology)
    integrator = openmm.VerletIntegrator(0.001)
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, integrator, platform)
    context.setPositions(atoms.positions / 10.0)

    def step(n: int) -> None:
        integrator.step(n)

    step.context = context  # an integrator without its context cannot step
    return step


def lammps_md(model, atoms):
    from uenn_geo.engines.lammps import UENNFix, lammps_instance, load_atoms

    lmp = lammps_instance()
    lmp.command("units metal")
    lmp.command("atom_style atomic")
    elements = load_atoms(lmp, atoms)
    fix = UENNFix(lmp, model, elements, compile=True)
    lmp.command("fix nve all nve")
    lmp.command("thermo 0")

    def step(n: int) -> None:
        lmp.command(f"run {n} pre no post no")

    step.fix = fix  # keep the callback's owner alive while LAMMPS runs
    return step


ENGINES = {
    "bare": bare,
    "ase": ase_md,
    "openmm": openmm_md,
    "lammps": lammps_md,
    "ase_eager": ase_eager_md,
}


def main() -> None:
    from uenn_geo.models import UENNForceField
    from uenn_geo.perf import keep_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[864, 10368])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 5], help="per size")
    default = ["bare", "ase", "openmm", "lammps"]
    parser.add_argument("--engines", nargs="+", default=default, choices=list(ENGINES))
    parser.add_argument("--conservative", action="store_true", help="forces from the energy")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    # 1 thread by default: on a 2-core machine shared with another job, 2 torch threads made
    # every eager op around the compiled network wait for a descheduled OpenMP worker
    # (816 ms instead of 37 ms per call at 864 atoms; docs/bench.md, "What users run").
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    model = UENNForceField(cutoff=10.2, dtype=args.dtype, conservative=args.conservative)
    model.eval()
    rows = []
    for size, steps in zip(args.sizes, args.steps, strict=True):
        atoms = argon_atoms(size)
        runs = {}
        for name in args.engines:
            try:
                runs[name] = ENGINES[name](model, atoms)
            except ImportError as err:
                print(f"{name}: skipped ({err})")
                continue
            start = time.perf_counter()
            runs[name](1)  # warm-up: compilation (once), first neighbour list
            print(f"{name} {size}: first step {time.perf_counter() - start:.1f} s", flush=True)
        rates = {name: 0.0 for name in runs}
        for _ in range(args.rounds):  # interleaved rounds, best of each: fair on a busy machine
            for name, step in runs.items():
                rates[name] = max(rates[name], time_steps(step, steps))
        for name, rate in rates.items():
            row = {"atoms": size, "engine": name, "steps_per_s": rate}
            row["bare_over_engine"] = rates.get("bare", float("nan")) / rate
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| atoms | engine | steps/s | bare / engine |")
    print("|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['atoms']} | {r['engine']} | {r['steps_per_s']:.3g} | "
            f"{r['bare_over_engine']:.2f} |"
        )


if __name__ == "__main__":
    main()
