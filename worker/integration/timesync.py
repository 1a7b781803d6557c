"""Time Synchronization, host side: the worker sends the host's clock as a `sample` when the
channel opens and every TIMESYNC_INTERVAL; the guest runtime steers its clock offset to it and
answers with its own reading, from which the worker keeps the last measured skew."""
from __future__ import annotations

import time

from worker.integration.ic_defs import TIMESYNC, TIMESYNC_INTERVAL
from worker.integration.service import IntegrationService


class TimeSyncService(IntegrationService):
    def __init__(self, log):
        super().__init__(TIMESYNC, log)
        self.next_sample = 0.0
        self.skew: float | None = None
        self.samples = 0

    def opened(self) -> None:
        self.next_sample = 0.0
        self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        if self.is_open and now >= self.next_sample:
            self.next_sample = now + TIMESYNC_INTERVAL
            if self.tx.in_flight():
                return   # the last sample is still unanswered: try again an interval later
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
