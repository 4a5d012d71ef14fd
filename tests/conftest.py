"""Shared fixtures: one torch thread, fixed seeds before every test, and
Ctrl-C delivered as in a terminal."""
import signal

import numpy as np
import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _sigint_as_in_a_terminal():
    """A shell starts background jobs (``make test &``, CI runners) with
    SIGINT ignored, and Python keeps that: Ctrl-C then does nothing, and
    the tests of Ctrl-C handling (in this process and in the processes it
    starts, which inherit an ignored signal) would test nothing.  Give the
    session Python's own handler, as an interactive run has."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test made (pyplot keeps them until closed)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
