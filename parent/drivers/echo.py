"""The built-in example driver: a synthetic echo device (class `echo`).

Requests: `request {seq, data}` answers `{seq, data}` unchanged; `count` answers how many
requests this channel has served; `hypercall {op}` tries a hypercall through its context with
whatever credential the driver host holds (it holds none: the answer is the hypervisor's
refusal). One-way
`sink {data}` messages are counted (throughput measurements).
"""
from __future__ import annotations

from parent.drivers.driver_api import Driver, DriverChannel, DriverContext, DriverError


class EchoDriver(Driver):
    version = "1.0"
    class_id = "echo"
    ring_size = 4 << 20   # room for 1 MiB messages

    def __init__(self, context: DriverContext | None = None):
        super().__init__(context)
        self.sunk = 0
        self.served = 0

    def open(self, channel: DriverChannel) -> None:
        channel.state = 0

    def request(self, channel: DriverChannel, kind: str, body: dict):
        self.served += 1
        channel.state += 1
        if kind in ("request", "echo"):
            return {"seq": body.get("seq"), "data": body.get("data")}
        if kind == "count":
            return {"count": channel.state}
        if kind == "hypercall":
            return self.context.hypercall(str(body.get("op", "get-host-info")))
        raise DriverError(f"echo does not handle {kind!r}")

    def message(self, channel: DriverChannel, kind: str, body: dict) -> None:
        if kind == "sink":
            self.sunk += 1

    def stats(self) -> dict:
        return {"served": self.served, "sunk": self.sunk}
