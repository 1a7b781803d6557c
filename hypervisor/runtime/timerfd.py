"""timerfd(2) for Python 3.11 (`os.timerfd_*` arrive only in 3.13): a one-shot timer on
CLOCK_MONOTONIC (the clock of `time.monotonic()`, shared by every process of the host: no
hvemu process is in a time namespace) that is a descriptor, so a loop polls it like a socket
and two processes holding it share one deadline.

The heartbeat watchdog uses it (worker/integration/heartbeat.py): the worker and its guest
hold the same timer, the guest pushes it forward at every beat, and the worker wakes only if
it ever runs out.
"""
from __future__ import annotations

import ctypes
import os

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                  ctypes.c_void_p)


def create() -> int:
    """A new disarmed, non-blocking, close-on-exec timer descriptor (OSError on failure)."""
    fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_create: {os.strerror(err)}")
    return fd


def arm_at(fd: int, when: float) -> None:
    """Fire once at monotonic time `when` (at once if it is past); replaces any earlier
    setting, including a repeating one. OSError (EBADF, ...) if the timer is not usable."""
    when = max(when, 1e-9)   # 0 would disarm
    sec = int(when)
    spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, int((when - sec) * 1e9)))
    if _libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_settime: {os.strerror(err)}")


def clear(fd: int) -> int:
    """How many times it fired since the last clear (0: not at all); never blocks."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0
