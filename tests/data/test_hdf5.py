"""Prepared HDF5 shards: statistics equal to an in-memory computation, frames equal to the
file's, and a lazy training round trip with a worker process."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("h5py")

from uenn_geo.data import read_frames  # noqa: E402
from uenn_geo.data.e0s import is_isolated_atom  # noqa: E402
from uenn_geo.data.hdf5 import H5Frames, prepare, read_meta  # noqa: E402
from uenn_geo.files import read_csv  # noqa: E402
from uenn_geo.models.scales import fit_force_energy_scales  # noqa: E402
from uenn_geo.neighbors import radius_graph  # noqa: E402

EXAMPLE = Path(__file__).parents[2] / "examples" / "make_big_dataset.py"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_big_dataset", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("h5")
    module.write(str(tmp / "set.xyz"), 60, seed=3)
    meta = prepare(tmp / "set.xyz", tmp / "prep", cutoff=5.0, val_fraction=0.25, shard_frames=16)
    return tmp, meta


def test_statistics_equal_in_memory(prepared):
    tmp, meta = prepared
    frames = read_frames(tmp / "set.xyz")
    assert sum(is_isolated_atom(f) for f in frames) == 2
    assert meta["isolated_e0s"] == {"18": 0.0, "36": 0.0}
    train = H5Frames(tmp / "prep", "train")
    stats = train.stats
    graphs = [train[k] for k in range(len(train))]
    assert stats["frames"] == len(graphs) and len(train) + len(H5Frames(tmp / "prep", "val")) == 60
    assert len(meta["sets"]["train"]["shards"]) == math.ceil(len(graphs) / 16)
    species = sorted({int(z) for g in graphs for z in g.z.tolist()})
    assert stats["species"] == species == [18, 36]
    scale, shift = fit_force_energy_scales(
        graphs, lambda g: torch.searchsorted(torch.tensor(species), g.z), len(species)
    )
    assert stats["force_rms"] == pytest.approx(scale, rel=1e-12)
    lstsq = [stats["e0s_lstsq"][str(z)] for z in species]
    assert lstsq == pytest.approx(shift.tolist(), rel=1e-7, abs=1e-9)
    per_atom = [float(g.energy) / g.num_nodes for g in graphs]
    assert stats["mean_energy_per_atom"] == pytest.approx(sum(per_atom) / len(per_atom))
    edges = sum(radius_graph(g.pos, 5.0, cell=g.cell, pbc=g.pbc)[0].shape[1] for g in graphs)
    assert stats["avg_num_neighbors"] == pytest.approx(edges / stats["atoms"])
    assert edges > 0


def test_frames_equal_the_file(prepared):
    tmp, _ = prepared
    frames = [f for f in read_frames(tmp / "set.xyz") if not is_isolated_atom(f)]
    lazy = [H5Frames(tmp / "prep", s) for s in ("train", "val")]
    read = {tuple(g.pos[0].tolist()): g for part in lazy for g in part}
    assert len(read) == len(frames)
    for f in frames:
        g = read[tuple(f.pos[0].tolist())]
        for key in ("pos", "z", "forces", "energy", "cell", "pbc"):
            assert torch.equal(getattr(g, key), getattr(f, key)), key
        assert g.config_type == f.config_type


def test_prepare_refuses_to_overwrite_and_leaves_no_partial(prepared, tmp_path):
    tmp, _ = prepared
    with pytest.raises(ValueError, match="exists"):
        prepare(tmp / "set.xyz", tmp / "prep")
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nProperties=species:S:1:pos:R:3 energy=1\nAr 0 0 0\nAr 4 0 0\n")
    with pytest.raises(ValueError, match="forces"):
        prepare(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))
    assert read_meta(tmp / "prep")["format_version"] == 1


def test_train_from_prepared_directory_streams(prepared, tmp_path):
    from uenn_geo.cli.train import TrainJob, run_training
    from uenn_geo.models import load_model

    tmp, meta = prepared
    job = TrainJob(
        data=str(tmp / "prep"), out=str(tmp_path / "run"), max_epochs=2, batch_size=8,
        num_workers=1, progress=False, time_limit=None,
        model_kwargs={"hidden_channels": 8, "num_blocks": 1, "mlp_channels": [16]},
    )  # fmt: skip
    metrics = run_training(job)
    assert metrics["structures"] == {"train": meta["sets"]["train"]["stats"]["frames"],
                                     "val": meta["sets"]["val"]["stats"]["frames"]}  # fmt: skip
    assert metrics["errors"]["validation"]["all"]["structures"] == metrics["structures"]["val"]
    assert metrics["epochs"] == 2 and math.isfinite(metrics["best_val_force_rmse"])
    for row in read_csv(tmp_path / "run" / "log.csv"):  # the worker's start counts as wait
        assert 0 < float(row["data_wait_s"]) <= float(row["epoch_time_s"])
    model = load_model(tmp_path / "run" / "model.pt")
    stats = meta["sets"]["train"]["stats"]
    assert float(model.force_scale) == pytest.approx(stats["force_rms"], rel=1e-6)
    assert model.config["atomic_numbers"] == stats["species"]


def test_chunked_checks_and_counts_equal_a_search_per_frame(prepared, tmp_path, monkeypatch):
    """Prepare checks distances and counts neighbours for chunks of frames at once and packs
    frames before writing them: with chunks of 4 frames, packs of 3 and periodic frames among
    the free ones, the frames read back equal the file's, the count is that of one search
    per frame, and a pair too close is reported with its own frame and atoms."""
    import ase.io

    from uenn_geo.data import hdf5

    tmp, _ = prepared
    atoms = list(ase.io.iread(tmp / "set.xyz", index=":"))[:20]
    for k in (5, 6, 11):  # periodic images 4 A apart: edges across the boundary
        atoms[k].cell, atoms[k].pbc = [[20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]], True
    ase.io.write(tmp_path / "mixed.xyz", atoms, format="extxyz")
    monkeypatch.setattr(hdf5, "CHUNK_FRAMES", 4)
    monkeypatch.setattr(hdf5, "PACK_FRAMES", 3)  # shards written from several packs
    meta = prepare(tmp_path / "mixed.xyz", tmp_path / "prep", val_fraction=0.0, shard_frames=8)
    graphs = [g for g in read_frames(tmp_path / "mixed.xyz") if not is_isolated_atom(g)]
    lazy = H5Frames(tmp_path / "prep", "train")
    assert len(lazy) == len(graphs) == 18
    for g, h in zip(graphs, lazy, strict=True):
        for key in ("pos", "z", "forces", "energy", "cell", "pbc"):
            assert torch.equal(getattr(g, key), getattr(h, key)), key
    per_frame = [radius_graph(g.pos, 5.0, cell=g.cell, pbc=g.pbc)[0].shape[1] for g in graphs]
    free = [radius_graph(g.pos, 5.0)[0].shape[1] for g in graphs]
    assert meta["sets"]["train"]["stats"]["edges"] == sum(per_frame) > sum(free)
    atoms[13].positions[1] = atoms[13].positions[0] + [0.1, 0.0, 0.0]
    ase.io.write(tmp_path / "close.xyz", atoms, format="extxyz")
    with pytest.raises(ValueError, match=r"close.xyz, frame 13: atoms 0 and 1 are 0.1 Angstrom"):
        prepare(tmp_path / "close.xyz", tmp_path / "close")
    assert not (tmp_path / "close").exists()
