"""Heartbeat, host side: the guest beats every HEARTBEAT_INTERVAL; the worker turns beats into
the VM's Heartbeat status (OkApplicationsUnknown / LostCommunication).

A beat is two things (issue 16: an idle VM's worker must not wake for each one):
- a one-way `heartbeat` {seq, at} on the channel's ring — while the worker wants to see them:
  before the first beat and after LostCommunication, when the ring's interrupts are on, so the
  beat wakes the worker at once;
- a push of the *watchdog*: a timerfd (hypervisor/runtime/timerfd.py) the worker creates and
  hands the guest when the channel opens; the guest re-arms it at every beat to `now +
  HEARTBEAT_LOST_AFTER`, and the worker polls it. Both hold the same timer, so it fires only
  after HEARTBEAT_LOST_AFTER without a beat: a healthy guest's worker never wakes for its
  heartbeat, and a silent one is declared lost within a millisecond of the deadline.

Once the status is OK the worker masks the ring's interrupts (Hyper-V's interrupt_mask) and the
guest then only pushes the watchdog. When the watchdog fires, the worker drains the ring (a guest
without the watchdog keeps writing beats there: their own time `at`, the guest's CLOCK_MONOTONIC,
which is the host's, clamped to [previous beat, now], re-arms the watchdog); with no fresh beat
the VM has lost communication. A worker whose timerfd could not be made reads beats lazily at
its own loss deadline instead (worker/vmwp.py `next_due`).

Trust: the guest can only move its own VM's deadline (or set the timer to repeat, which the
worker undoes at the next firing): what a lying guest gains is the status it could claim by
beating anyway.
"""
from __future__ import annotations

import math
import os
from typing import Callable

from hypervisor.runtime import timerfd
from worker.integration.ic_defs import HEARTBEAT, HEARTBEAT_LOST_AFTER, heartbeat_lost_at
from worker.integration.service import IntegrationService
from worker.vmbus.transport import ring_doorbell


class HeartbeatService(IntegrationService):
    def __init__(self, log, on_beat: Callable[[float | None], None], heartbeat_status: Callable[[], str],
                 share_watchdog: Callable[[int], bool] | None = None):
        super().__init__(HEARTBEAT, log)
        self.on_beat = on_beat
        self.heartbeat_status = heartbeat_status
        self.share_watchdog = share_watchdog   # sends the timer to the guest (over its link)
        self.beats = 0
        self.masked = False
        self.watchdog: int | None = None
        if share_watchdog is not None:
            try:
                self.watchdog = timerfd.create()
            except OSError as exc:
                log.info("heartbeat_watchdog_unavailable", error=str(exc))

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

    def arm(self, when: float) -> None:
        """Set the watchdog to fire at monotonic `when` (one-shot)."""
        if self.watchdog is not None:
            try:
                timerfd.arm_at(self.watchdog, when)
            except OSError as exc:
                self.log.warning("heartbeat_watchdog_failed", error=str(exc))

    def fired(self) -> bool:
        """Clear the watchdog; True if it had fired."""
        return self.watchdog is not None and timerfd.clear(self.watchdog) > 0

    def settle(self, last_beat: float | None, now: float, far: float) -> bool:
        """After the watchdog fired and the ring was drained: True if the guest is lost (no beat
        for HEARTBEAT_LOST_AFTER). Either way the timer is re-armed one-shot — the guest holds it
        too, and one that set it early or repeating must buy at most one wake-up of the worker
        per system call it makes, as with a doorbell. A live guest pushes it on past our own
        deadline at its next beat."""
        if last_beat is not None and now - last_beat <= HEARTBEAT_LOST_AFTER:
            self.arm(heartbeat_lost_at(last_beat))
            return False
        self.arm(now + far)
        return last_beat is not None

    def opened(self) -> None:
        self.masked = False      # a new ring: interrupts on until the first beat
        if self.watchdog is not None and self.share_watchdog is not None:
            self.share_watchdog(self.watchdog)

    def closed(self) -> None:
        super().closed()
        self.masked = False

    def close(self) -> None:
        if self.watchdog is not None:
            os.close(self.watchdog)
            self.watchdog = None

    def status(self, running: bool):
        if not running:
            return None, None
        hb = self.heartbeat_status()
        return {"OkApplicationsUnknown": "OK", "LostCommunication": "Lost Communication",
                "Paused": "Paused"}.get(hb, "No Contact"), None
