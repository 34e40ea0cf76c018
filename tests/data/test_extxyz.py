import os

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.loader import DataLoader

import uenn_geo.data.extxyz as extxyz
from uenn_geo.data.clusters import fcc_sites
from uenn_geo.data.extxyz import ExtXYZDataset, file_sha1, read_frames, write_extxyz
from uenn_geo.data.lj import lennard_jones, lennard_jones_pairs
from uenn_geo.neighbors import radius_graph

# positions and forces go through ASE's 8-decimal format
ATOL = 1e-8


def cluster_atoms(n, seed, symbol="Ar"):
    g = torch.Generator().manual_seed(seed)
    pos = fcc_sites(n, center=torch.rand(3, generator=g, dtype=torch.float64) * 5)
    pos = pos + 0.1 * torch.randn(pos.shape, generator=g, dtype=torch.float64)
    energy, forces = lennard_jones(pos)
    atoms = ase.Atoms(f"{symbol}{n}", positions=pos.numpy())
    atoms.calc = SinglePointCalculator(atoms, energy=energy.item(), forces=forces.numpy())
    return atoms


def periodic_atoms():
    # a 2x2x2 fcc argon crystal (32 atoms), slightly displaced, with exact periodic LJ forces
    a = 5.4
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    cells = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    pos = ((cells + basis) * a).reshape(-1, 3)
    pos = pos + 0.05 * np.random.default_rng(0).standard_normal(pos.shape)
    cell = np.eye(3) * 2 * a
    p, c = torch.tensor(pos), torch.tensor(cell)
    edge_index, shifts = radius_graph(p, 8.0, cell=c, pbc=torch.ones(3, dtype=torch.bool))
    energy, forces = lennard_jones_pairs(p, edge_index, shifts, cutoff=8.0)
    atoms = ase.Atoms("Ar32", positions=pos, cell=cell, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=energy.item(), forces=forces.numpy())
    return atoms


def frames():
    return [cluster_atoms(4, 0), cluster_atoms(13, 1), periodic_atoms(), cluster_atoms(7, 2, "Ne")]


def write(path, images):
    ase.io.write(path, images, format="extxyz")
    return str(path)


def test_round_trip(tmp_path):
    images = frames()
    path = write(tmp_path / "lj.extxyz", images)
    ds = ExtXYZDataset(path, root=str(tmp_path / "ds"), log=False)
    assert len(ds) == 4
    for atoms, data in zip(images, ds):
        n = len(atoms)
        assert data.pos.dtype == data.forces.dtype == data.cell.dtype == torch.float64
        assert data.z.dtype == torch.long and data.z.tolist() == atoms.numbers.tolist()
        assert data.num_atoms.tolist() == [n]
        assert data.cell.shape == (1, 3, 3) and data.pbc.shape == (1, 3)
        assert data.pbc.dtype == torch.bool
        np.testing.assert_allclose(data.pos.numpy(), atoms.positions, rtol=0, atol=ATOL)
        np.testing.assert_allclose(
            data.forces.numpy(), atoms.calc.results["forces"], rtol=0, atol=ATOL
        )
        assert data.energy.item() == atoms.calc.results["energy"]  # written in full precision
        np.testing.assert_array_equal(data.cell[0].numpy(), atoms.cell.array)
        assert data.pbc[0].tolist() == atoms.pbc.tolist()
    assert ds[2].pbc.all() and not ds[0].pbc.any() and ds[0].cell.eq(0).all()
    assert ds[3].z.tolist() == [10] * 7
    # the forces read back are the exact LJ forces of the positions read back
    torch.testing.assert_close(ds[1].forces, lennard_jones(ds[1].pos)[1], rtol=0, atol=1e-7)


