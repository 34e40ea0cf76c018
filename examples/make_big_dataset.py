"""Write a large extended-XYZ data set fast: random Lennard-Jones clusters of two species.

Clusters of 10-60 atoms (argon and krypton, Lorentz-Berthelot mixing) on a jittered simple
cubic grid, with exact LJ energies and forces, written as extended XYZ text straight from
numpy (no ASE objects), so that 10^6 frames take minutes. A few isolated-atom frames come
first (``config_type=IsolatedAtom``, energy 0). Not physical equilibrium structures: a
stream of plausible frames to measure preparing and training at scale (docs/scale.md).

    python examples/make_big_dataset.py --frames 100000 --out big.xyz
"""

from __future__ import annotations

import argparse
import time

import numpy as np

#: (sigma A, epsilon eV) of Ar and Kr
LJ = {18: (3.40, 0.0104), 36: (3.65, 0.0141)}
SYMBOL = {18: "Ar", 36: "Kr"}


def lj(pos: np.ndarray, z: np.ndarray) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A) of a free LJ cluster (all pairs)."""
    sig = np.array([LJ[int(k)][0] for k in z])
    eps = np.array([LJ[int(k)][1] for k in z])
    s = 0.5 * (sig[:, None] + sig[None, :])
    e = np.sqrt(eps[:, None] * eps[None, :])
    d = pos[:, None, :] - pos[None, :, :]
    r2 = np.square(d).sum(-1)
    np.fill_diagonal(r2, np.inf)
    sr6 = (s * s / r2) ** 3
    energy = 0.5 * float((4 * e * (sr6 * sr6 - sr6)).sum())
    coef = 24 * e * (2 * sr6 * sr6 - sr6) / r2
    forces = (coef[:, :, None] * d).sum(1)
    return energy, forces


def frame(rng: np.random.Generator) -> str:
    n = int(rng.integers(10, 61))
    side = int(np.ceil(n ** (1 / 3))) + 1
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = grid[rng.choice(len(grid), n, replace=False)] * 4.0 + rng.normal(0, 0.08, (n, 3))
    z = np.where(rng.random(n) < 0.7, 18, 36)
    energy, forces = lj(pos, z)
    rows = np.concatenate([pos, forces], axis=1)
    lines = [
        f"{SYMBOL[int(k)]} " + " ".join(f"{v:.8f}" for v in row)
        for k, row in zip(z, rows, strict=True)
    ]
    header = f'{n}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={energy:.10f} pbc="F F F"\n'
    return header + "\n".join(lines) + "\n"


def isolated(z: int) -> str:
    return (
        f"1\nProperties=species:S:1:pos:R:3:forces:R:3 energy=0.0 "
        f'config_type=IsolatedAtom pbc="F F F"\n{SYMBOL[z]} 0.0 0.0 0.0 0.0 0.0 0.0\n'
    )


def write(path: str, frames: int, seed: int = 0, with_isolated: bool = True) -> None:
    """Write ``frames`` cluster frames (after the isolated atoms) to ``path``."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        if with_isolated:
            f.write(isolated(18) + isolated(36))
        for _ in range(frames):
            f.write(frame(rng))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--out", default="big.xyz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-isolated", dest="isolated", action="store_false")
    args = p.parse_args()
    t0 = time.perf_counter()
    write(args.out, args.frames, args.seed, args.isolated)
    print(f"wrote {args.frames} frames to {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
