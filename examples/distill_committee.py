r"""Distillation data: a committee's predictions on perturbed training frames, for one model.

A committee of models (``uenn-geo train --committee N``) is more accurate than its members,
and costs ``N`` models at every step of MD. Distillation trains one model on what the
committee knows: this script takes the training split of a structure file exactly as
``uenn-geo train --train-file F --val-fraction X --split-seed S`` makes it (the same
permutation; no isolated atoms in ``F``), adds ``--copies`` copies of every training frame
with Gaussian noise of ``--sigma`` A on every coordinate, labels the copies with the
committee's mean energy and forces (``config_type=distilled``), and writes

* ``PREFIX_train.xyz``: the training frames with their reference labels, then the copies;
* ``PREFIX_val.xyz``: the validation frames (reference labels), for ``--valid-file``.

Train the student on them with the teacher's split held out::

    python examples/distill_committee.py --model runs/eth_c4 \
        --train-file ../shared/data/ethanol/train.xyz --val-fraction 0.05 \
        --sigma 0.02 --copies 3 --out runs/distil
    uenn-geo train --train-file runs/distil_train.xyz --valid-file runs/distil_val.xyz \
        --test-file ../shared/data/ethanol/test.xyz --E0s ../shared/data/ethanol/isolated_atoms.xyz

The student learns the committee where the copies lie and the reference where the frames
lie; the committee's own errors come with its labels. docs/molecules.md measures it.

Units: Angstrom (``--sigma``), eV and eV/A (labels).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from ase.io import read, write

from uenn_geo.calculator import UENNCalculator


def split(num_frames: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Validation and training indices as ``uenn-geo train`` draws them (validation first,
    no test fraction)."""
    perm = torch.randperm(num_frames, generator=torch.Generator().manual_seed(seed)).tolist()
    size = max(1, round(val_fraction * num_frames)) if val_fraction > 0 else 0
    return perm[:size], perm[size:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", required=True, help="the committee: files or a folder")
    p.add_argument("--train-file", required=True)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--split-seed", type=int, default=0, help="uenn-geo train's (default: 0)")
    p.add_argument("--sigma", type=float, default=0.02, help="noise per coordinate, A")
    p.add_argument("--copies", type=int, default=3, help="noisy copies of each training frame")
    p.add_argument("--seed", type=int, default=1, help="of the noise")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="prefix of the two files written")
    args = p.parse_args()
    if args.sigma <= 0 or args.copies < 1:
        raise SystemExit("--sigma must be > 0 and --copies >= 1")
    torch.set_num_threads(args.threads)
    frames = read(args.train_file, ":")
    isolated = [k for k, a in enumerate(frames) if len(a) == 1]
    if isolated:
        raise SystemExit(
            f"{args.train_file} holds isolated atoms (frames {isolated[:5]}), which uenn-geo "
            "train keeps out of its split, so the split here would differ: pass them with "
            "--E0s from a separate file instead"
        )
    val, train = split(len(frames), args.val_fraction, args.split_seed)
    train_frames = [frames[i] for i in train]
    calc = UENNCalculator(args.model, compile=False)
    rng = np.random.default_rng(args.seed)
    copies = []
    for _ in range(args.copies):
        for atoms in train_frames:
            noisy = atoms.copy()
            noisy.positions = noisy.positions + rng.normal(0.0, args.sigma, noisy.positions.shape)
            noisy.calc = calc
            energy, forces = noisy.get_potential_energy(), noisy.get_forces()
            noisy.calc = None
            noisy.info = {"energy": float(energy), "config_type": "distilled"}
            noisy.arrays.pop("forces", None)
            noisy.new_array("forces", np.array(forces))
            copies.append(noisy)
    write(f"{args.out}_train.xyz", train_frames + copies, format="extxyz")
    write(f"{args.out}_val.xyz", [frames[i] for i in val], format="extxyz")
    print(
        f"{args.out}_train.xyz: {len(train_frames)} training frames and {len(copies)} copies "
        f"(sigma {args.sigma} A); {args.out}_val.xyz: {len(val)} validation frames"
    )


if __name__ == "__main__":
    main()
