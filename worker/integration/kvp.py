"""Key-Value Pair Exchange, host side: two pools of string items.

The *host* pool is what the host set (`set-vmkvp`): vmms keeps it in the VM's configuration,
the worker pushes it to the guest when the channel opens (`sync`) and on every change. The
*guest* pool is what the guest published (`guest-set` / `guest-remove`); the worker keeps it
in memory for `get-vmkvp --pool guest`. Items from the guest are checked against the same
limits as the host's; a bad item is dropped and logged, and the pool never exceeds
KVP_MAX_ITEMS.
"""
from __future__ import annotations

from worker.integration.ic_defs import KVP, KVP_MAX_ITEMS, KVP_RING_SIZE, batches, valid_item
from worker.integration.service import IntegrationService


class KvpService(IntegrationService):
    ring_size = KVP_RING_SIZE

    def __init__(self, log, host_pool: dict[str, str]):
        super().__init__(KVP, log)
        self.host_pool = dict(host_pool)
        self.guest_pool: dict[str, str] = {}
        self.dropped = 0

    def opened(self) -> None:
        parts = batches(self.host_pool) or [{}]
        for i, items in enumerate(parts):
            self.request("sync", {"items": items, "replace": i == 0})

    def set_items(self, items: dict[str, str]) -> None:
        self.host_pool.update(items)
        if self.is_open:
            for part in batches(items):
                self.request("set", {"items": part})

    def remove_keys(self, keys: list[str]) -> None:
        for k in keys:
            self.host_pool.pop(k, None)
        if self.is_open:
            self.request("remove", {"keys": list(keys)})

    def on_oneway(self, kind: str, body: dict) -> None:
        if kind == "guest-set" and isinstance(body.get("items"), dict):
            for k, v in body["items"].items():
                if valid_item(k, v) and (k in self.guest_pool or len(self.guest_pool) < KVP_MAX_ITEMS):
                    self.guest_pool[k] = v
                else:
                    self.dropped += 1
                    self.log.warning("kvp_guest_item_dropped", key=str(k)[:80])
        elif kind == "guest-remove" and isinstance(body.get("keys"), list):
            for k in body["keys"]:
                if isinstance(k, str):
                    self.guest_pool.pop(k, None)
        else:
            super().on_oneway(kind, body)

    def closed(self) -> None:
        super().closed()
        self.guest_pool.clear()  # the guest republishes its items when it reconnects
