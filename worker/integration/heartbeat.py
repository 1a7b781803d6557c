"""Heartbeat, host side: the guest sends a one-way `heartbeat` {seq, at} every
HEARTBEAT_INTERVAL; the worker turns beats into the VM's Heartbeat status
(OkApplicationsUnknown / LostCommunication).

Read lazily (issue 16): once the guest beats, the worker masks the channel's interrupts (the
ring's interrupt_mask, as Hyper-V's VSPs do when they poll), so a beat wakes nobody; the worker
wakes at its loss deadline (last beat + HEARTBEAT_LOST_AFTER), drains the ring and takes the
newest beat's own time (`at`, the guest's CLOCK_MONOTONIC, which is the host's: no time
namespace; clamped to [previous beat, now], so a lying guest gains nothing). While the status is
anything but OK (no beat yet, LostCommunication) interrupts are on: the first beat is seen at
once."""
from __future__ import annotations

import math
from typing import Callable

from worker.integration.ic_defs import HEARTBEAT
from worker.integration.service import IntegrationService
from worker.vmbus.transport import ring_doorbell


class HeartbeatService(IntegrationService):
    def __init__(self, log, on_beat: Callable[[float | None], None], heartbeat_status: Callable[[], str]):
        super().__init__(HEARTBEAT, log)
        self.on_beat = on_beat
        self.heartbeat_status = heartbeat_status
        self.beats = 0
        self.masked = False

    def on_oneway(self, kind: str, body: dict) -> None:
        if kind == "heartbeat":
            self.beats += 1
            at = body.get("at")
            ok = isinstance(at, float) and math.isfinite(at)
            self.on_beat(at if ok else None)
        else:
            super().on_oneway(kind, body)

    def set_lazy(self, lazy: bool) -> None:
        """Mask (lazy) or unmask the guest's signals on this channel. Unmasking with beats
        already in the ring rings our own doorbell, so the loop reads them at once."""
        ep = self.endpoint
        if ep is None or lazy == self.masked:
            return
        self.masked = lazy
        if lazy:
            ep.ring.inp.mask_interrupts()
        elif ep.ring.inp.unmask_interrupts():
            ring_doorbell(ep.fileno())

    def opened(self) -> None:
        self.masked = False      # a new ring: interrupts on until the first beat

    def closed(self) -> None:
        super().closed()
        self.masked = False

    def status(self, running: bool):
        if not running:
            return None, None
        hb = self.heartbeat_status()
        return {"OkApplicationsUnknown": "OK", "LostCommunication": "Lost Communication",
                "Paused": "Paused"}.get(hb, "No Contact"), None
