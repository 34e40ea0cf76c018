"""Time the fused neighbour-sum kernels (uenn_geo.nn.kernels) call by call.

The four calls of the default ``UENNForceField`` on the benchmark's 864-atom argon box
(float32, cutoff 10.2 A, the calculator's filtered list): the forward and the backward of
each graph layer, with random node features and gradients. With ``--against OLD.cpp``
another source of the kernel (an earlier version, e.g.
``git show f64f0b8:uenn_geo/nn/neighbour_sums.cpp > old.cpp``) is built beside the current
one and the calls are interleaved, so that both meet the same machine::

    python examples/kernel_timing.py --threads 1 2 --against old.cpp

The earlier source is built with the flags of its time (``--against-flags``: ``-O3`` and the
instruction set; no OpenMP, no ``-fno-tree-vectorize``). Prints the best and median of
``--calls`` calls in ms, and the largest difference of the two builds' results relative to
the largest value.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch


def build(source: str, flags: list[str], openmp: bool):
    from torch.utils.cpp_extension import load

    extra = ["-fopenmp"] if openmp else []
    key = hashlib.md5((open(source).read() + " ".join(flags + extra)).encode()).hexdigest()[:8]
    return load(f"uenn_geo_timing_{key}", [source], extra_cflags=flags + extra,
                extra_ldflags=extra)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--against", default=None, help="another kernel source to compare")
    parser.add_argument("--against-flags", nargs="*", default=None)
    args = parser.parse_args()

    from uenn_geo.engines.evaluator import NeighbourCache
    from uenn_geo.experiments.bench.systems import make_system
    from uenn_geo.models.forcefield import UENNForceField
    from uenn_geo.nn import kernels

    if not kernels.available():
        raise SystemExit(f"the kernel is not available here: {kernels._error}")
    builds = {"current": kernels._extension}
    if args.against:
        _, flags = kernels._compiler_flags()
        old_flags = args.against_flags
        if old_flags is None:
            old_flags = [f for f in flags if f != "-fno-tree-vectorize"]
        builds = {"against": build(args.against, old_flags, openmp=False), **builds}

    system = make_system("argon", 864, "cpu", "float32", 10.2)
    model = UENNForceField(cutoff=10.2, dtype="float32", atomic_numbers=[18]).eval()
    edges = NeighbourCache(10.2, 1.0)(system.pos, system.cell[0], None, chunked=False)
    pos, n = system.pos, system.pos.shape[0]
    torch.manual_seed(0)
    first, second = model.convs
    inputs = {first: (torch.ones(n, 1), None), second: (torch.randn(n, 9), torch.randn(n, 3, 8))}

    def call_args(conv, e):
        v, x = inputs[conv]
        rows = (True, True, conv.centre_vectors, conv.bond_vectors)
        if e is not builds.get("against"):  # sources before bond_cubes took one flag less
            rows += (conv.bond_cubes,)
        return (pos, edges.index, edges.shifts, v, x, conv.basis.rs, conv.basis.eta,
                conv.cutoff, conv.eps, *rows)  # fmt: skip

    calls = {}
    for name, conv in (("layer 1", first), ("layer 2", second)):
        sums = kernels._extension.neighbour_sums(*call_args(conv, kernels._extension))
        g = torch.randn(sums.shape)
        calls[f"forward, {name}"] = lambda e, c=conv: [e.neighbour_sums(*call_args(c, e))]
        calls[f"backward, {name}"] = lambda e, c=conv, g=g: e.neighbour_sums_backward(
            g, *call_args(c, e)
        )

    print(f"864 argon atoms, {edges.num_edges} edges, float32; ms, best / median of {args.calls}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for what, fn in calls.items():
            outs = {k: fn(e) for k, e in builds.items()}
            times = {k: [] for k in builds}
            for _ in range(args.calls):
                for k, e in builds.items():
                    start = time.perf_counter()
                    fn(e)
                    times[k].append(1000 * (time.perf_counter() - start))
            line = f"{threads} thread(s)  {what:18s}"
            for k, ts in times.items():
                ts.sort()
                line += f"  {k} {ts[0]:6.2f} / {ts[len(ts) // 2]:6.2f}"
            if len(builds) == 2:
                a, b = outs.values()
                diff = max(
                    float((x - y).abs().max() / y.abs().max())
                    for x, y in zip(a, b, strict=True)
                    if y.numel()
                )
                line += f"  difference {diff:.1e}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
