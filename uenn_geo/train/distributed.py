r"""Data-parallel training on :mod:`torch.distributed`: one process per device, every one a rank.

``torchrun --nproc_per_node=N $(which uenn-geo) train ...`` (or ``srun`` with the SLURM
variables) starts ``N`` copies of the command; :func:`init_from_env` joins them into one
process group (gloo on the CPU, NCCL on GPUs) and the training loop then

* broadcasts rank 0's weights and buffers (so the fitted scales and E0s) to every rank
  before training (:func:`broadcast_state`) and averages the gradients after every
  ``backward`` in one all-reduce (:func:`average_gradients`): what
  :class:`~torch.nn.parallel.DistributedDataParallel` does, but outside the step, so that
  the step may be compiled (:func:`torch.compile`; DDP's hooks fire inside autograd's
  backward, which a compiled step with forces from the energy replaces) and so that
  parameters without a gradient in a step (an energy readout's bias under a force loss)
  need no special case,
* reads a disjoint shard of each epoch on every rank (:func:`train_batches`: a
  :class:`~torch.utils.data.DistributedSampler` seeded with the run's seed, ``set_epoch``
  each epoch); the batch size is per process, so an epoch takes :math:`1/N` of the steps,
* evaluates each rank on a contiguous, disjoint range of the validation or test frames,
  without padding, and adds the sums over ranks (:func:`error_table`, :func:`force_rmse`), so
  every frame counts exactly once,
* agrees on the loss, the clock and hence on every stop (:class:`StepClock`),
* writes files (checkpoint, log, model, metrics) on rank 0 only (:func:`is_main`).

In one process (no ``WORLD_SIZE`` or ``SLURM_NTASKS`` above 1) every function here is the
identity or delegates to the single-process code, which runs unchanged.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "init_from_env",
    "teardown",
    "is_distributed",
    "rank",
    "launched_rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "main_first",
    "broadcast_state",
    "average_gradients",
    "train_batches",
    "batches_per_epoch",
    "device_of",
    "rank_range",
    "all_reduce_sum",
    "agreed_seconds",
    "StepClock",
    "error_table",
    "force_rmse",
]


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group the environment describes; the device of this process.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``; under SLURM (``srun``) ``SLURM_PROCID``, ``SLURM_NTASKS`` and
    ``SLURM_LOCALID`` stand in for the first three, and ``MASTER_ADDR`` / ``MASTER_PORT``
    must be exported by the job script (defaults: 127.0.0.1 and 29500, one node). Without
    either, or with a world size of 1, nothing is initialised.

    Args:
        device: ``"cpu"``, ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``) or an explicit
            device; :obj:`None`: ``"cpu"``.
        timeout_s: how long a collective waits for the other ranks.
    """
    device = device or "cpu"
    size = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if size > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(_env_int("RANK", "SLURM_PROCID") or 0))
        os.environ.setdefault("WORLD_SIZE", str(size))
        os.environ.setdefault("LOCAL_RANK", str(_env_int("LOCAL_RANK", "SLURM_LOCALID") or 0))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    if device == "cuda":
        device = f"cuda:{local_rank()}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return torch.device(device)


def teardown(wait: bool = True) -> None:
    """Leave the process group, if one was joined: after a last barrier with ``wait``, at
    once on an error (the other ranks are stopped by torchrun or srun)."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_rank() -> int:
    """This process's rank as its launcher (torchrun, srun) set it, whether or not the group
    is joined (before :func:`init_from_env`, after :func:`teardown`); 0 in one process."""
    return _env_int("RANK", "SLURM_PROCID") or 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0


def is_main() -> bool:
    """Whether this process writes the files and the log (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_state(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DistributedDataParallel's
    constructor does)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, 0)


