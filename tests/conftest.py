import sys
from pathlib import Path

import pytest
import torch

# Let tests import helpers.py as a plain module.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
