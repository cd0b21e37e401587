"""Test-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # pytest-xdist runs two workers on two cores: one thread each avoids oversubscription.
    torch.set_num_threads(1)
