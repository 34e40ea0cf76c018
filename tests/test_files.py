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


def dead_pid():
    """The pid of a process that has ended."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_lock_refuses_a_live_owner_and_is_released_on_errors(tmp_path):
    import json

    from uenn_geo.files import LOCK_NAME, RunLock, RunLockedError

    with RunLock(tmp_path, "train"):
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "train"
        umask = os.umask(0)
        os.umask(umask)
        assert mode(tmp_path / LOCK_NAME) == 0o666 & ~umask
        with pytest.raises(RunLockedError, match=rf"in use by uenn-geo train \(pid {os.getpid()}"):
            RunLock(tmp_path, "md").acquire()
        assert (tmp_path / LOCK_NAME).exists()  # the refused run leaves the owner's lock
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError, match="boom"), RunLock(tmp_path, "md"):
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    import json
    import socket

    from uenn_geo.files import LOCK_NAME, RunLock, RunLockedError

    pid = dead_pid()
    stale = {"pid": pid, "host": socket.gethostname(), "command": "md", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with RunLock(tmp_path, "train"):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over {tmp_path / LOCK_NAME}" in err and f"pid {pid}" in err
    # a lock of another host is never taken over (its pid cannot be checked here)
    (tmp_path / LOCK_NAME).write_text(json.dumps({**stale, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="host elsewhere"):
        RunLock(tmp_path).acquire()


def test_sweep_removes_temporaries_of_killed_writes_only(tmp_path):
    from uenn_geo.files import sweep_temporaries

    for name in (".model.pt.abc123.tmp", ".log.csv.x_9.tmp", "keep.tmp", ".hidden", "a.pt"):
        (tmp_path / name).write_text("x")
    swept = sweep_temporaries(tmp_path)
    assert sorted(p.name for p in swept) == [".log.csv.x_9.tmp", ".model.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.pt", "keep.tmp"]


def test_output_dir_must_be_a_writable_directory(tmp_path):
    from uenn_geo.files import check_output_dir

    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="not a writable directory"):
        check_output_dir(tmp_path / "file" / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(ValueError, match="not a writable directory"):
            check_output_dir(ro)


def test_json_has_no_infinity_or_nan(tmp_path):
    import json
    import math

    from uenn_geo.files import write_json

    write_json(tmp_path / "m.json", {"a": math.inf, "b": [1.0, math.nan, (2, -math.inf)]})

    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    value = json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse)
    assert value == {"a": None, "b": [1.0, None, [2, None]]}


def test_appended_records_reach_the_file_whole(tmp_path):
    from uenn_geo.files import append_record

    with open(tmp_path / "log.txt", "a") as f:
        append_record(f, "1,2\n")
        assert (tmp_path / "log.txt").read_text() == "1,2\n"  # flushed, before close
