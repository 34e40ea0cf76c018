r"""How a committee's errors fall with its size, and where they stop: bias and variance.

Evaluates every model once on a structure file, then every committee of ``M`` of them (all
subsets, or ``--max-subsets`` drawn at random when there are more) and prints, per size, the
mean over the subsets of the force MAE and RMSE (meV/A) and of the energy MAE (meV per
structure and meV/atom), with the best and worst subset's force and energy MAE. The mean
squared error of a committee of ``M`` members drawn from a population that errs about a common
bias falls as

.. math::
    \mathrm{MSE}(M) = B + V / M

(:math:`B`: the error the members share, the limit of a committee; :math:`V`: the part one
member adds, which averaging removes). For the MSE over all subsets of a fixed set of models
this form is exact; for the MAE (squared) it is a heuristic. The script fits :math:`B` and
:math:`V` by least squares over the sizes, for the force MAE, the force RMSE and the energy
MAE, and prints the limit :math:`\sqrt{B}` and the errors the fit predicts for larger
committees; with ``--target`` (a force MAE in meV/A), the members a committee needs to reach
it, :math:`M = V / (t^2 - B)`, or that none does (:math:`t^2 \le B`). The fit speaks for new
members trained like the given ones.

The models must share a cutoff, a dtype and the energy (:class:`uenn_geo.models.Committee`);
a folder of ``uenn-geo train`` stands for its model files.

Example (rMD17 ethanol, models of two ``uenn-geo train --committee 2`` runs)::

    python examples/committee_size.py --file ../shared/data/ethanol/test.xyz \
        --model runs/eth_a runs/eth_b --threads 1 --target 3.0

Units: meV/A (forces), meV per structure and meV/atom (energies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random

import numpy as np
import torch
from torch_geometric.data import Batch

from uenn_geo.data.extxyz import read_frames
from uenn_geo.data.transforms import CastFloats
from uenn_geo.models import load_committee
from uenn_geo.models.committee import Committee


def predictions(
    paths: list[str], file: str, batch_size: int, keys: tuple[str | None, str | None]
) -> dict[str, np.ndarray]:
    """Every member's forces :obj:`(M, N, 3)` and energies :obj:`(M, G)` (eV, eV/A) on the
    frames of ``file``, with the references and the atoms per structure."""
    model = load_committee(paths)
    if not isinstance(model, Committee):
        raise SystemExit("give at least two models (or a folder of a --committee run)")
    frames = [CastFloats(model.dtype)(f) for f in read_frames(file, *keys, min_distance=0.0)]
    forces, energies = [], []
    for i in range(0, len(frames), batch_size):
        out = model.energy_forces(Batch.from_data_list(frames[i : i + batch_size]))["members"]
        forces.append(out["forces"].detach().double().numpy())
        if out["energy"] is not None:
            energies.append(out["energy"].detach().double().numpy())
    has_energy = bool(energies) and all(hasattr(f, "energy") for f in frames)
    return {
        "forces": np.concatenate(forces, axis=1),
        "energies": np.concatenate(energies, axis=1) if has_energy else None,
        "ref_forces": torch.cat([f.forces for f in frames]).double().numpy(),
        "ref_energies": np.array([float(f.energy) for f in frames]) if has_energy else None,
        "atoms": np.array([f.num_nodes for f in frames]),
    }


def subsets_of(members: int, size: int, most: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Every subset of ``size`` of ``members`` models, or ``most`` distinct ones at random."""
    if math.comb(members, size) <= most:
        return list(itertools.combinations(range(members), size))
    drawn: set[tuple[int, ...]] = set()
    while len(drawn) < most:
        drawn.add(tuple(sorted(rng.sample(range(members), size))))
    return sorted(drawn)


