"""Heartbeat, host side: the guest sends a one-way `heartbeat` every HEARTBEAT_INTERVAL; the
worker turns beats into the VM's Heartbeat status (OkApplicationsUnknown / LostCommunication)."""
from __future__ import annotations

from typing import Callable

from worker.integration.ic_defs import HEARTBEAT
from worker.integration.service import IntegrationService


class HeartbeatService(IntegrationService):
    def __init__(self, log, on_beat: Callable[[], None], heartbeat_status: Callable[[], str]):
        super().__init__(HEARTBEAT, log)
        self.on_beat = on_beat
        self.heartbeat_status = heartbeat_status
        self.beats = 0

    def on_oneway(self, kind: str, body: dict) -> None:
        if kind == "heartbeat":
            self.beats += 1
            self.on_beat()
        else:
            super().on_oneway(kind, body)

    def status(self, running: bool):
        if not running:
            return None, None
        hb = self.heartbeat_status()
        return {"OkApplicationsUnknown": "OK", "LostCommunication": "Lost Communication",
                "Paused": "Paused"}.get(hb, "No Contact"), None
