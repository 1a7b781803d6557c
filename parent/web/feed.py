"""The web manager's view of the host: one poller thread and one event thread, each with its
own vmms connection (ZeroMQ sockets are not shared between threads).

`Feed.snapshot()` is what every page, API read and `/metrics` scrape answers from, so a burst
of browsers or scrapes costs vmms nothing more: vmms sees one pipelined poll a second
(parent/monitor_model.py) whoever is watching. Events (vmms's PUB stream) go into a bounded
backlog with sequence numbers; `wait_events()` lets a Server-Sent-Events handler block (bounded)
until a newer one arrives. Actions and history reads make their own short-lived connection in
the HTTP handler's thread. With nobody reading for IDLE_AFTER seconds the poller slows to
IDLE_INTERVAL; the next read wakes it.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from parent.monitor_model import Monitor, Snapshot, poll
from parent.client import Client

EVENT_BACKLOG = 200
IDLE_AFTER = 30.0       # s without a reader (page, API, scrape): ...
IDLE_INTERVAL = 5.0     # ... poll this rarely until someone reads again


class Feed:
    def __init__(self, home: Home, interval: float = 1.0, log=None):
        self.home = home
        self.interval = interval
        self.log = log
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._snap: dict = {"time": 0.0, "host": {}, "vms": [], "drivers": [],
                            "error": "waiting for the first poll"}
        self._snap_obj: Snapshot | None = None
        self._events: deque[tuple[int, dict]] = deque(maxlen=EVENT_BACKLOG)
        self._seq = 0
        self._cond = threading.Condition()
        self._last_read = time.monotonic()
        self._idle = threading.Event()      # nobody read a snapshot for IDLE_AFTER s
        self._wake = threading.Event()
        self._threads = [threading.Thread(target=self._poll_loop, name="poll", daemon=True),
                         threading.Thread(target=self._event_loop, name="events", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=3.0)

    # --- reads (any thread) ---------------------------------------------------------------------
    def snapshot(self) -> dict:
        self._last_read = time.monotonic()
        if self._idle.is_set():
            self._idle.clear()
            self._wake.set()        # someone looks again: poll now, then every interval
        with self._lock:
            return self._snap

    def snapshot_obj(self) -> Snapshot | None:
        with self._lock:
            return self._snap_obj

    def find_vm(self, name_or_id: str) -> dict | None:
        for vm in self.snapshot()["vms"]:
            if vm["name"].lower() == name_or_id.lower() or vm["id"] == name_or_id:
                return vm
        return None

    def events_after(self, seq: int) -> list[tuple[int, dict]]:
        with self._cond:
            return [(s, e) for s, e in self._events if s > seq]

    def wait_events(self, seq: int, timeout: float) -> list[tuple[int, dict]]:
        """Events newer than seq; waits up to `timeout` s for one (bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                new = [(s, e) for s, e in self._events if s > seq]
                if new:
                    return new
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
        return []

    @property
    def last_seq(self) -> int:
        with self._cond:
            return self._seq

    def _add_event(self, body: dict) -> None:
        with self._cond:
            self._seq += 1
            self._events.append((self._seq, body))
            self._cond.notify_all()

    # --- the threads --------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        client = Client(self.home, timeout=5.0)
        monitor = Monitor()
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    snap = poll(client, monitor, time.time())
                    data = snap.to_json()
                except HvError as err:
                    client.close()
                    snap = None
                    data = dict(self.snapshot(), error=f"{err.code}: {err.message}")
                    if err.code == "Unavailable":
                        monitor = Monitor()   # a restarted host: start the series again
                except Exception as exc:   # never let the poller die; say why on the page
                    if self.log:
                        self.log(f"poll failed: {exc!r}")
                    snap, data = None, dict(self.snapshot(), error=f"Internal: {exc}")
                with self._lock:
                    self._snap = data
                    if snap is not None:
                        self._snap_obj = snap
                if time.monotonic() - self._last_read > IDLE_AFTER:
                    self._idle.set()
                pause = IDLE_INTERVAL if self._idle.is_set() else self.interval
                self._wake.wait(max(0.05, pause - (time.monotonic() - started)))
                self._wake.clear()
        finally:
            client.close()

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            client = Client(self.home, timeout=2.0)
            try:
                stream = client.events(None)
            except HvError:
                client.close()
                self._stop.wait(2.0)
                continue
            try:
                while not self._stop.is_set():
                    for item in stream.backlog:
                        self._add_event(self._event_body(*item))
                    stream.backlog = []
                    item = stream._receive(1.0)
                    if item is not None and item[1].get("Event") != "subscribed":
                        self._add_event(self._event_body(*item))
                    elif item is None and self._stop.is_set():
                        break
            except Exception as exc:  # a broken stream: subscribe again
                if self.log:
                    self.log(f"event stream failed: {exc!r}")
            finally:
                stream.close()
                client.close()

    @staticmethod
    def _event_body(topic: str, body: dict) -> dict:
        out = {k: v for k, v in body.items() if isinstance(v, (str, int, float, bool)) or v is None}
        out["Topic"] = topic
        out.setdefault("Time", time.time())
        return out
