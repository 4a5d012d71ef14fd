"""Shared fixtures: one torch thread, fixed seeds before every test."""
import numpy as np
import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    np.random.seed(0)
    yield
