"""Ctrl-C during a long computation: finish the current step, then stop cleanly.

Python turns SIGINT (Ctrl-C) into a :class:`KeyboardInterrupt` raised
wherever the main thread happens to be, possibly between two in-place
updates of an optimiser's state, which would leave parameters and moment
estimates out of step.  :func:`deferred_interrupt` replaces that for the
length of a ``with`` block by a handler that only records the request
(:attr:`StopRequest.requested`); the loop checks it between steps and stops
at a consistent state.  A second Ctrl-C raises :class:`KeyboardInterrupt`
at once, as usual (for a step that hangs).

The previous handler is restored when the block ends, however it ends, so
no process-wide handler outlives the computation.  Signals reach only the
main thread, so elsewhere (and where SIGINT is ignored or handled outside
Python) nothing is installed; a :class:`KeyboardInterrupt` that the code
itself raises can still be turned into a request with
:meth:`StopRequest.request`.

    >>> import os, signal
    >>> before = signal.getsignal(signal.SIGINT)
    >>> with deferred_interrupt() as stop:
    ...     os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
    ...     print("still running; stop requested:", stop.requested)
    still running; stop requested: True
    >>> signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    True
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class StopRequest:
    """Whether a stop was asked for (by SIGINT or :meth:`request`)."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        """Ask the computation to stop at its next check."""
        self.requested = True


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[StopRequest]:
    """A :class:`StopRequest` that SIGINT sets while the block runs (see the
    module docstring); ``enabled=False`` leaves SIGINT alone (e.g. in a
    multi-process job, whose processes must stop at the same step)."""
    stop = StopRequest()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if enabled and on_main_thread else None
    if previous is None or previous is signal.SIG_IGN:  # not ours to replace
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:  # the second Ctrl-C: stop at once
            raise KeyboardInterrupt
        stop.request()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
