"""The compiled evaluator of an energy model, one specialised shape (padded neighbour lists,
the default) against any shape (the mode before 2026-12-02), in one process, alternating.

Forces and energy from the energy of `UENNForceField(conservative=True)` (the argon default,
random weights) on an 864-atom argon box whose atoms take small random steps before every
call, as in MD (docs/engines.md, "Compiled speed in every path").

    python examples/evaluator_shapes.py --rounds 6
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from ase.build import bulk

from uenn_geo.engines import evaluator
from uenn_geo.models import UENNForceField


def _one_shape(model: UENNForceField) -> evaluator.Evaluator:
    """The default evaluator, compiled."""
    return evaluator.Evaluator(model, compile=True)


def _any_shape(model: UENNForceField) -> evaluator.Evaluator:
    """An evaluator compiled for any shape, its lists unpadded (the earlier behaviour)."""
    ev = evaluator.Evaluator(model, compile=True)
    ev._padded = lambda edges, num_atoms: edges  # noqa: ARG005
    compile_fn = torch.compile
    torch.compile = lambda fn, **kw: compile_fn(fn, **{**kw, "dynamic": True})
    try:
        ev._compiled()
    finally:
        torch.compile = compile_fn
    return ev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=4, help="calls a round and variant")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((6, 6, 6))
    pos = atoms.get_positions() + 0.1 * rng.standard_normal((len(atoms), 3))
    z, cell = atoms.numbers, atoms.cell.array
    model = UENNForceField(conservative=True).eval()
    variants: dict[str, tuple[evaluator.Evaluator, Any]] = {}
    for name, make in (("one shape", _one_shape), ("any shape", _any_shape)):
        ev = make(model)
        ev(pos, z, cell)
        print(f"{name}: first call {ev.compile_seconds:.1f} s", flush=True)
        variants[name] = (ev, evaluator._COMPILED.pop(model))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        start = pos
        for name, (ev, compiled) in variants.items():
            evaluator._COMPILED[model] = compiled
            p_round, calls = start.copy(), []
            for _ in range(args.calls):
                p_round = p_round + 0.01 * rng.standard_normal(p_round.shape)
                t0 = time.perf_counter()
                ev(p_round, z, cell)
                calls.append(time.perf_counter() - t0)
            times[name].append(float(np.median(calls)))
        pos = p_round
    for name, values in times.items():
        print(f"{name}: {1000 * np.median(values):.1f} ms a call (median of rounds)")
    one = variants["one shape"][0]
    print(f"padded list: {one._edge_room[1]} edges")


if __name__ == "__main__":
    main()
