import sys

import pytest
import torch

from uenn_geo.perf import freed_memory_kept, keep_freed_memory


def test_keep_freed_memory():
    applied = keep_freed_memory()
    assert applied is freed_memory_kept()
    if sys.platform.startswith("linux"):
        import platform

        if platform.libc_ver()[0] == "glibc":
            assert applied
    x = torch.ones(2**22)  # 16 MiB: served from the heap now, still correct
    assert float(x.sum()) == 2**22
    with pytest.raises(ValueError, match="max_block"):
        keep_freed_memory(2**31)


@pytest.mark.parametrize("opt_out", [False, True])
def test_cli_keeps_freed_memory_unless_told_not_to(monkeypatch, tmp_path, opt_out):
    import uenn_geo.perf
    from uenn_geo.cli import main

    calls = []
    monkeypatch.setattr(uenn_geo.perf, "keep_freed_memory", lambda: calls.append(1) or True)
    if opt_out:
        monkeypatch.setenv("UENN_GEO_SYSTEM_MALLOC", "1")
    else:
        monkeypatch.delenv("UENN_GEO_SYSTEM_MALLOC", raising=False)
    missing = str(tmp_path / "missing.extxyz")
    assert main(["train", "--data", missing, "--out", str(tmp_path / "run")]) == 2
    assert calls == ([] if opt_out else [1])
