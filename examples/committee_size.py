r"""How a committee's errors fall with its size, and where they stop: bias and variance.

Evaluates every model once on a structure file, then every committee of ``M`` of them (all
subsets, or ``--max-subsets`` drawn at random when there are more) and prints, per size, the
mean over the subsets of the force MAE and RMSE (meV/A) and the energy MAE (meV per
structure). The mean squared force error of a committee of ``M`` members that err
independently about a common bias falls as

.. math::
    \mathrm{MSE}(M) = B + V / M

(:math:`B`: the error the members share, the committee's limit; :math:`V`: the part one
member adds, which averaging removes). The script fits :math:`B` and :math:`V` by least squares
to the RMSE and to the MAE (squared) over the sizes and prints the limit
:math:`\sqrt{B}` and the errors the fit predicts for larger committees: how many members a
target needs, or that no number of them reaches it.

The models must share a cutoff, a dtype and the energy (:class:`uenn_geo.models.Committee`);
a folder of ``uenn-geo train`` stands for its model files.

Example (rMD17 ethanol, models of two ``uenn-geo train --committee 2`` runs)::

    python examples/committee_size.py --file ../shared/data/ethanol/test.xyz \
        --model runs/eth_a runs/eth_b --threads 1

Units: meV/A (forces), meV per structure and meV/atom (energies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random

import numpy as np
import torch
from torch_geometric.data import Batch

from uenn_geo.data.extxyz import read_frames
from uenn_geo.data.transforms import CastFloats
from uenn_geo.models import load_committee
from uenn_geo.models.committee import Committee


def predictions(paths: list[str], file: str, batch_size: int) -> dict[str, np.ndarray]:
    """Every member's forces :obj:`(M, N, 3)` and energies :obj:`(M, G)` (eV, eV/A) on the
    frames of ``file``, with the references and the atoms per structure."""
    model = load_committee(paths)
    if not isinstance(model, Committee):
        raise SystemExit("give at least two models (or a folder of a --committee run)")
    frames = [CastFloats(model.dtype)(f) for f in read_frames(file, min_distance=0.0)]
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


def errors_by_size(p: dict[str, np.ndarray], max_subsets: int, seed: int) -> list[dict]:
    """Per committee size: the mean over its subsets of the force MAE, the force RMSE (the
    root of the mean MSE) and the energy MAE, in meV."""
    members, rng, rows = p["forces"].shape[0], random.Random(seed), []
    for size in range(1, members + 1):
        subsets = list(itertools.combinations(range(members), size))
        if len(subsets) > max_subsets:
            subsets = rng.sample(subsets, max_subsets)
        mae, mse, e_mae, e_atom = [], [], [], []
        for s in subsets:
            diff = p["forces"][list(s)].mean(0) - p["ref_forces"]
            mae.append(np.abs(diff).mean())
            mse.append((diff**2).mean())
            if p["energies"] is not None:
                e = np.abs(p["energies"][list(s)].mean(0) - p["ref_energies"])
                e_mae.append(e.mean())
                e_atom.append((e / p["atoms"]).mean())
        row = {"size": size, "subsets": len(subsets), "force_mae": 1e3 * float(np.mean(mae))}
        row["force_rmse"] = 1e3 * float(np.sqrt(np.mean(mse)))
        if e_mae:
            row["energy_mae"] = 1e3 * float(np.mean(e_mae))
            row["energy_mae_per_atom"] = 1e3 * float(np.mean(e_atom))
        rows.append(row)
    return rows


def fit_bias_variance(rows: list[dict], key: str) -> tuple[float, float]:
    r""":math:`B, V` of :math:`\mathrm{err}^2(M) = B + V / M`, least squares over the sizes."""
    sizes = np.array([r["size"] for r in rows], dtype=float)
    design = np.stack([np.ones_like(sizes), 1.0 / sizes], axis=1)
    target = np.array([r[key] ** 2 for r in rows])
    (bias, variance), *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(bias), float(variance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", required=True, help="structures with reference forces")
    parser.add_argument("--model", nargs="+", required=True, help="model files or folders")
    parser.add_argument("--max-subsets", type=int, default=50, help="per size (default: 50)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="draws the subsets")
    parser.add_argument("--out", help="also write the table and the fits as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = predictions(args.model, args.file, args.batch_size)
    rows = errors_by_size(p, args.max_subsets, args.seed)
    print("size  subsets  F MAE meV/A  F RMSE meV/A  E MAE meV  E MAE meV/atom")
    for r in rows:
        energy = (
            f"{r['energy_mae']:9.3f}  {r['energy_mae_per_atom']:14.4f}" if "energy_mae" in r else ""
        )
        print(
            f"{r['size']:4d}  {r['subsets']:7d}  {r['force_mae']:11.3f}  {r['force_rmse']:12.3f}  {energy}"
        )
    fits = {}
    if len(rows) >= 2:
        for key in ("force_mae", "force_rmse", "energy_mae"):
            if key not in rows[0]:
                continue
            bias, variance = fit_bias_variance(rows, key)
            fits[key] = {"B": bias, "V": variance, "limit": float(np.sqrt(max(bias, 0.0)))}
            ahead = {m: float(np.sqrt(max(bias + variance / m, 0.0))) for m in (2, 4, 8, 16)}
            fits[key]["predicted"] = ahead
            print(
                f"{key}: err^2 = {bias:.3f} + {variance:.3f} / M; limit (M -> inf) "
                f"{fits[key]['limit']:.3f}; predicted "
                + ", ".join(f"M={m}: {v:.3f}" for m, v in ahead.items())
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"rows": rows, "fits": fits, "models": args.model, "file": args.file}, f, indent=1
            )


if __name__ == "__main__":
    main()