def average_gradients(model: nn.Module) -> None:
    """Every rank's gradients replaced by their mean over the ranks, in one all-reduce (what
    DistributedDataParallel does during ``backward``). A parameter without a gradient on a
    rank counts as zero there, and gets the mean wherever any rank had one (the same
    parameters step on every rank); one without a gradient anywhere keeps none."""
    if not is_distributed():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    like = params[0]
    parts = [like.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
    had = like.new_tensor([float(p.grad is not None) for p in params])
    flat = torch.cat([*(x.to(like.dtype) for x in parts), had])
    dist.all_reduce(flat)
    flat /= world_size()
    anyone = (flat[-len(params) :] > 0).tolist()
    start = 0
    for k, p in enumerate(params):
        mean = flat[start : start + p.numel()].view_as(p).to(p.dtype)
        start += p.numel()
        if not anyone[k]:
            continue
        if p.grad is None:
            p.grad = mean.clone()
        else:
            p.grad.copy_(mean)


def batches_per_epoch(n: int, batch_size: int | None) -> int:
    """Steps of one epoch on each rank (the sampler pads every rank to ``ceil(n / N)``)."""
    per_rank = math.ceil(n / world_size())
    return math.ceil(per_rank / (batch_size or per_rank or 1))


def device_of(model: Any) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def train_batches(
    data: Any,
    batch_size: int | None,
    generator: torch.Generator,
    seed: int,
    epoch: int,
    device: torch.device | None = None,
) -> Iterable[Any]:
    """The training batches of one epoch for this rank.

    One process: :func:`uenn_geo.train.dense.batches` (shuffled with ``generator``), or a
    DataLoader with ``data.num_workers`` worker processes when the data set asks for them
    (lazy on-disk data, :class:`~uenn_geo.data.hdf5.H5Frames`). Several ranks: a
    DistributedSampler (``seed``, ``set_epoch(epoch)``) gives each rank its shard. Batches
    are moved to ``device`` (default: where they are). A
    :class:`~uenn_geo.train.packing.PackedGraphs` in one process gives its padded batches of
    one shape, whose number (``len``) varies from epoch to epoch; with several ranks, every
    rank packs one order (``seed`` + ``epoch``) and takes every ``N``-th of its batches.
    """
    from uenn_geo.train.packing import PackedGraphs

    if isinstance(data, PackedGraphs):
        if not is_distributed():
            return data.batches(batch_size, True, generator, device)
        # every rank packs the same order (seed and epoch) and takes every N-th batch
        order = torch.Generator().manual_seed(seed + epoch)
        return data.batches(batch_size, True, order, device).shard(rank(), world_size())
    return _moved(_train_batches(data, batch_size, generator, seed, epoch), device)


def _moved(batches: Iterator[Any], device: torch.device | None) -> Iterator[Any]:
    for batch in batches:
        yield batch if device is None else batch.to(device)


def _train_batches(
    data: Any, batch_size: int | None, generator: torch.Generator, seed: int, epoch: int
) -> Iterator[Any]:
    from torch.utils.data import DistributedSampler

    from uenn_geo.train.dense import DenseForceData, StackedGraphs, batches

    workers = int(getattr(data, "num_workers", 0) or 0)
    if not is_distributed() and workers == 0:
        yield from batches(data, batch_size, True, generator)
        return
    n = len(data)
    size = batch_size or n
    if is_distributed():
        sampler: Any = DistributedSampler(data, shuffle=True, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
    else:
        sampler = _Permutation(n, generator)
    if isinstance(data, (DenseForceData, StackedGraphs)):
        order = torch.tensor(list(sampler), dtype=torch.long)
        for start in range(0, len(order), size):
            yield data._make(order[start : start + size])
        return
    yield from _loader(data, size, sampler, workers)


class _Permutation(torch.utils.data.Sampler):
    """A random order of ``n`` frames drawn as :class:`~torch.utils.data.RandomSampler` draws it
    (``torch.randperm`` from ``generator``: the same orders, epoch after epoch), held as a
    tensor (8 bytes a frame) and handed out in slices, not as a list of Python ints (about
    36 bytes a frame: 36 MB for 10^6 frames)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator)
        for start in range(0, self.n, 4096):
            yield from order[start : start + 4096].tolist()
        del order
        torch.randperm(self.n, generator=self.generator)  # RandomSampler draws a second one


def _loader(data: Any, batch_size: int, sampler: Any, workers: int) -> Iterator[Any]:
    """Batches of ``data`` collated by PyG, read by ``workers`` DataLoader processes.

    A worker hands its batch over as NumPy arrays (pickled by value through the pipe, about
    50 KB for 32 structures of 35 atoms) rather than as tensors, each of which torch would
    move through a shared-memory segment of its own (a PyG batch has about 30 with its slice
    tables): on 32 LJ clusters, 1.7 ms of the main process's time per batch instead of 9.5
    (docs/scale.md). The main process rebuilds the ``Batch`` around the same memory.
    """
    from torch.utils.data import DataLoader
    from torch_geometric.loader.dataloader import Collater

    if not workers:
        from torch_geometric.loader import DataLoader as PyGLoader

        yield from PyGLoader(data, batch_size=batch_size, sampler=sampler)
        return
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_ArrayCollater(Collater(data)),
        prefetch_factor=4,
    )
    for arrays in loader:
        yield _batch_of_arrays(arrays)


class _ArrayCollater:
    """PyG's collation, with the batch's tensors as NumPy arrays (see :func:`_loader`)."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        batch = self.collate(items)
        return {k: v.numpy() if isinstance(v, Tensor) else v for k, v in batch.to_dict().items()}


def _batch_of_arrays(arrays: dict[str, Any]) -> Any:
    from torch_geometric.data import Batch

    fields = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
    return Batch(**fields)


def rank_range(n: int) -> range:
    """This rank's contiguous, disjoint part of ``n`` evaluation frames (no padding)."""
    r, w = rank(), world_size()
    return range(r * n // w, (r + 1) * n // w)


def _part(data: Any) -> Any:
    """This rank's part of an evaluation set."""
    if not is_distributed():
        return data
    part = rank_range(len(data))
    index = torch.arange(part.start, part.stop)
    from uenn_geo.train.dense import DenseForceData

    if isinstance(data, DenseForceData):
        return DenseForceData(data.pos[index], data.forces[index])
    if isinstance(data, (list, tuple)):
        return [data[k] for k in part]
    return data[index]


def _eval_batches(data: Any, batch_size: int, device: torch.device) -> Iterator[Any]:
    from uenn_geo.train.dense import batches

    if len(data) == 0:
        return
    workers = int(getattr(data, "num_workers", 0) or 0)
    if workers:
        source: Any = _loader(data, batch_size, None, workers)
    else:
        source = batches(data, batch_size)
    for batch in source:
        yield batch.to(device)


def all_reduce_sum(values: list[float]) -> list[float]:
    """``values`` summed over the ranks (float64; the values themselves in one process)."""
    if not is_distributed():
        return list(values)
    buf = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(buf)
    return buf.tolist()


def agreed_seconds(seconds: float) -> float:
    """The ranks' mean of ``seconds``: one clock for every rank's limits and schedules."""
    if not is_distributed():
        return seconds
    return all_reduce_sum([seconds])[0] / world_size()


class StepClock:
    """Seconds since an epoch began, the same on every rank.

    In one process :meth:`now` reads the clock; with several ranks it is the mean of the
    ranks' clocks at the last :meth:`agree`, which also averages the loss over the ranks in
    the same all-reduce, so that stops (time limit, non-finite loss) and the learning rate
    schedule are decided alike everywhere.
    """

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.agreed = 0.0

    def now(self) -> float:
        if not is_distributed():
            return time.perf_counter() - self.t0
        return self.agreed

    def agree(self, loss: Tensor) -> Tensor:
        if not is_distributed():
            return loss
        w = world_size()
        mean_loss, seconds = all_reduce_sum([float(loss.detach()), time.perf_counter() - self.t0])
        self.agreed = seconds / w
        return torch.tensor(mean_loss / w, dtype=torch.float64)


@torch.no_grad()
def force_rmse(model: nn.Module, data: Any, batch_size: int) -> float:
    """The force RMSE (eV/A) over every frame of ``data`` once, ranks sharing the work; the
    same sums, batch by batch, as :func:`uenn_geo.train.loss.evaluate`."""
    was_training = model.training
    model.eval()
    sq, count = 0.0, 0
    try:
        for batch in _eval_batches(_part(data), batch_size, device_of(model)):
            diff = (model(batch).double() - batch.forces.double()).flatten()
            sq += diff.square().sum().item()
            count += diff.numel()
    finally:
        model.train(was_training)
    sq, count = all_reduce_sum([sq, float(count)])
    if count == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return math.sqrt(sq / count)


def error_table(model: nn.Module, data: Any, batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """:func:`uenn_geo.train.metrics.error_table` over every frame once, ranks sharing the
    frames (their running sums are gathered and added); batches go to the model's device."""
    from uenn_geo.train import metrics

    if not is_distributed() and device_of(model).type == "cpu" and not _workers(data):
        return metrics.error_table(model, data, batch_size)
    was_training = model.training
    model.eval()
    sums: dict[str, Any] = defaultdict(metrics._Sums)
    try:
        for batch in _eval_batches(_part(data), batch_size, device_of(model)):
            for sample in metrics._samples(model, batch):
                sums[metrics.ALL].add(sample)
                if sample["config_type"] is not None:
                    sums[sample["config_type"]].add(sample)
    finally:
        model.train(was_training)
    if is_distributed():
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, {k: vars(v) for k, v in sums.items()})
        sums = defaultdict(metrics._Sums)
        for part in parts:
            for key, fields in part.items():
                _merge(sums[key], fields)
    if not sums:
        raise ValueError("cannot evaluate on an empty data set")
    table = {metrics.ALL: sums[metrics.ALL].row()}
    types = [k for k in sums if k != metrics.ALL]
    if len(types) > 1:
        table.update({k: sums[k].row() for k in sorted(types)})
    return table


def _workers(data: Any) -> int:
    return int(getattr(data, "num_workers", 0) or 0)


def _merge(into: Any, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        setattr(into, name, getattr(into, name) + value)  # numbers add, lists concatenate
