"""Shared fixtures: every test runs torch on one thread (tests/ mirror src/); Triton runs interpreted without a GPU."""

import os

import pytest
import torch

# The Triton kernels (backend="triton") are checked on CPUs in Triton's interpreter. The switch is
# read when a kernel is defined, so it is set before any test imports the kernel modules.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine has 2 shared cores: small ops run ~40x slower with 2 threads under load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