def test_write_extxyz_round_trip(tmp_path):
    ds = ExtXYZDataset(write(tmp_path / "a.xyz", frames()), root=str(tmp_path / "a"), log=False)
    out = tmp_path / "b.xyz"
    write_extxyz(out, ds)
    again = ExtXYZDataset(str(out), root=str(tmp_path / "b"), log=False)
    assert len(again) == len(ds)
    for x, y in zip(ds, again):
        for key in ("z", "pbc", "num_atoms", "cell", "energy"):
            assert torch.equal(x[key], y[key]), key
        torch.testing.assert_close(x.pos, y.pos, rtol=0, atol=ATOL)
        torch.testing.assert_close(x.forces, y.forces, rtol=0, atol=ATOL)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="graph 0"):
        write_extxyz(tmp_path / "c.xyz", [ds[0].clone().update({"z": None})])


def test_custom_keys_and_no_energy(tmp_path):
    images = []
    for atoms in frames()[:2]:
        plain = ase.Atoms(atoms.numbers, positions=atoms.positions)
        plain.info["REF_energy"] = atoms.calc.results["energy"]
        plain.arrays["REF_forces"] = atoms.calc.results["forces"]
        images.append(plain)
    path = write(tmp_path / "ref.xyz", images)
    ds = ExtXYZDataset(
        path, root=str(tmp_path / "r"), energy_key="REF_energy", forces_key="REF_forces", log=False
    )
    assert "eREF_energy_fREF_forces" in ds.processed_file_names
    assert ds[1].energy.item() == images[1].info["REF_energy"]
    np.testing.assert_allclose(ds[1].forces.numpy(), images[1].arrays["REF_forces"], atol=ATOL)
    # forces but no energy anywhere: no energy attribute at all
    no_energy = ExtXYZDataset(path, root=str(tmp_path / "n"), forces_key="REF_forces", log=False)
    assert all("energy" not in d for d in no_energy)
    assert next(iter(DataLoader(no_energy, batch_size=2))).forces.shape == (17, 3)
    with pytest.raises(ValueError, match=r"frame 0: no forces"):
        ExtXYZDataset(path, root=str(tmp_path / "f"), log=False)