def errors_by_size(p: dict[str, np.ndarray], max_subsets: int, seed: int) -> list[dict]:
    """Per committee size: the mean over its subsets of the force MAE, the force RMSE (the
    root of the mean MSE) and the energy MAE, and the best and worst subset's MAEs, in meV."""
    members, rng, rows = p["forces"].shape[0], random.Random(seed), []
    for size in range(1, members + 1):
        subsets = subsets_of(members, size, max_subsets, rng)
        mae, mse, e_mae, e_atom = [], [], [], []
        for s in subsets:
            diff = p["forces"][list(s)].mean(0) - p["ref_forces"]
            mae.append(1e3 * np.abs(diff).mean())
            mse.append(1e6 * (diff**2).mean())
            if p["energies"] is not None:
                e = 1e3 * np.abs(p["energies"][list(s)].mean(0) - p["ref_energies"])
                e_mae.append(e.mean())
                e_atom.append((e / p["atoms"]).mean())
        row = {"size": size, "subsets": len(subsets), "force_mae": float(np.mean(mae))}
        row.update(force_rmse=float(np.sqrt(np.mean(mse))), force_mae_range=[min(mae), max(mae)])
        if e_mae:
            row.update(energy_mae=float(np.mean(e_mae)), energy_mae_range=[min(e_mae), max(e_mae)])
            row["energy_mae_per_atom"] = float(np.mean(e_atom))
        rows.append(row)
    return rows


def fit_bias_variance(rows: list[dict], key: str) -> tuple[float, float]:
    r""":math:`B, V` of :math:`\mathrm{err}^2(M) = B + V / M`, least squares over the sizes."""
    sizes = np.array([r["size"] for r in rows], dtype=float)
    design = np.stack([np.ones_like(sizes), 1.0 / sizes], axis=1)
    target = np.array([r[key] ** 2 for r in rows])
    (bias, variance), *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(bias), float(variance)


def members_needed(bias: float, variance: float, target: float) -> float | None:
    r"""The committee size :math:`M` whose fitted error is ``target``; :obj:`None` when even
    the limit :math:`\sqrt{B}` is above it."""
    if target**2 <= bias:
        return None
    return max(variance / (target**2 - bias), 1.0)


def print_table(rows: list[dict]) -> None:
    print("size  subsets  F MAE meV/A (best-worst)  F RMSE meV/A  E MAE meV (best-worst)  meV/atom")
    for r in rows:
        line = f"{r['size']:4d}  {r['subsets']:7d}  {r['force_mae']:7.3f} "
        line += "({:.3f}-{:.3f})".format(*r["force_mae_range"])
        line += f"  {r['force_rmse']:12.3f}"
        if "energy_mae" in r:
            line += f"  {r['energy_mae']:7.3f} " + "({:.3f}-{:.3f})".format(*r["energy_mae_range"])
            line += f"  {r['energy_mae_per_atom']:8.4f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", required=True, help="structures with reference forces")
    parser.add_argument("--model", nargs="+", required=True, help="model files or folders")
    parser.add_argument("--energy-key", help="where the reference energies are (as for train)")
    parser.add_argument("--forces-key", help="where the reference forces are (as for train)")
    parser.add_argument("--target", type=float, help="a force MAE (meV/A): members needed")
    parser.add_argument("--max-subsets", type=int, default=50, help="per size (default: 50)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="draws the subsets")
    parser.add_argument("--out", help="also write the table and the fits as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keys = (args.energy_key, args.forces_key)
    rows = errors_by_size(
        predictions(args.model, args.file, args.batch_size, keys), args.max_subsets, args.seed
    )
    print_table(rows)
    fits = {}
    for key in ("force_mae", "force_rmse", "energy_mae"):
        if key not in rows[0]:
            continue
        bias, variance = fit_bias_variance(rows, key)
        ahead = {m: float(np.sqrt(max(bias + variance / m, 0.0))) for m in (2, 4, 8, 16)}
        fits[key] = {"B": bias, "V": variance, "limit": float(np.sqrt(max(bias, 0.0)))}
        fits[key]["predicted"] = ahead
        print(
            f"{key}: err^2 = {bias:.3f} + {variance:.3f} / M; limit (M -> inf) "
            f"{fits[key]['limit']:.3f}; predicted "
            + ", ".join(f"M={m}: {v:.3f}" for m, v in ahead.items())
        )
    if args.target is not None:
        need = members_needed(fits["force_mae"]["B"], fits["force_mae"]["V"], args.target)
        fits["force_mae"]["members_for_target"] = need
        verdict = (
            "no committee of such members" if need is None else f"about {math.ceil(need)} members"
        )
        print(f"force MAE {args.target} meV/A: {verdict} (by the fit)")
    if args.out:
        with open(args.out, "w") as f:
            record = {"rows": rows, "fits": fits, "models": args.model, "file": args.file}
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
