"""Guest programs that run inside the guest runtime and use VMBus devices and services.

- `device-stream:CLASS:COUNT[:INTERVAL_MS[:WINDOW]]` sends COUNT requests
  `request {seq, data}` to the first device of class CLASS, at most WINDOW (default 4) in
  flight, one every INTERVAL_MS (default 0: as fast as answers come). It checks that every
  request completes exactly once and publishes, in the guest KVP pool:
  `device-stream-progress` (completions so far), `device-stream-last` (the last answer's
  `data`), `device-stream-stalls` (`N:g1,g2,…`: how many gaps of ≥ 5 ms between two
  completions there were, then the last 32 of them in ms:
  how long the device was away, e.g. while its driver host restarted) and, at the end,
  `device-stream` =
  `done completed=N duplicates=D errors=E reissued=R max_gap_ms=G` (`failed …` when the device
  failed first: the requests waiting end with errors and the stream stops). A device that never
  appears within DEVICE_WAIT publishes `device-stream` = `error: no device of class CLASS`.
  While it streams, the host can have it send one more request of its choosing: host KVP
  `device-request` = KIND sends `KIND {}` to the device once, and the answer's `data` (or the
  whole answer) is published as `device-reply` (scripts/experiment triggers its drivers so).
- `kvp-echo` mirrors the host's KVP pool into the guest pool (each host item K=V is
  published as K=V; removals follow), so a test sees a full round trip.
"""
from __future__ import annotations

import json
import time

from hypervisor.runtime.errors import HvError
from worker.guest import disk_programs
from worker.guest.vmbus_client import ClientDevice

DEVICE_WAIT = 30.0
PROGRESS_INTERVAL = 0.1
STALL = 0.005  # a gap between two completions this long is recorded as a stall
KINDS = ("device-stream", "kvp-echo") + disk_programs.KINDS   # disk ones: disk_programs.py


def parse_args(kind: str, rest: str) -> tuple[str, ...] | None:
    """The validated argument tuple for a device program, None if `kind` is not one."""
    if kind == "kvp-echo":
        if rest:
            raise HvError("BadRequest", "guest kvp-echo takes no arguments")
        return ()
    if kind in disk_programs.KINDS:
        return disk_programs.parse_args(kind, rest)
    if kind != "device-stream":
        return None
    parts = rest.split(":")
    if not 2 <= len(parts) <= 4 or not parts[0]:
        raise HvError("BadRequest", "guest device-stream needs CLASS:COUNT[:INTERVAL_MS[:WINDOW]]")
    try:
        count, interval, window = int(parts[1]), int(parts[2] if len(parts) > 2 else 0), \
            int(parts[3] if len(parts) > 3 else 4)
    except ValueError:
        raise HvError("BadRequest", "device-stream COUNT, INTERVAL_MS and WINDOW are integers") from None
    if not 1 <= count <= 10_000_000 or not 0 <= interval <= 60_000 or not 1 <= window <= 1024:
        raise HvError("BadRequest", "device-stream needs 1 <= COUNT, 0 <= INTERVAL_MS <= 60000, "
                                    "1 <= WINDOW <= 1024")
    if len(parts[0]) > 128:
        raise HvError("BadRequest", "device-stream CLASS is at most 128 characters")
    return (parts[0], str(count), str(interval), str(window))


def start(spec, services):
    if spec.kind == "device-stream":
        cls, count, interval, window = spec.args
        return DeviceStream(services, cls, int(count), int(interval), int(window))
    if spec.kind == "kvp-echo":
        return KvpEcho(services)
    return disk_programs.start(spec, services)


