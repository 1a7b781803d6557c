"""The guest's side of its RAM: the shared-memory object the hypervisor sized for it, mapped
once at its maximum so hot-add needs no remapping, and the Dynamic Memory pressure report. The
object arrives as a descriptor with `boot`: the guest knows no name for it and could open none
(DESIGN.md §9).

The guest commits (touches) at most what it is assigned; a program that wants more waits for
memory instead of crashing. Every `REPORT_INTERVAL` it reports its demand with a child-partition
hypercall (over its link; the worker sends it with the partition's own credential, so it
can speak only for itself) and learns its new assignment:
pages above an assignment that shrank were punched by the hypervisor (balloon-down), so it
forgets them; pages it no longer wants it gives back with MADV_REMOVE.

The first `STATE_AREA_SIZE` bytes are the runtime's own (program state that a saved VM resumes
from, worker/guest/program_state.py): a program's memory is committed above them.

Performance: pages are touched by slice assignment in 1 MiB chunks (memcpy speed, ~GB/s), at
most `TOUCH_STEP` per loop turn so heartbeats keep flowing while a large demand is committed.
"""
from __future__ import annotations

import mmap
import os
import time

from hypervisor import hypercall_defs as hc
from worker.guest.program_state import STATE_AREA_SIZE as BASE

MIB = 1 << 20
REPORT_INTERVAL = 0.5
TOUCH_STEP = 32 * MIB
_CHUNK = b"\x5a" * MIB


class GuestRam:
    def __init__(self, fd: int, size: int, map_size: int, hypercall, dynamic: bool):
        try:
            self.mm = mmap.mmap(fd, max(size, map_size), mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.assigned = size
        self.touched = 0
        self.target = 0
        self.dynamic = dynamic
        self._hypercall = hypercall        # (op, args) -> None; the answer comes to on_report_reply
        self._next_report = 0.0

    @property
    def reporting(self) -> bool:
        return self.dynamic or self.target > 0

    def set_target(self, nbytes: int) -> None:
        self.target = max(0, nbytes)
        self._next_report = 0.0  # tell the hypervisor at once

    def _want(self) -> int:
        return max(0, min(self.target, self.assigned - BASE)) // mmap.PAGESIZE * mmap.PAGESIZE

    def busy(self) -> bool:
        """More to touch or release right now (the loop should not sleep)."""
        return self.touched != self._want()

    def step(self, now: float) -> None:
        if self.reporting and now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._report()
        want = self._want()
        if self.touched < want:
            end = min(want, self.touched + TOUCH_STEP)
            for off in range(self.touched, end, MIB):
                n = min(MIB, end - off)
                self.mm[BASE + off:BASE + off + n] = _CHUNK[:n]
            self.touched = end
        elif self.touched > want:
            self.mm.madvise(mmap.MADV_REMOVE, BASE + want, self.touched - want)
            self.touched = want

    def _report(self) -> None:
        if self._hypercall is not None:
            self._hypercall(hc.REPORT_MEMORY_DEMAND, {"demand": self.target})

    def on_report_reply(self, reply: dict) -> None:
        """The hypervisor's answer to a report (a refused one never arrives here: the next
        report retries; the guest keeps what it has meanwhile)."""
        try:
            assigned = int(reply.get("assigned", self.assigned))
        except (TypeError, ValueError):
            return
        if assigned - BASE < self.touched:
            # Ballooned: give back what lies above the new assignment. The hypervisor's punch
            # may have come before this guest touched those pages, so release them here too.
            keep = max(0, assigned - BASE) // mmap.PAGESIZE * mmap.PAGESIZE
            self.mm.madvise(mmap.MADV_REMOVE, BASE + keep, self.touched - keep)
            self.touched = keep
        self.assigned = assigned

    def next_deadline(self) -> float:
        return self._next_report if self.reporting else time.monotonic() + 3600