def test_default_root_and_cache_invalidation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "train.extxyz", frames()[:2])
    first = ExtXYZDataset(path, log=False)
    assert os.path.samefile(first.root, tmp_path / "datasets" / "extxyz" / "train")
    sha = file_sha1(path)
    assert first.processed_file_names == f"train_{sha[:12]}_v2_eauto_fauto_sauto_dmin0.5.pt"
    assert os.path.exists(first.processed_paths[0])

    def boom(*args, **kwargs):
        raise RuntimeError("file read although the cache is valid")

    monkeypatch.setattr(extxyz, "read_frames", boom)
    again = ExtXYZDataset(path, log=False)  # same bytes: loaded from the cache
    assert torch.equal(again._data.pos, first._data.pos)
    with pytest.raises(RuntimeError, match="file read"):  # another option: another file
        ExtXYZDataset(path, min_distance=0.4, log=False)
    write(tmp_path / "train.extxyz", frames()[1:3])  # the file changes
    with pytest.raises(RuntimeError, match="file read"):
        ExtXYZDataset(path, log=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    changed = ExtXYZDataset(path, log=False)
    assert changed.processed_file_names != first.processed_file_names
    assert len(changed) == 2 and changed[1].pbc.all()
    assert not torch.equal(changed[0].pos, first[0].pos)


def test_errors_name_file_and_frame(tmp_path):
    def check(images, match, **kwargs):
        path = write(tmp_path / "bad.xyz", images)
        with pytest.raises(ValueError, match=match) as info:
            read_frames(path, **kwargs)
        assert "bad.xyz" in str(info.value)

    good = frames()
    # missing forces in frame 2
    bare = ase.Atoms("Ar2", positions=[[0, 0, 0], [4, 0, 0]])
    bare.calc = SinglePointCalculator(bare, energy=-0.01)
    check([good[0], good[1], bare], r"frame 2: no forces")
    # energy missing in one frame only
    no_e = good[1].copy()
    no_e.calc = SinglePointCalculator(no_e, forces=good[1].calc.results["forces"])
    check([good[0], no_e, good[3]], r"frame 1: no energy .* frame 0 has one")
    # NaN in positions, forces and energy
    for field in ("positions", "forces", "energy"):
        bad = good[1].copy()
        results = dict(good[1].calc.results)
        if field == "positions":
            bad.positions[3, 1] = np.nan
        elif field == "forces":
            results["forces"] = results["forces"].copy()
            results["forces"][5, 0] = np.inf
        else:
            results["energy"] = np.nan
        bad.calc = SinglePointCalculator(bad, **results)
        check([good[0], bad], rf"frame 1: non-finite {field}")
    # overlapping atoms directly, and through a periodic image only
    close = ase.Atoms("Ar2", positions=[[0, 0, 0], [0.3, 0, 0]])
    close.calc = SinglePointCalculator(close, forces=np.zeros((2, 3)), energy=0.0)
    check([good[0], close], r"frame 1: atoms 0 and 1 are 0.3 Angstrom apart, closer")
    across = ase.Atoms("Ar2", positions=[[0.1, 5, 5], [9.8, 5, 5]], cell=[10, 10, 10], pbc=True)
    across.calc = SinglePointCalculator(across, forces=np.zeros((2, 3)), energy=0.0)
    check([across], r"frame 0: atoms 0 and 1 are 0.3 Angstrom apart \(periodic images\)")
    free = across.copy()  # the same pair without periodicity is far apart: accepted
    free.pbc = False
    free.calc = SinglePointCalculator(free, forces=np.zeros((2, 3)), energy=0.0)
    path = write(tmp_path / "ok.xyz", [free])
    assert len(read_frames(path)) == 1
    assert len(read_frames(path, min_distance=0.0)) == 1
    tiny = ase.Atoms("Ar", positions=[[0, 0, 0]], cell=[0.4, 5, 5], pbc=True)  # own image
    tiny.calc = SinglePointCalculator(tiny, forces=np.zeros((1, 3)), energy=0.0)
    check([tiny], r"frame 0: atoms 0 and 0 are 0.4 Angstrom apart \(periodic images\)")
    # forces of the wrong shape
    right = ase.Atoms("Ar3", positions=[[0, 0, 0], [4, 0, 0], [0, 4, 0]])
    right.arrays["REF_forces"] = np.zeros((3, 3))
    wrong = right.copy()
    del wrong.arrays["REF_forces"]
    wrong.arrays["REF_forces"] = np.zeros((3, 2))
    check([right, wrong], r"frame 1: expected forces of shape \(3, 3\)", forces_key="REF_forces")
    with pytest.raises(ValueError, match="min_distance"):
        read_frames(path, min_distance=-1.0)
    with pytest.raises(FileNotFoundError, match="missing.xyz"):
        ExtXYZDataset(tmp_path / "missing.xyz", log=False)


def test_zero_cell_is_a_free_cluster():
    # what the data set stores for clusters (zero cell, pbc all False) is treated as free
    pos = fcc_sites(20) + 0.1 * torch.randn(20, 3, dtype=torch.float64)
    free = radius_graph(pos, 5.0)
    stored = radius_graph(
        pos, 5.0, cell=torch.zeros(1, 3, 3, dtype=torch.float64), pbc=torch.zeros(1, 3).bool()
    )
    assert torch.equal(free[0], stored[0]) and torch.equal(free[1], stored[1])
    assert stored[0].shape[1] > 0 and stored[1].eq(0).all()


def test_dataloader_collates_cells(tmp_path):
    ds = ExtXYZDataset(write(tmp_path / "lj.xyz", frames()), root=str(tmp_path / "d"), log=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.num_graphs == 4
    assert batch.cell.shape == (4, 3, 3) and batch.pbc.shape == (4, 3)
    assert batch.pbc.tolist() == [[False] * 3, [False] * 3, [True] * 3, [False] * 3]
    assert batch.pos.shape == (4 + 13 + 32 + 7, 3) and batch.energy.shape == (4,)
    assert batch.num_atoms.tolist() == [4, 13, 32, 7]
    # the batch feeds the neighbour search: image shifts in the crystal only
    edge_index, shifts = radius_graph(
        batch.pos, 6.0, batch=batch.batch, cell=batch.cell, pbc=batch.pbc
    )
    graph = batch.batch[edge_index[0]]
    assert shifts[graph != 2].eq(0).all() and shifts[graph == 2].ne(0).any(dim=1).any()
    assert torch.equal(graph, batch.batch[edge_index[1]])  # no edge between graphs
    # the crystal's forces come back from a periodic LJ on the collated graph
    crystal = ds[2]
    ei, sh = radius_graph(crystal.pos, 8.0, cell=crystal.cell, pbc=crystal.pbc)
    forces = lennard_jones_pairs(crystal.pos, ei, sh, cutoff=8.0)[1]
    torch.testing.assert_close(forces, crystal.forces, rtol=0, atol=1e-7)


def test_repr(tmp_path):
    path = write(tmp_path / "lj.xyz", frames()[:1])
    ds = ExtXYZDataset(path, root=str(tmp_path / "d"), log=False)
    assert repr(ds) == f"ExtXYZDataset(1, path={path!r})"


def test_key_conventions_stress_and_config_type(tmp_path):
    # Calculator results (ASE >= 3.23), info/arrays entries and REF_-style names.
    import ase
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    cell = np.eye(3) * 6.0
    frames = []
    for k in range(3):
        atoms = ase.Atoms("Cu4", positions=rng.uniform(0, 6, (4, 3)), cell=cell, pbc=True)
        atoms.info["config_type"] = "bulk" if k else "surface"
        atoms.info["REF_energy"] = -10.0 - k
        atoms.info["REF_stress"] = [0.1 * k, 0.2, 0.3, 0.01, 0.02, 0.03]  # Voigt
        atoms.arrays["REF_forces"] = rng.normal(size=(4, 3))
        atoms.calc = SinglePointCalculator(
            atoms, energy=-1.0, forces=np.zeros((4, 3)), stress=np.full(6, 0.5)
        )
        frames.append(atoms)
    path = tmp_path / "keys.extxyz"
    ase.io.write(path, frames, format="extxyz")
    ref = read_frames(path, "REF_energy", "REF_forces", stress_key="REF_stress", min_distance=0)
    calc = read_frames(path, min_distance=0)
    assert [d.config_type for d in ref] == ["surface", "bulk", "bulk"]
    assert ref[2].energy.item() == -12.0 and calc[2].energy.item() == -1.0
    assert torch.allclose(ref[1].forces, torch.tensor(frames[1].arrays["REF_forces"]))
    assert torch.equal(calc[1].forces, torch.zeros(4, 3, dtype=torch.float64))
    full = ref[1].stress[0]
    assert full.shape == (3, 3) and full[0, 0].item() == pytest.approx(0.1)
    assert full[1, 2].item() == full[2, 1].item() == pytest.approx(0.01)  # yz
    assert torch.allclose(calc[0].stress, torch.full((1, 3, 3), 0.5, dtype=torch.float64))
    assert all(d.stress_weight.item() == 1.0 for d in ref)
    with pytest.raises(ValueError, match="no forces found .*--forces-key"):
        read_frames(path, forces_key="nope", min_distance=0)


def test_unreadable_files_are_named(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.xyz"):
        read_frames(empty)
    broken = tmp_path / "broken.xyz"
    broken.write_text("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\n")
    with pytest.raises(ValueError, match="broken.xyz"):
        read_frames(broken)
