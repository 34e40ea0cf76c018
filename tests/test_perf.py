import json
import platform
import subprocess
import sys
import textwrap

import pytest

import uenn_geo.perf
from uenn_geo.perf import freed_memory_kept, keep_freed_memory

# mallopt parameters of glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class FakeLibc:
    """A C library whose ``mallopt`` only records its calls."""

    def __init__(self, glibc=True):
        self.calls = []

        def mallopt(param, value):  # a function, so that it takes ctypes' argtypes
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.36"


@pytest.fixture
def fake_libc(monkeypatch):
    """Route ``keep_freed_memory`` to a :class:`FakeLibc`: the allocator of this process is left
    alone, and so is ``freed_memory_kept()`` once the test ends."""
    libcs = []

    def cdll(name, glibc=True):
        libcs.append(FakeLibc(glibc))
        return libcs[-1]

    monkeypatch.setattr(uenn_geo.perf, "_applied", None)
    monkeypatch.setattr(uenn_geo.perf.sys, "platform", "linux")
    monkeypatch.setattr(uenn_geo.perf.ctypes, "CDLL", cdll)
    return libcs


def test_mallopt_gets_the_documented_thresholds(fake_libc):
    assert freed_memory_kept() is None
    assert keep_freed_memory() is True
    assert fake_libc[0].calls == [(M_MMAP_THRESHOLD, 2**30), (M_TRIM_THRESHOLD, 2**31 - 1)]
    assert freed_memory_kept() is True
    assert keep_freed_memory(2**20) is True
    assert fake_libc[1].calls[0] == (M_MMAP_THRESHOLD, 2**20)


def test_not_glibc_is_a_no_op(fake_libc, monkeypatch):
    monkeypatch.setattr(uenn_geo.perf.ctypes, "CDLL", lambda name: FakeLibc(glibc=False))
    assert keep_freed_memory() is False
    assert freed_memory_kept() is False
    monkeypatch.setattr(uenn_geo.perf.sys, "platform", "darwin")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("max_block", [0, 2**31])
def test_max_block_out_of_range(max_block):
    before = freed_memory_kept()
    with pytest.raises(ValueError, match="max_block"):
        keep_freed_memory(max_block)
    assert freed_memory_kept() is before


# In a fresh process (the allocator of the test process stays as it is): a 64 MiB block, above
# glibc's largest dynamic mmap threshold (32 MiB), is mmapped by default and comes from the heap
# once freed memory is kept; mallinfo's hblks counts the mmapped blocks.
CHILD = textwrap.dedent(
    """
    import ctypes, json
    from uenn_geo.perf import freed_memory_kept, keep_freed_memory

    class MallInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_int) for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo.restype = MallInfo
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def mmapped(size=64 * 2**20):
        before = libc.mallinfo().hblks
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        grew = libc.mallinfo().hblks > before
        libc.free(block)
        return grew

    report = {"before": freed_memory_kept(), "mmapped_before": mmapped()}
    report["applied"] = keep_freed_memory()
    report["after"] = freed_memory_kept()
    report["mmapped_after"] = mmapped()
    print(json.dumps(report))
    """
)


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_keep_freed_memory_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "before": None,
        "mmapped_before": True,
        "applied": True,
        "after": True,
        "mmapped_after": False,
    }


@pytest.mark.parametrize(
    "setting, opt_out_variable",
    [
        ("keep_freed_memory", "UENN_GEO_SYSTEM_MALLOC"),
        ("flush_denormals", "UENN_GEO_KEEP_DENORMALS"),
    ],
)
@pytest.mark.parametrize("opt_out", [False, True])
def test_cli_applies_process_settings_unless_told_not_to(
    monkeypatch, tmp_path, setting, opt_out_variable, opt_out
):
    """The ``uenn-geo`` commands apply each process-level setting of :mod:`uenn_geo.perf`
    before any work, unless its environment variable opts out."""
    from uenn_geo.cli import main

    calls = []
    monkeypatch.setattr(uenn_geo.perf, setting, lambda: calls.append(1) or True)
    if opt_out:
        monkeypatch.setenv(opt_out_variable, "1")
    else:
        monkeypatch.delenv(opt_out_variable, raising=False)
    missing = str(tmp_path / "missing.extxyz")
    assert main(["train", "--data", missing, "--out", str(tmp_path / "run")]) == 2
    assert calls == ([] if opt_out else [1])


DENORMAL_CHILD = textwrap.dedent(
    """
    import json, torch
    from uenn_geo.perf import flush_denormals
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    before = float(tiny * 1.0)
    supported = flush_denormals()
    after = float(torch.tensor([1e-39], dtype=torch.float32) * 1.0)
    print(json.dumps({"before": before, "supported": supported, "after": after}))
    """
)


def test_flush_denormals_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, "-c", DENORMAL_CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["before"] > 0.0  # denormals are kept by default
    if not report["supported"]:
        pytest.skip("this CPU cannot flush denormals")
    assert report["after"] == 0.0
