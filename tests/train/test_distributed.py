"""Data-parallel training with torch.distributed (gloo, 2 processes under torchrun) against
one process with twice the batch: the same first gradient (the ranks' gradients averaged),
the same validation errors within a tolerance, every validation frame counted once, files
from rank 0, resume with 1 process; a compiled run on packed batches keeps the ranks' weights
equal; a model with parameters that the force loss leaves without gradients trains."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch_geometric.data import Batch, Data
    from uenn_geo.models import UENNForceField
    from uenn_geo.train import TrainConfig, distributed, train
    from uenn_geo.train.loss import LossFunction

    torch.set_num_threads(1)

    def graphs(n, seed):  # clusters of 8 LJ argon atoms (equal sizes: the means compare)
        g = torch.Generator().manual_seed(seed)
        grid = torch.stack(torch.meshgrid(*[torch.arange(2.0)] * 3, indexing="ij"), -1)
        base = grid.reshape(-1, 3).double() * 3.9
        out = []
        for _ in range(n):
            pos = base + 0.15 * torch.randn(8, 3, generator=g, dtype=torch.float64)
            d = pos[:, None] - pos[None]
            r2 = (d * d).sum(-1) + torch.eye(8, dtype=torch.float64) * 1e9
            sr6 = (3.4**2 / r2) ** 3
            f = (24 * 0.0104 * (2 * sr6 * sr6 - sr6) / r2)[..., None].mul(d).sum(1)
            out.append(Data(pos=pos.float(), z=torch.full((8,), 18), forces=f.float()))
        return out

    out, batch, epochs, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    distributed.init_from_env("cpu")
    rank, size = distributed.rank(), distributed.world_size()
    train_set, val = graphs(32, 1), graphs(7, 2)
    torch.manual_seed(0)
    model = UENNForceField(
        cutoff=5.0, hidden_channels=8, num_blocks=1, mlp_channels=(16,), pair_term=False
    )
    model.fit_scales(train_set)
    # the first step's gradient: rank r takes frames [r B, (r + 1) B) of the first 2 B
    LossFunction(model).backward(Batch.from_data_list(train_set[rank * batch : (rank + 1) * batch]))
    own = torch.cat([p.grad.flatten() for p in model.parameters()]).tolist()
    distributed.average_gradients(model)
    grad = torch.cat([p.grad.flatten() for p in model.parameters()]).tolist()
    model.zero_grad(set_to_none=True)
    cfg = TrainConfig(max_epochs=epochs, batch_size=batch, lr=1e-3, progress=False)
    result = train(model, train_set, val, cfg, out, resume=resume == "resume")
    counted = distributed.error_table(model, val, 3)["all"]["structures"]
    compiled = {}
    if size > 1 and resume == "restart":  # compiled on packed batches, gradients by hand
        from uenn_geo.neighbors import RadiusGraph
        from uenn_geo.train.packing import PackedGraphs

        torch.manual_seed(rank)  # different weights on each rank until rank 0's are sent
        second = UENNForceField(
            cutoff=5.0, hidden_channels=8, num_blocks=1, mlp_channels=(16,), pair_term=False
        )
        second.fit_scales(train_set)
        packed = PackedGraphs([RadiusGraph(5.0)(g) for g in train_set], 5.0)
        # by time (its limit counts the compilation, a few seconds here): each rank compiles
        # in its own time, which the schedule leaves out, and the ranks must agree on it
        cfg = TrainConfig(time_limit=25, batch_size=4, lr=1e-3, progress=False, compile=True,
                          static_shapes=True)
        run = train(second, packed, val, cfg, None)
        weights = torch.cat([p.detach().flatten() for p in second.parameters()])
        compiled = {"ran": run.compiled, "steps": run.steps, "history": run.history,
                    "weights": weights.tolist(),
                    "shard": len(packed.batches(4, True, torch.Generator().manual_seed(0)))}
    schnet = {}
    if size > 1 and resume == "restart":  # its last bias gets no gradient from a force loss
        from uenn_geo.models import SchNetForceField

        net = SchNetForceField(cutoff=5.0, hidden_channels=8, num_filters=8,
                               num_interactions=1, num_gaussians=8)
        run = train(net, train_set, val, TrainConfig(max_epochs=1, batch_size=4,
                                                     progress=False), None)
        schnet = {"steps": run.steps,
                  "weights": torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()}
    with open(f"{out}/result-{size}-{rank}.json", "w") as f:
        json.dump({"grad": grad, "own": own, "history": result.history,
                   "counted": counted, "epochs": result.epochs, "steps": result.steps,
                   "compiled": compiled, "schnet": schnet}, f)
    distributed.teardown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, out, procs, batch, epochs, resume="restart"):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
        cmd += [f"--master_port={_free_port()}", str(script)]
    cmd += [str(out), str(batch), str(epochs), resume]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"result-{procs}-{r}.json").read_text()) for r in range(procs)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    two = _run(tmp, tmp / "two", 2, 4, 3)
    one = _run(tmp, tmp / "one", 1, 8, 3)
    return tmp, one, two


def test_first_gradient_equals_one_process_with_twice_the_batch(runs):
    _, one, two = runs
    g1, g2 = one[0]["grad"], two[0]["grad"]
    assert two[1]["grad"] == g2  # averaged: every rank holds the same gradient
    assert two[0]["own"] != two[1]["own"]  # which it did not before
    scale = max(abs(v) for v in g1)
    assert scale > 0
    assert max(abs(a - b) for a, b in zip(g1, g2)) < 1e-5 * scale


def test_compiled_step_on_packed_shards_keeps_the_ranks_in_step(runs):
    _, _, two = runs
    first, second = two[0]["compiled"], two[1]["compiled"]
    assert first["ran"] and second["ran"]  # torch.compile ran under torchrun
    assert first["weights"] == second["weights"]  # rank 0's start, the same averaged steps
    assert first["steps"] == second["steps"] >= 2 * (first["shard"] // 2)  # two epochs at least
    rmse = [row["val_force_rmse"] for row in first["history"]]
    assert rmse == [row["val_force_rmse"] for row in second["history"]]
    assert rmse[-1] < rmse[0]


def test_validation_errors_match_one_process_and_count_every_frame_once(runs):
    _, one, two = runs

    def agreed(history):  # the epoch's training time and data wait: each rank's own clock
        own = ("epoch_time_s", "data_wait_s")
        return [{k: v for k, v in row.items() if k not in own} for row in history]

    assert agreed(two[0]["history"]) == agreed(two[1]["history"])  # ranks agree
    assert one[0]["steps"] == two[0]["steps"] == 3 * 4  # 32 frames, 8 per step overall
    v1 = [row["val_force_rmse"] for row in one[0]["history"]]
    v2 = [row["val_force_rmse"] for row in two[0]["history"]]
    for a, b in zip(v1, v2):
        assert b == pytest.approx(a, rel=0.02)
    assert abs(v1[-1] - v1[0]) > 0.02 * v1[0]  # training moved the error more than that
    # 7 validation frames on 2 ranks: a padded sampler would count 8
    assert two[0]["counted"] == two[1]["counted"] == one[0]["counted"] == 7


def test_files_from_rank_0_and_resume_with_one_process(runs):
    tmp, _, two = runs
    out = tmp / "two"
    assert (out / "checkpoint.pt").is_file() and (out / "model.pt").is_file()
    assert len((out / "log.csv").read_text().strip().splitlines()) == 1 + 3
    assert not list(out.glob("*.tmp*"))
    resumed = _run(tmp, out, 1, 4, 4, resume="resume")[0]
    assert resumed["epochs"] == 4
    assert resumed["history"][:3] == two[0]["history"]
    assert resumed["steps"] == two[0]["steps"] + 32 // 4  # one process: 8 steps an epoch


def test_worker_batches_equal_pyg_collation():
    # Worker processes hand batches over as arrays; the main process gets the Batch that
    # PyG's own collation gives (values, dtypes, non-tensor fields, num_graphs).
    import torch
    from torch_geometric.data import Batch, Data

    from uenn_geo.train.distributed import _loader

    gen = torch.Generator().manual_seed(0)
    frames = [
        Data(pos=torch.randn(n, 3, dtype=torch.float64, generator=gen),
             z=torch.randint(1, 9, (n,), generator=gen), energy=torch.tensor([float(n)]),
             pbc=torch.tensor([[False, True, False]]), config_type=f"t{n % 2}")
        for n in (3, 5, 4, 6, 2)
    ]  # fmt: skip
    batches = list(_loader(frames, 2, range(len(frames)), workers=1))
    assert [b.num_graphs for b in batches] == [2, 2, 1]
    for k, got in enumerate(batches):
        want = Batch.from_data_list(frames[2 * k : 2 * k + 2])
        assert isinstance(got, Batch)
        assert sorted(got.keys()) == sorted(want.keys())
        for key in want.keys():
            if isinstance(want[key], torch.Tensor):
                assert got[key].dtype == want[key].dtype
                assert torch.equal(got[key], want[key]), key
            else:
                assert got[key] == want[key], key


def test_permutation_is_random_sampler_order():
    # The one-process sampler keeps the order as a tensor, not a list of ints, and draws
    # exactly RandomSampler's orders (resumed runs and old checkpoints see the same epochs).
    import torch

    from uenn_geo.train.distributed import _Permutation

    mine, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sampler = torch.utils.data.RandomSampler(range(9000), generator=theirs)
    for _ in range(3):
        order = list(_Permutation(9000, mine))
        assert order == list(sampler)
        assert sorted(order) == list(range(9000))


def test_parameters_without_gradients_train_on_several_ranks(runs):
    _, _, two = runs  # DistributedDataParallel refused this model (an unused parameter)
    assert two[0]["schnet"]["steps"] == 4  # 32 frames, 4 a step on each of 2 ranks
    assert two[0]["schnet"]["weights"] == two[1]["schnet"]["weights"]
