"""``uenn-geo prepare``: the command writes a prepared directory and reports its sets."""

import json

import pytest

pytest.importorskip("h5py")

from uenn_geo.cli import main  # noqa: E402
from uenn_geo.data.hdf5 import read_meta  # noqa: E402


def _write(path, frames):
    lines = []
    for k in range(frames):
        x = 3.8 + 0.01 * k
        lines += ["2", 'Properties=species:S:1:pos:R:3:forces:R:3 energy=-0.01 pbc="F F F"']
        lines += ["Ar 0 0 0 0.1 0 0", f"Ar {x} 0 0 -0.1 0 0"]
    path.write_text("\n".join(lines) + "\n")


def test_prepare_command(tmp_path, capsys):
    _write(tmp_path / "a.xyz", 20)
    code = main(["prepare", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "p"),
                 "--val-fraction", "0.2", "--shard-frames", "4"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    meta = read_meta(tmp_path / "p")
    assert report["sets"]["train"]["frames"] + report["sets"]["val"]["frames"] == 20
    assert meta["sets"]["train"]["stats"]["avg_num_neighbors"] == pytest.approx(1.0)
    assert meta["sets"]["train"]["stats"]["force_rms"] == pytest.approx((0.02 / 6) ** 0.5)
    assert main(["prepare", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "p")]) == 2
