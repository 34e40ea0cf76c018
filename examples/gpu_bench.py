"""Force-field throughput on a GPU: atoms/s of direct forces on 10^3 to 10^6 argon atoms,
our model against SchNet in the same run (docs/scale.md).

What it measures: for each periodic fcc argon box (liquid density, cutoff 10.2 A) and each
model (``uenn``: UENNForceField with direct forces; ``uenn_compiled``; ``schnet``,
``schnet32``: PyG SchNet, all neighbours or the 32 nearest), the median wall time of one
force evaluation in float32 on the device, with and without building the neighbour list, and
the peak memory, through :func:`uenn_geo.experiments.bench.run_bench` (the same code as
``uenn-geo bench``). ``--tf32`` lets float32 matrix products use TF32 tensor cores (Ampere
and later). Sizes whose extrapolated memory exceeds half the device are skipped. The target
of issue 17: 10^7 atoms/s of direct forces on one H100/H200 at 10^6 atoms.

On a GPU (about 5 minutes on an H200):

    python examples/gpu_bench.py --device cuda --out gpu_bench.json
    python examples/gpu_bench.py --device cuda --tf32 --out gpu_bench_tf32.json

Without a GPU it runs the same code on the CPU with small boxes (a smoke test):

    python examples/gpu_bench.py --device cpu --sizes 256 2048
"""

from __future__ import annotations

import argparse

import torch

from uenn_geo.experiments.bench import BenchConfig, format_table, run_bench

#: 4 n^3 atoms: 1372, 10976, 108000, 1048576 (10^3 to 10^6)
GPU_SIZES = (1372, 10976, 108000, 1048576)
CPU_SIZES = (256, 2048)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="atoms, multiples of 4")
    p.add_argument("--models", nargs="+", default=["uenn", "schnet", "schnet32"])
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products (float32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file of the results")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a smoke test")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    sizes = args.sizes or (GPU_SIZES if args.device == "cuda" else CPU_SIZES)
    config = BenchConfig(
        sizes=tuple(sizes),
        dtypes=("float32",),
        models=tuple(args.models),
        devices=(args.device,),
        repeats=args.repeats,
        out=args.out,
    )
    report = run_bench(config)
    print(format_table(report))
    print(f"TF32: {'on' if args.tf32 else 'off'}; atoms/s = atoms / median seconds per call")


if __name__ == "__main__":
    main()