class DeviceStream:
    def __init__(self, services, class_id: str, count: int, interval_ms: int, window: int):
        self.services = services
        self.class_id, self.count, self.interval, self.window = class_id, count, interval_ms / 1000, window
        self.device: ClientDevice | None = None
        self.started = time.monotonic()
        self.issued = 0
        self.answers: dict[int, int] = {}
        self.errors = 0
        self.duplicates = 0
        self.next_issue = 0.0
        self.last_done: float | None = None
        self.max_gap = 0.0
        self.next_progress = 0.0
        self.stalls: list[float] = []
        self.stall_count = 0
        self.finished = False
        self.asked: list[str] = []            # host-requested one-off requests not yet sent
        self.quiescing = False
        services.bus.register(class_id, self._make)
        services.host_listeners.append(self._host_items)

    def _host_items(self, items: dict[str, str], removed: list[str]) -> None:
        kind = items.get("device-request")
        if kind:
            self.asked.append(kind[:64])

    def _reply(self, ok: bool, body: dict) -> None:
        data = body.get("data") if ok and isinstance(body.get("data"), str) else json.dumps(body, default=str)
        self.services.publish("device-reply", data[:2000])

    # save and restore (worker/guest/runtime.py): every answered seq is kept, so a restored
    # stream issues exactly the requests not yet issued — none lost, none done twice
    def quiesce(self) -> None:
        self.quiescing = True

    def quiet(self) -> bool:
        return self.device is None or not self.device.pending

    def unquiesce(self) -> None:
        self.quiescing = False

    def save_state(self) -> dict:
        return {"issued": self.issued, "answers": sorted(self.answers.items()),
                "errors": self.errors, "duplicates": self.duplicates,
                "finished": self.finished}

    def restore(self, state: dict) -> None:
        self.issued = int(state.get("issued") or 0)
        self.answers = {int(k): int(v) for k, v in state.get("answers") or ()}
        self.errors = int(state.get("errors") or 0)
        self.duplicates = int(state.get("duplicates") or 0)
        self.finished = bool(state.get("finished"))

    def _make(self, bus, offer) -> ClientDevice:
        self.device = ClientDevice(bus, offer)
        self.services.note(f"device-stream: found a {self.class_id} device")
        return self.device

    def tick(self, now: float) -> None:
        if self.finished:
            return
        if self.device is None:
            if now - self.started > DEVICE_WAIT:
                self.finished = True
                self.services.publish("device-stream", f"error: no device of class {self.class_id}")
            return
        while self.asked:
            self.device.request(self.asked.pop(0), {}, self._reply)
        while not self.quiescing and self.issued < self.count and \
                len(self.device.pending) < self.window and now >= self.next_issue:
            seq = self.issued
            self.issued += 1
            self.device.request("request", {"seq": seq, "data": f"hello {seq}"},
                                lambda ok, body, s=seq: self._done(s, ok, body))
            if self.interval:
                self.next_issue = now + self.interval
        done = len(self.answers)
        if now >= self.next_progress:
            self.next_progress = now + PROGRESS_INTERVAL
            self.services.publish("device-stream-progress", str(done))
        failed = self.device.failure is not None and not self.device.pending and self.errors
        if done >= self.count or failed:   # a failed device ends the stream: no hanging
            self.finished = True
            self.services.publish("device-stream-progress", str(done))
            summary = (f"{'failed' if done < self.count else 'done'} completed={done} "
                       f"duplicates={self.duplicates} errors={self.errors} "
                       f"reissued={self.device.reissued} max_gap_ms={self.max_gap * 1000:.1f}")
            self.services.publish("device-stream", summary)
            self.services.note(f"device-stream: {summary}")

    def _done(self, seq: int, ok: bool, body: dict) -> None:
        now = time.monotonic()
        if self.last_done is not None:
            gap = now - self.last_done
            self.max_gap = max(self.max_gap, gap)
            if gap >= STALL:
                self.stalls = (self.stalls + [round(gap * 1000, 1)])[-32:]
                self.stall_count += 1
                self.services.publish("device-stream-stalls",
                                      f"{self.stall_count}:" + ",".join(map(str, self.stalls)))
        self.last_done = now
        if seq in self.answers:
            self.duplicates += 1
        self.answers[seq] = self.answers.get(seq, 0) + 1
        if not ok or "error" in body:
            self.errors += 1
            self.services.publish("device-stream-error", str(body.get("message") or body.get("error"))[:2000])
        elif isinstance(body.get("data"), str):
            self.services.publish("device-stream-last", body["data"][:2000])

    def next_deadline(self) -> float:
        if self.finished:
            return float("inf")
        if self.device is not None and self.issued < self.count and len(self.device.pending) < self.window:
            return self.next_issue
        return time.monotonic() + PROGRESS_INTERVAL


class KvpEcho:
    def __init__(self, services):
        self.services = services
        services.host_listeners.append(self._changed)

    def _changed(self, items: dict[str, str], removed: list[str]) -> None:
        for key, value in items.items():
            self.services.publish(key, value)
        kvp = self.services.kvp
        for key in removed:
            if kvp is not None:
                kvp.unpublish(key)

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float:
        return float("inf")
