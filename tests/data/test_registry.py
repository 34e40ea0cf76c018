import pytest

from uenn_geo.data import LJClusters, registry, write_extxyz
from uenn_geo.data.extxyz import ExtXYZDataset
from uenn_geo.data.registry import DATASET_NAMES, load_dataset


@pytest.fixture
def xyz(tmp_path):
    clusters = LJClusters(
        str(tmp_path / "clusters"), num_configs=5, min_atoms=3, max_atoms=5, log=False
    )
    path = tmp_path / "frames.extxyz"
    write_extxyz(path, list(clusters))
    return path, clusters


def test_a_file_is_read_and_cached_under_root(tmp_path, xyz):
    path, clusters = xyz
    ds = load_dataset(str(path), tmp_path / "cache")
    assert isinstance(ds, ExtXYZDataset) and len(ds) == len(clusters)
    assert (tmp_path / "cache" / "extxyz" / "frames").is_dir()
    assert ds[2].forces.allclose(clusters[2].forces)
    assert len(load_dataset(path, tmp_path / "cache")) == len(clusters)  # a Path works too


def test_names(monkeypatch, tmp_path):
    assert DATASET_NAMES == ("paper", "lj-clusters")
    made = []

    class Fake:
        def __init__(self, root, log=True):
            made.append((type(self).__name__, root, log))

    monkeypatch.setattr(registry, "LJClusters", type("LJ", (Fake,), {}))
    monkeypatch.setattr(registry, "PaperArgon", type("Paper", (Fake,), {}))
    load_dataset("lj-clusters", tmp_path)
    load_dataset("paper", tmp_path)
    assert made == [
        ("LJ", str(tmp_path / "lj_clusters"), False),
        ("Paper", str(tmp_path / "paper_argon"), False),
    ]


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="neither a file nor a built-in data set.*lj-clusters"):
        load_dataset("no-such-set", tmp_path)
    with pytest.raises(ValueError, match="neither a file"):
        load_dataset(str(tmp_path), tmp_path)  # a folder is not a structure file
