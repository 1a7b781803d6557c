"""The host side of one integration service: a VSP inside the worker, with requests tracked by
transaction id (`IntegrationService`). Each service module subclasses it."""
from __future__ import annotations

from typing import Callable

from hypervisor.runtime.errors import HvError
from worker.integration.ic_defs import CLASS_IDS, IC_RING_SIZE, IC_VERSION
from worker.vmbus.channel import Offer
from worker.vmbus.host_bus import HostService
from worker.vmbus.messages import Message, Transactions

Callback = Callable[[bool, object], None]   # (ok, completion body | HvError)


class IntegrationService(HostService):
    ring_size = IC_RING_SIZE

    def __init__(self, name: str, log):
        super().__init__()
        self.name = name
        self.log = log
        cid = CLASS_IDS[name]
        self.offer = Offer(cid, cid, self.ring_size, (IC_VERSION,))
        self.tx = Transactions(limit=256)
        self.callbacks: dict[int, Callback] = {}

    @property
    def is_open(self) -> bool:
        return self.endpoint is not None

    def request(self, kind: str, body: dict, callback: Callback | None = None) -> int:
        if self.endpoint is None:
            raise HvError("InvalidState", f"the guest has not connected its {self.name} service")
        txid = self.tx.begin(kind, body)
        if callback is not None:
            self.callbacks[txid] = callback
        self.endpoint.send_request(txid, kind, body)
        return txid

    def on_message(self, msg: Message) -> None:
        if msg.is_completion:
            self.tx.complete(msg)  # an unknown txid is a protocol error: the channel fails
            callback = self.callbacks.pop(msg.txid, None)
            if callback is not None:
                callback(True, msg.body)
        elif msg.expects_reply:
            self.endpoint.send_completion(msg.txid, msg.kind, self.on_request(msg.kind, msg.body) or {})
        else:
            self.on_oneway(msg.kind, msg.body)

    def on_request(self, kind: str, body: dict) -> dict:
        return {"error": f"{self.name} does not take requests"}

    def on_oneway(self, kind: str, body: dict) -> None:
        self.log.info("ic_unknown_message", service=self.name, kind=kind)

    def closed(self) -> None:
        self.tx.abandon_all()
        callbacks, self.callbacks = self.callbacks, {}
        for callback in callbacks.values():
            callback(False, HvError("InvalidState", f"the {self.name} channel closed"))

    def status(self, running: bool) -> tuple[str | None, str | None]:
        """(PrimaryStatusDescription, SecondaryStatusDescription) as Get-VMIntegrationService."""
        if not running:
            return None, None
        return ("OK", None) if self.is_open else ("No Contact", None)
