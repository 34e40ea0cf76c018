"""``uenn-geo prepare``: structure files into HDF5 shards with their statistics, in a stream.

For data sets larger than memory: the files are read one frame at a time and written as
shards (:func:`uenn_geo.data.hdf5.prepare`); ``uenn-geo train --data DIR`` then reads the
shards lazily and takes its scales and E0s from the stored statistics.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    from uenn_geo.data.hdf5 import prepare

    meta = prepare(
        args.files,
        args.out,
        cutoff=args.cutoff,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        shard_frames=args.shard_frames,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        stress_key=args.stress_key,
        min_distance=args.min_distance,
        overwrite=args.overwrite,
    )
    summary = {
        name: {k: entry["stats"][k] for k in ("frames", "atoms", "force_rms", "avg_num_neighbors")}
        | {"shards": len(entry["shards"])}
        for name, entry in meta["sets"].items()
    }
    print(json.dumps({"out": args.out, "sets": summary}, indent=1))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Install ``uenn-geo prepare``."""
    p = sub.add_parser(
        "prepare",
        help="stream structure files into HDF5 shards with training statistics",
        description="Read extended-XYZ (or other ASE-readable) files one frame at a time and "
        "write train/val/test HDF5 shards plus meta.json (species, E0s, force RMS, mean "
        "energy per atom, average neighbour count) into --out, atomically. Train on it with "
        "`uenn-geo train --data OUT`.",
    )
    p.add_argument("files", nargs="+", help="structure files with forces")
    p.add_argument("--out", required=True, help="the prepared directory to write")
    p.add_argument("--cutoff", type=float, default=5.0, help="A, for neighbour counts (5)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="(default: 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="(default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    p.add_argument("--shard-frames", type=int, default=50_000, help="frames per shard")
    for key in ("energy", "forces", "stress"):
        p.add_argument(f"--{key}-key", default=None, help=f"name of the {key}")
    p.add_argument("--min-distance", type=float, default=0.5, help="A; 0 disables the check")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)
