"""One call computed in a forked child process while this process works on.

:class:`~pyro_dgmm.selection.TimeFunctionRace` trains two model structures
for the same epochs, each fit independent of the other; with a second
core free, :class:`ForkedCall` trains one of them in a child process while
this process trains the other, and the race takes the time of one fit
instead of two.  Nothing else changes: the child is a ``fork`` of this
process, so it starts from the same state, seeds its own fit as this
process would, and computes exactly what this process would have computed
(on the same machine, bit for bit); the value comes back pickled.

The child is only an accelerator.  If anything goes wrong in it (an
exception, a crash, a value that does not pickle), :meth:`ForkedCall.result`
returns None and the caller makes the call itself, so an error is raised
from this process with its usual traceback, as if no child had been tried.

:func:`fork_helps` says when to try: on Linux (``fork`` without the
platform's caveats), with torch on one thread, on the CPU, outside
``torch.distributed``, with no other thread running and at least two
cores this process may use.  One torch thread matters twice: with more,
the fit already uses the cores, and a child of a process whose OpenMP
pool has run can hang in its first parallel region; with one, ATen and
MKL never enter that pool.  No other thread: a lock another thread held
at the fork would stay held in the child (Jupyter kernels run several
threads, so notebooks keep the serial race).

Example (the child's value, computed in another process):

>>> import os
>>> call = ForkedCall(os.getpid)
>>> child_pid = call.result()
>>> child_pid is None or child_pid != os.getpid()
True
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import threading
import traceback
from typing import Any, Callable

import torch

from .parallel import world

log = logging.getLogger(__name__)


def fork_helps(device: torch.device | str = "cpu") -> bool:
    """Whether a forked child can compute beside this process, safely and on
    a core of its own (module docstring): Linux, one torch thread, ``device``
    the CPU with CUDA not started, one process, no other thread, two or
    more cores in this process's affinity mask."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and torch.device(device).type == "cpu" and not torch.cuda.is_initialized()
            and torch.get_num_threads() == 1 and world()[1] == 1 and threading.active_count() == 1
            and len(os.sched_getaffinity(0)) >= 2)


class ForkedCall:
    """``fn(*args, **kwargs)`` started in a forked child process at once;
    :meth:`result` waits for its value, :meth:`cancel` stops it."""

    def __init__(self, fn: Callable[..., Any], *args, **kwargs):
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=_run_in_child, args=(sender, fn, args, kwargs), daemon=True,
                                        name=f"pyro_dgmm:{getattr(fn, '__name__', 'call')}")
        self._not_started = None
        try:
            self._process.start()
        except OSError as error:  # no memory or no process slot for the child: the caller computes the call
            self._not_started = f"it could not be started ({error!r})"
        sender.close()  # the child holds the only sending end: its exit ends the pipe

    def result(self) -> Any | None:
        """The call's value, or None if the child failed (the reason is logged)."""
        if self._not_started is not None:
            self._receiver.close()
            log.info("the forked child process failed, so the call runs in this process: %s", self._not_started)
            return None
        try:
            succeeded, value = pickle.loads(self._receiver.recv_bytes())  # before join: a large value fills the pipe
        except (EOFError, OSError, pickle.UnpicklingError) as error:
            succeeded, value = False, f"it ended without a value ({type(error).__name__})"
        finally:
            self._receiver.close()
            self._process.join()
        if not succeeded:
            log.info("the forked child process failed, so the call runs in this process: %s (exit code %s)",
                     value, self._process.exitcode)
            return None
        return value

    def cancel(self) -> None:
        """Stop the child (its value is no longer needed)."""
        if self._not_started is None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join()
        self._receiver.close()


def _run_in_child(sender, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """The child's side: compute, send ``(True, value)`` or ``(False, reason)``."""
    try:
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException:  # noqa: B036 -- everything, Ctrl-C included, goes back to the parent as a failure
            outcome = (False, traceback.format_exc(limit=-3))
        try:  # plain pickle: the tensors travel as bytes (multiprocessing's own pickler would pass them through
            # shared-memory files that vanish with the child), pickled whole before anything is written
            message = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # an unpicklable value
            message = pickle.dumps((False, f"its value could not be sent back ({error!r})"))
        sender.send_bytes(message)
    finally:
        sender.close()
