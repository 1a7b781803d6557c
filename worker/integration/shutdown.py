"""Shutdown, host side: `stop-vm` asks the guest to shut down cleanly; the guest accepts (a
completion) and exits, or never answers — the worker then times out (worker/vmwp.py). A
request made before the guest opened the channel (it is still booting) goes out when it does."""
from __future__ import annotations

from worker.integration.ic_defs import SHUTDOWN
from worker.integration.service import Callback, IntegrationService


class ShutdownService(IntegrationService):
    def __init__(self, log):
        super().__init__(SHUTDOWN, log)
        self.pending: tuple[str, Callback] | None = None

    def request_shutdown(self, reason: str, callback: Callback) -> None:
        if self.is_open:
            self.request("shutdown", {"reason": reason}, callback)
        else:
            self.pending = (reason, callback)

    def cancel(self) -> None:
        self.pending = None

    def opened(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            self.request("shutdown", {"reason": pending[0]}, pending[1])
