"""pyro_dgmm.forked: a call computed in a forked child, its value sent back;
any failure of the child gives None (the caller then computes it itself)."""
import os
import sys
import threading
import time

import pytest
import torch

from pyro_dgmm.forked import ForkedCall, fork_helps

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is used on Linux only")


def _large_value(seed):
    generator = torch.Generator().manual_seed(seed)
    return {"pid": os.getpid(), "values": torch.randn(3_000_000, generator=generator)}  # 12 MB: more than a pipe holds


def test_the_value_is_computed_in_another_process_and_comes_back_whole():
    value = ForkedCall(_large_value, 5).result()
    assert value["pid"] != os.getpid()
    assert torch.equal(value["values"], _large_value(5)["values"])


def _raises():
    raise ValueError("bad input")


def _crashes():
    os._exit(3)


def _unpicklable():
    return lambda: None


@pytest.mark.parametrize("fn", [_raises, _crashes, _unpicklable], ids=["raises", "crashes", "unpicklable"])
def test_a_child_that_fails_gives_none_and_the_reason_is_logged(fn, caplog):
    with caplog.at_level("INFO", logger="pyro_dgmm.forked"):
        assert ForkedCall(fn).result() is None
    expected = {"_raises": "ValueError: bad input", "_crashes": "exit code 3",
                "_unpicklable": "could not be sent back"}[fn.__name__]
    assert "the call runs in this process" in caplog.text and expected in caplog.text


def test_a_child_that_cannot_be_started_gives_none(monkeypatch, caplog):
    import multiprocessing.process

    def no_fork(self):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_fork)
    with caplog.at_level("INFO", logger="pyro_dgmm.forked"):
        call = ForkedCall(os.getpid)
        assert call.result() is None
    assert "could not be started" in caplog.text
    ForkedCall(os.getpid).cancel()  # nothing to stop


def test_cancel_stops_a_running_child():
    call = ForkedCall(time.sleep, 60)
    start = time.perf_counter()
    call.cancel()
    assert time.perf_counter() - start < 10
    assert not call._process.is_alive()


def test_fork_is_tried_only_where_it_is_safe_and_a_core_is_free(monkeypatch):
    base = (sys.platform.startswith("linux") and torch.get_num_threads() == 1
            and len(os.sched_getaffinity(0)) >= 2 and threading.active_count() == 1)
    assert fork_helps() == base
    assert not fork_helps("cuda")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not fork_helps()  # one core: the child would only take turns with this process
    monkeypatch.undo()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not fork_helps()  # the cores are in use, and a forked OpenMP pool can hang
    finally:
        torch.set_num_threads(threads)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not fork_helps()  # a lock another thread holds would stay held in the child
    finally:
        stop.set()
        other.join()
