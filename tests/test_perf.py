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
