"""Shared fixtures: every test is seeded; dtypes are parametrised with a tolerance table."""

import random

import numpy as np
import pytest
import torch

# One thread: the tests' tensors are small, and OpenMP threads that wait for a busy core
# make a loaded machine many times slower (seen here: 144 s vs 17 s for one file).
torch.set_num_threads(1)

REAL_DTYPES = [torch.float32, torch.float64]
COMPLEX_DTYPES = [torch.complex64, torch.complex128]
ALL_DTYPES = REAL_DTYPES + COMPLEX_DTYPES


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds legacy global users too
    torch.manual_seed(0)
    yield


@pytest.fixture(params=ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param


@pytest.fixture(params=REAL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def real_dtype(request):
    return request.param


@pytest.fixture(params=COMPLEX_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def complex_dtype(request):
    return request.param
