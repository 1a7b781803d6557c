"""Signals for single-threaded event loops: the handler only enqueues (DESIGN.md, process rules).

`install()` routes the given signals to a non-blocking pipe (`signal.set_wakeup_fd`) whose read
end the loop polls like any socket; `received()` drains it and says which signals arrived.
"""
from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install(signals=STOP_SIGNALS) -> int:
    """Route `signals` to a wake-up pipe; returns its read end for the loop's poller."""
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wfd)
    for sig in signals:
        signal.signal(sig, lambda *_: None)  # Python writes the number to the pipe
    return rfd


def received(rfd: int) -> set[int]:
    """The signal numbers waiting in the pipe (drains it)."""
    got: set[int] = set()
    while True:
        try:
            data = os.read(rfd, 256)
        except BlockingIOError:
            return got
        if not data:
            return got
        got.update(data)


def stop_requested(rfd: int) -> bool:
    return bool(received(rfd) & set(STOP_SIGNALS))
