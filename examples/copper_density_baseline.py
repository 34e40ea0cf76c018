"""Fit an embedded-atom-like baseline to a file by linear least squares, and write what it
leaves, so that `uenn-geo train` can be trained on the residual (docs/training.md,
"Twenty-ninth round").

The energy of atom i is a polynomial (terms of degree 1 to --degree) of its Gaussian densities
rho_ib = sum_j exp(-eta (r_ij - c_b)^2) f_c(r_ij), the radial sums of the first graph layer's
form (Ma & Chan eq. 31) on [--r-min, --cutoff]: EMT and embedded-atom potentials are functions
of such sums. The coefficients (and one energy per atom) are fitted to the forces and energies
of the training structures of `uenn-geo train --data FILE --seed S` (the same split: first 10 %
validation, next 10 % test, rest training); the test force RMSE of the baseline alone is
printed, and --out gets every frame with the baseline's energy and forces subtracted.

    python examples/copper_density_baseline.py --data datasets/emt_copper/emt_copper_n3000_seed0.extxyz \
        --out copper_residual.extxyz
    uenn-geo train --data copper_residual.extxyz --time-limit 600 --threads 1
"""

from __future__ import annotations

import argparse
import itertools

import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from torch.func import jacrev, vmap
from vesin import NeighborList


def monomials(num: int, degree: int) -> list[tuple[int, ...]]:
    """Index tuples of the monomials of degree 1 to ``degree`` in ``num`` variables."""
    return [c for k in range(1, degree + 1) for c in itertools.combinations_with_replacement(range(num), k)]  # fmt: skip


def design(atoms: ase.Atoms, centres: torch.Tensor, cutoff: float, terms: list) -> tuple:
    """Rows of the structure's energy (K + 1) and forces (3N, K + 1), and its references."""
    eta = 0.5 / float(centres[1] - centres[0]) ** 2
    i, j, s = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=bool(atoms.pbc.any()),
        quantities="ijS",
    )  # fmt: skip
    pos = torch.tensor(atoms.positions)
    i, j = torch.tensor(i.astype(np.int64)), torch.tensor(j.astype(np.int64))
    vec = pos[j] - pos[i] + torch.tensor(s, dtype=torch.float64) @ torch.tensor(atoms.cell.array)
    r = vec.norm(dim=1)
    unit = vec / r[:, None]
    x = (r / cutoff).clamp(max=1)
    f_c = 1 - 10 * x**3 + 15 * x**4 - 6 * x**5  # C2 cutoff, and its derivative
    df_c = (-30 * x**2 + 60 * x**3 - 30 * x**4) / cutoff
    g = torch.exp(-eta * (r[:, None] - centres) ** 2)
    e = g * f_c[:, None]
    de = g * (df_c[:, None] - 2 * eta * (r[:, None] - centres) * f_c[:, None])  # d e / d r
    rho = torch.zeros(len(atoms), len(centres)).index_add(0, i, e)
    cols = torch.tensor([t + (-1,) * (len(terms[-1]) - len(t)) for t in terms])  # -1: factor 1

    def phi(row: torch.Tensor) -> torch.Tensor:
        ext = torch.cat([row, row.new_ones(1)])
        return ext[cols].prod(dim=1)

    values = vmap(phi)(rho)  # (N, K)
    slopes = vmap(jacrev(phi))(rho)  # (N, K, B): d phi_k / d rho_ib
    # E_k = sum_i phi_k(rho_i) moves with r_ij = |r_j - r_i|: dE_k/dr_j = t u, dE_k/dr_i = -t u
    t = torch.einsum("ekb,eb->ek", slopes[i], de)
    push = t[:, None, :] * unit[:, :, None]  # (E, 3, K)
    forces = torch.zeros(len(atoms), 3, len(terms)).index_add(0, i, push).index_add(0, j, -push)
    n = len(atoms)
    e_row = torch.cat([values.sum(0), torch.tensor([float(n)], dtype=torch.float64)])
    f_rows = torch.cat([forces.reshape(3 * n, -1), torch.zeros(3 * n, 1, dtype=torch.float64)], 1)
    ref_f = torch.tensor(atoms.get_forces()).reshape(-1)
    return e_row, f_rows, float(atoms.get_potential_energy()), ref_f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="frames with energies and forces")
    p.add_argument("--out", required=True, help="extxyz of the residual energies and forces")
    p.add_argument("--seed", type=int, default=0, help="uenn-geo train's split (default: 0)")
    p.add_argument("--gaussians", type=int, default=8)
    p.add_argument("--degree", type=int, default=3)
    p.add_argument("--r-min", type=float, default=1.5, help="first centre, A")
    p.add_argument("--cutoff", type=float, default=5.0, help="A")
    p.add_argument("--ridge", type=float, default=1e-10, help="relative to the mean diagonal")
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    frames = ase.io.read(args.data, ":")
    for k, atoms in enumerate(frames):
        results = getattr(atoms.calc, "results", {})
        if "energy" not in results or "forces" not in results:
            raise SystemExit(
                f"{args.data}: frame {k} has no energy or forces where ASE reads them (the "
                "calculator results); the baseline is fitted to both: give a file that has them"
            )
    perm = torch.randperm(len(frames), generator=torch.Generator().manual_seed(args.seed))
    tenth = max(1, round(0.1 * len(frames)))
    test, train = perm[tenth : 2 * tenth].tolist(), perm[2 * tenth :].tolist()
    centres = torch.linspace(args.r_min, args.cutoff, args.gaussians)
    terms = monomials(args.gaussians, args.degree)
    rows = [design(a, centres, args.cutoff, terms) for a in frames]
    k = len(terms) + 1
    normal, rhs = torch.zeros(k, k), torch.zeros(k)
    for t in train:  # forces, and energies per atom as rows of the same weight
        e_row, f_rows, energy, forces = rows[t]
        n = f_rows.shape[0] / 3
        normal += f_rows.T @ f_rows + 3 / n * torch.outer(e_row, e_row)
        rhs += f_rows.T @ forces + 3 / n * e_row * energy
    normal += args.ridge * normal.diagonal().mean() * torch.eye(k)
    coef = torch.linalg.solve(normal, rhs)
    err = torch.cat([rows[t][1] @ coef - rows[t][3] for t in test])
    print(
        f"{len(terms)} terms; baseline alone, test force RMSE {1000 * err.square().mean().sqrt():.2f} meV/A"
    )
    out = []
    for a, (e_row, f_rows, energy, forces) in zip(frames, rows, strict=True):
        b = a.copy()
        rest = (forces - f_rows @ coef).reshape(-1, 3).numpy()
        b.calc = SinglePointCalculator(b, energy=energy - float(e_row @ coef), forces=rest)
        out.append(b)
    ase.io.write(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
