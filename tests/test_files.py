import os
import stat

import pytest

from uenn_geo.files import atomic_save, atomic_write, read_csv, write_csv


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_umask_mode_not_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda f: f.write("x"), mode="w")
        atomic_save({"x": 1}, tmp_path / "b.pt")
        write_csv(tmp_path / "c.csv", [{"a": 1}], ["a"])
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt", "c.csv"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write(path, lambda f: f.write("old"), mode="w")

    def fail(f):
        f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail, mode="w")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_csv_round_trip(tmp_path):
    rows = [{"step": 0, "energy": -1.5, "extra": "ignored"}, {"step": 1, "energy": None}]
    write_csv(tmp_path / "log.csv", rows, ["step", "energy"])
    assert read_csv(tmp_path / "log.csv") == [
        {"step": "0", "energy": "-1.5"},
        {"step": "1", "energy": ""},
    ]
