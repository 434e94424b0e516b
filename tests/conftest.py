"""Shared fixtures: every test runs torch on one thread (tests/ mirror src/)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine has 2 shared cores: small ops run ~40x slower with 2 threads under load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
