"""Time one training step of `uenn-geo train`'s model: eager, compiled for any shape, and
compiled on packed batches of one shape (docs/training.md, "Structures of many sizes").

The model, batch size and neighbour lists are those that `uenn-geo train` gives the file; each
variant runs the same structures (packed batches hold the structures of the plain batches
they replace, plus padding), and the variants alternate in rounds, so that the load of the
machine hits them alike. Each compiled variant compiles on its first step (reported).

    python examples/training_step_speed.py --data datasets/emt_copper/emt_copper_n3000_seed0.extxyz
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from torch_geometric.data import Batch

from uenn_geo.cli import build_parser, data_stats
from uenn_geo.cli import train_job as tj
from uenn_geo.cli.train import job_from_args
from uenn_geo.models import UENNForceField
from uenn_geo.train.loss import LossFunction
from uenn_geo.train.packing import PackedGraphs, chunk_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="steps a round and variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args, train_args = p.parse_known_args()
    torch.set_num_threads(args.threads)
    job = job_from_args(build_parser().parse_args(["train", *train_args]))
    sets = tj._load_sets(job)
    mean_atoms = data_stats.mean_atoms(sets.train)
    job = replace(job, batch_size=job.resolved_batch_size(sets.from_file, mean_atoms))
    energies = getattr(sets.train[0], "energy", None) is not None
    model = tj._build_model(job, sets, energies, mean_atoms)
    for data in (sets.train, sets.val):
        data.transform = tj._transform(job, model)
    sets = tj._with_edges(sets, model.cutoff)
    tj._fit_scales(model, job.model, sets.train)
    cfg = tj._train_config(job, model, energies, mean_atoms, True, sets.from_file)
    if not PackedGraphs.fits(sets.train):
        raise SystemExit("the neighbour lists were not stored (a set too large): no packing")
    chunk = chunk_size(sets.train) if isinstance(model, UENNForceField) else None
    packed = PackedGraphs(sets.train, model.cutoff, chunk)
    gen = torch.Generator().manual_seed(0)
    epoch = packed.batches(cfg.batch_size, True, gen)
    groups = epoch.groups[: args.steps]
    plain = [Batch.from_data_list([sets.train[i] for i in g]) for g in groups]
    padded = [packed.make(g, epoch.room) for g in groups]
    room = epoch.room
    print(
        f"{len(sets.train)} structures, {mean_atoms:.1f} atoms on average; batches of "
        f"{cfg.batch_size}; packed: {room.atoms} atoms, {room.edges} edges, {room.graphs} "
        f"structures a batch (chunks of {chunk}), "
        f"{sum(b.num_nodes for b in plain) / (len(plain) * room.atoms):.0%} of the atoms real"
    )
    weight = cfg.energy_weight
    variants = {
        "eager": (LossFunction(model, weight), plain),
        "compiled, any shape": (LossFunction(model, weight, compile=True), plain),
        "compiled, packed": (LossFunction(model, weight, compile=True, static_shapes=True), padded),
    }
    model.train()
    for name, (loss_fn, batches) in variants.items():
        start = time.perf_counter()
        model.zero_grad()
        loss_fn.backward(batches[0])
        print(f"{name}: first step {time.perf_counter() - start:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (loss_fn, batches) in variants.items():
            start = time.perf_counter()
            for batch in batches:
                model.zero_grad()
                loss_fn.backward(batch)
            times[name].append((time.perf_counter() - start) / len(batches))
    for name, values in times.items():
        print(f"{name}: {1000 * statistics.median(values):.1f} ms a step (median of rounds)")


if __name__ == "__main__":
    main()
