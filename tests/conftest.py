import os
import sys
from pathlib import Path

import pytest
import torch

# Let tests import helpers.py as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

# Each test, and each process it starts, computes on one thread: tiny models gain nothing from more,
# and under pytest-xdist (-n 2 on 2 cores), or beside loader workers, OpenMP threads that spin on
# a busy core make a run several times slower (a shard run and its resume: 14 s on one thread, 60 s on two).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and batches: one thread is faster, above all when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _release_run_dirs():
    """Runs made in the test process lock their dirs for the life of the process: let go after each test."""
    yield
    from mixtrain.files import release_claims

    release_claims()
