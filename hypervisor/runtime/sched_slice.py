"""A shorter scheduler slice for the processes on a frame's path (EEVDF custom slices).

Linux ≥ 6.6 schedules SCHED_OTHER tasks by EEVDF: a task runs for its *slice* before its
deadline comes up, and since 6.12 a task may ask for a shorter one (`sched_setattr(2)`,
`sched_runtime` = 0.1–100 ms, no privilege needed). A shorter slice changes *when* a task
runs, never how much: its weight (its fair share of the CPU) is unchanged. A task woken with a
short slice has an early deadline, so it preempts a CPU-bound task at once instead of waiting
for that task's slice to end — what a process that sleeps on a doorbell and works ~100 µs
per wake wants. The netvsp switch host and a guest runtime with network adapters ask for it:
on a loaded host each frame crosses three such processes, and each would otherwise wait up to
a slice of whatever else shares its CPU.

`SCHED_FLAG_RESET_ON_FORK` is set, so the guest's own programs (fork+exec'd by the runtime)
keep the default slice. Python 3.11 has no wrapper: the raw system call via ctypes (x86-64 and
arm64 numbers); where the kernel or the architecture does not support it, nothing changes.
"""
from __future__ import annotations

import ctypes
import platform
import struct

_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}   # sched_setattr, sched_getattr
_ATTR = struct.Struct("IIQiIQQQII")                          # struct sched_attr (size 56)
SCHED_OTHER = 0
SCHED_FLAG_RESET_ON_FORK = 0x01
NETWORK_SLICE = 0.0001        # seconds: the kernel's shortest (the earliest deadline on a wake-up;
                              # a slice used up is renewed, the share is unchanged; 0.2 ms measured
                              # ~4 % slower ping p50 in an interleaved A/B)

_libc = ctypes.CDLL(None, use_errno=True)


def request_slice(seconds: float = NETWORK_SLICE) -> bool:
    """Ask for a `seconds` slice for the calling thread (SCHED_OTHER, nice unchanged).
    True if the kernel took it."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return False
    nice = _current_nice(numbers[1])
    if nice is None:
        return False
    attr = _ATTR.pack(_ATTR.size, SCHED_OTHER, SCHED_FLAG_RESET_ON_FORK, nice, 0,
                      int(seconds * 1e9), 0, 0, 0, 0)
    return _libc.syscall(numbers[0], 0, ctypes.c_char_p(attr), 0) == 0


def current_slice() -> float | None:
    """The calling thread's slice in seconds (None where it cannot be read)."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    raw = _getattr(numbers[1])
    return raw[5] / 1e9 if raw is not None else None


def _getattr(number: int):
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _libc.syscall(number, 0, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def _current_nice(number: int) -> int | None:
    raw = _getattr(number)
    if raw is None or raw[1] != SCHED_OTHER:
        return None        # not SCHED_OTHER (e.g. a real-time policy): leave it alone
    return raw[3]
