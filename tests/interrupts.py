"""A Ctrl-C stops the suite the first time, whatever the interpreter was doing.

Python runs a signal's handler at the next point the interpreter checks for one,
which may be inside a garbage collector callback: Hypothesis installs one (it
times collections) the first time a `@given` test runs. A collection starts in C
whenever enough containers were allocated, so a test busy in C code (decoding,
building rows) is most often interrupted there, and an exception raised in a gc
callback is not raised at all: the interpreter reports it as "unraisable" and
carries on (pytest turns it into a warning at the end of the test). Measured: 25
of 30 SIGINTs sent to a loop decoding JSON with such a callback were lost, and
`python3 dev.py test` ran on until the next Ctrl-C.

The handler here raises KeyboardInterrupt as Python's own does, except inside a
gc callback: there it pauses the collector (so that no callback runs meanwhile)
and has a thread mark the signal pending again (`_thread.interrupt_main`) every
10 ms until it is handled out of the callback, in the test's own code, where the
handler starts the collector again and raises. (Marked pending again from the
handler itself, the signal would be handled again inside the handler, over and
over.)

A pytest plugin (`pytest_configure`), loaded by tests/conftest.py.
"""

from __future__ import annotations

import _thread
import gc
import signal
import threading
from types import FrameType

import pytest


def _in_gc_callback(frame: FrameType | None) -> bool:
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks:
            return True
        frame = frame.f_back
    return False


# How often the signal is marked pending again until it is handled out of a callback
# (which takes microseconds to return).
_AGAIN_SECONDS = 0.01


class _Deferred:
    """A SIGINT that landed in a gc callback, until it is raised."""

    def __init__(self) -> None:
        self.raised = threading.Event()
        # Whether the collector was paused here (a test may have paused it itself).
        self.paused = False

    def again(self, signum: int) -> None:
        while not self.raised.is_set():
            _thread.interrupt_main(signum)
            self.raised.wait(_AGAIN_SECONDS)


_deferred: _Deferred | None = None


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT: KeyboardInterrupt, once out of any gc callback."""
    global _deferred
    if _in_gc_callback(frame):
        if _deferred is None:
            _deferred = _Deferred()
            if gc.isenabled():
                gc.disable()
                _deferred.paused = True
            thread = threading.Thread(target=_deferred.again, args=(signum,), daemon=True)
            thread.start()
        return
    if _deferred is not None:
        deferred, _deferred = _deferred, None
        deferred.raised.set()
        if deferred.paused:
            gc.enable()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT with `interrupt`, where Python's own handler has it (a SIGINT
    the run was started with ignored, as a background job is, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


def pytest_configure(config: pytest.Config) -> None:
    install()
