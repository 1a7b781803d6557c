"""Time Synchronization, host side: the worker sends the host's clock as a `sample` when the
channel opens and after the VM was paused (Hyper-V's ICTIMESYNCFLAG_SYNC); the guest runtime
steps its clock offset to it and answers with its own reading, from which the worker keeps the
measured skew.

No periodic sample (issue 16): the guest's clock runs off the host kernel's clock (the vDSO's
read-only time page, shared by every process: worker/guest/integration.py `GuestClock`), so it
cannot drift from the host between samples, and a step of the host's clock reaches every guest
at once through that page. A sample only corrects the guest's offset (its RTC at boot, a stale
view after a pause), so it is sent when that offset can be wrong, never on a timer.
"""
from __future__ import annotations

import time

from worker.integration.ic_defs import TIMESYNC, TIMESYNC_RETRY
from worker.integration.service import IntegrationService


class TimeSyncService(IntegrationService):
    def __init__(self, log):
        super().__init__(TIMESYNC, log)
        self.next_sample = float("inf")   # monotonic time of the next sample; inf: none due
        self.skew: float | None = None
        self.samples = 0

    def opened(self) -> None:
        self.next_sample = 0.0
        self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        if self.is_open and now >= self.next_sample:
            if self.tx.in_flight():
                self.next_sample = now + TIMESYNC_RETRY  # the last one is unanswered: later
                return
            self.next_sample = float("inf")
            sent = time.time()
            self.request("sample", {"host_time": sent}, lambda ok, body: self._answer(ok, body, sent))

    def next_deadline(self) -> float:
        return self.next_sample if self.is_open else float("inf")

    def resync(self) -> None:
        """After a pause the guest's view of time may be stale: sample at the next tick."""
        self.next_sample = 0.0

    def _answer(self, ok: bool, body, sent: float) -> None:
        if not ok or not isinstance(body, dict) or not isinstance(body.get("guest_time"), (int, float)):
            return
        self.samples += 1
        self.skew = float(body["guest_time"]) - (sent + time.time()) / 2

    def status(self, running: bool):
        primary, _ = super().status(running)
        if primary == "OK" and self.skew is not None:
            return primary, f"guest clock within {abs(self.skew) * 1000:.1f} ms of the host"
        return primary, None
