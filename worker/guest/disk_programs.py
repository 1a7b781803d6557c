"""Guest programs that use the guest's first disk (a `storvsp` device, worker/guest/block_client.py)
and report through KVP (CLI.md "Guest programs"; the pattern is worker/guest/disk_pattern.py):

- `disk-write:SIZE:SEED` writes the test pattern over the first SIZE bytes, flushes, and
  publishes `disk-write` = `ok` (or `error: …`). While it runs, `disk-write-progress` = bytes
  written so far; at the end `disk-write-reissued` = requests re-issued after a driver host
  restart.
- `disk-verify:SIZE:SEED` reads the first SIZE bytes and publishes `disk-verify` = `ok` or
  `mismatch at <byte offset>` (the lowest one), or `error: …`.
- `disk-sha256:SIZE` publishes `disk-sha256` = hex SHA-256 of the first SIZE bytes.
- `disk-bench:SPAN:SECONDS` measures the disk inside the guest over its first SPAN bytes, each
  test for SECONDS: 1 MiB sequential write and read at queue depth 4, 4 KiB random write and
  read at queue depth 1 and 16 (writes first, so reads find allocated blocks). Publishes
  `disk-bench-<test>` = `ops=N bytes=B seconds=S iops=I mbps=M` per test and `disk-bench` =
  `done` (or `error: …`). Used by scripts/bench/storage.

Save and restore (worker/guest/runtime.py): `quiesce()` stops issuing, `quiet()` says when
nothing is in flight, `save_state()` / `restore()` carry how far a program got, so a restored
disk-write continues at the first byte not yet written — no request lost, none done twice.
disk-verify resumes where it was; disk-sha256 and disk-bench start again (a hash in progress is
not kept).

The "first disk" is the first storage device the host offers (the lowest controller location).
Each program waits up to DEVICE_WAIT for it. Up to WINDOW requests of CHUNK bytes are in flight.
"""
from __future__ import annotations

import hashlib
import random
import time

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.sizes import parse_size
from worker.guest import disk_pattern
from worker.guest.block_client import STORVSP_CLASS, StorageDevice

KINDS = ("disk-write", "disk-verify", "disk-sha256", "disk-bench")
DEVICE_WAIT = 30.0
PROGRESS_INTERVAL = 0.1
WINDOW = 8
CHUNK = 1 << 20
BENCH_TESTS = (   # name, write?, block size, queue depth, random?
    ("seqwrite-1m-qd4", True, 1 << 20, 4, False),
    ("seqread-1m-qd4", False, 1 << 20, 4, False),
    ("randwrite-4k-qd1", True, 4096, 1, True),
    ("randwrite-4k-qd16", True, 4096, 16, True),
    ("randread-4k-qd1", False, 4096, 1, True),
    ("randread-4k-qd16", False, 4096, 16, True),
)


def parse_args(kind: str, rest: str) -> tuple[str, ...] | None:
    """disk-bench's arguments (the other disk programs are parsed by programs.parse_spec)."""
    if kind != "disk-bench":
        return None
    span, _, seconds = rest.partition(":")
    try:
        n, secs = parse_size(span), float(seconds)
    except (HvError, ValueError):
        raise HvError("BadRequest", "guest disk-bench needs SPAN:SECONDS") from None
    if n < 1 << 20 or n % (1 << 20) or not 0.05 <= secs <= 600:
        raise HvError("BadRequest", "disk-bench SPAN is a multiple of 1 MiB, SECONDS 0.05-600")
    return (str(n), str(secs))


def start(spec, services):
    if spec.kind == "disk-write":
        return DiskWrite(services, spec.size, spec.seed)
    if spec.kind == "disk-verify":
        return DiskRead(services, "disk-verify", spec.size, spec.seed)
    if spec.kind == "disk-sha256":
        return DiskRead(services, "disk-sha256", spec.size, None)
    if spec.kind == "disk-bench":
        return DiskBench(services, int(spec.args[0]), float(spec.args[1]))
    return None


class DiskProgram:
    key = ""

    def __init__(self, services, size: int):
        self.services = services
        self.size = size
        self.device: StorageDevice | None = None
        self.started = time.monotonic()
        self.finished = False
        self.quiescing = False
        self.next_progress = 0.0
        services.bus.register(STORVSP_CLASS, self._make)

    def quiesce(self) -> None:
        self.quiescing = True

    def quiet(self) -> bool:
        return self.device is None or self.device.in_flight == 0

    def unquiesce(self) -> None:
        self.quiescing = False
        if self.device is not None and self.device.ready and not self.finished:
            self._fill()

    def _fill(self) -> None: ...

    def save_state(self) -> dict:
        return {"finished": self.finished}

    def restore(self, state: dict) -> None:
        self.finished = bool(state.get("finished"))

    def _make(self, bus, offer) -> StorageDevice:
        dev = StorageDevice(bus, offer)
        if self.device is None:
            self.device = dev
            dev.on_ready.append(self._ready)
        return dev

    def _ready(self, dev: StorageDevice) -> None:
        if self.finished:
            return
        if self.size > dev.properties.size:
            self.finish(f"error: SIZE {self.size} is beyond the disk's {dev.properties.size} bytes")
            return
        self.begin()

    def begin(self) -> None: ...

    def progress(self) -> None: ...

    def finish(self, value: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.progress()
        self.services.publish(self.key, value)
        self.services.note(f"{self.key}: {value}")

    def tick(self, now: float) -> None:
        if self.finished:
            return
        if self.device is None and now - self.started > DEVICE_WAIT:
            self.finish("error: the VM has no disk")
        if now >= self.next_progress:
            self.next_progress = now + PROGRESS_INTERVAL
            self.progress()

    def next_deadline(self) -> float:
        return float("inf") if self.finished else self.next_progress


class SequentialProgram(DiskProgram):
    """Walks the first `size` bytes in CHUNK pieces with up to WINDOW requests in flight."""

    issued = 0

    def begin(self) -> None:
        self._fill()

    def _fill(self) -> None:
        dev = self.device
        chunk = min(CHUNK, dev.properties.max_transfer)
        while not self.finished and not self.quiescing and self.issued < self.size and \
                dev.in_flight < WINDOW:
            offset = self.issued
            n = min(chunk, self.size - offset)
            self.issued += n
            self._issue(offset, n)

    def _issue(self, offset: int, n: int) -> None: ...


class DiskWrite(SequentialProgram):
    key = "disk-write"

    def __init__(self, services, size: int, seed: str):
        super().__init__(services, size)
        self.seed = seed
        self.issued = self.done = 0
        self.flushing = False

    def _issue(self, offset: int, n: int) -> None:
        self.device.write(offset, disk_pattern.generate(self.seed, offset, n),
                          lambda err, _data, n=n: self._written(err, n))

    def save_state(self) -> dict:
        return {"finished": self.finished, "done": self.done, "flushing": self.flushing}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.issued = self.done = int(state.get("done") or 0)
        self.flushing = False   # a flush in flight at the save completed before it; redo it

    def begin(self) -> None:
        if self.done >= self.size and not self.flushing:
            self.flushing = True
            self.device.flush(self._flushed)
        else:
            self._fill()

    def _written(self, err, n: int) -> None:
        if err is not None:
            self.finish(f"error: {err}")
            return
        self.done += n
        if self.done >= self.size and not self.flushing:
            self.flushing = True
            self.device.flush(self._flushed)
        elif not self.finished:
            self._fill()

    def _flushed(self, err, _data) -> None:
        self.finish("ok" if err is None else f"error: {err}")

    def progress(self) -> None:
        self.services.publish("disk-write-progress", str(self.done))
        if self.device is not None:
            self.services.publish("disk-write-reissued", str(self.device.reissued))


class DiskRead(SequentialProgram):
    """disk-verify (with a seed) or disk-sha256 (without): reads in order, consumed in order."""

    def __init__(self, services, key: str, size: int, seed: str | None):
        super().__init__(services, size)
        self.key, self.seed = key, seed
        self.issued = self.consumed = 0
        self.arrived: dict[int, bytes] = {}
        self.hash = hashlib.sha256()

    def save_state(self) -> dict:
        keep = self.seed is not None   # disk-sha256 starts again: its hash is not kept
        return {"finished": self.finished and keep, "consumed": self.consumed if keep else 0}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.issued = self.consumed = int(state.get("consumed") or 0)

    def _issue(self, offset: int, n: int) -> None:
        self.device.read(offset, n, lambda err, data, o=offset: self._read(err, o, data))

    def _read(self, err, offset: int, data) -> None:
        if err is not None:
            self.finish(f"error: {err}")
            return
        if self.finished:
            return
        self.arrived[offset] = data
        while self.consumed in self.arrived:
            piece = self.arrived.pop(self.consumed)
            if self.seed is not None:
                bad = disk_pattern.first_mismatch(self.seed, self.consumed, piece)
                if bad is not None:
                    self.finish(f"mismatch at {bad}")
                    return
            else:
                self.hash.update(piece)
            self.consumed += len(piece)
        if self.consumed >= self.size:
            self.finish("ok" if self.seed is not None else self.hash.hexdigest())
        else:
            self._fill()


class DiskBench(DiskProgram):
    key = "disk-bench"

    def __init__(self, services, span: int, seconds: float):
        super().__init__(services, span)
        self.seconds = seconds
        self.tests = list(BENCH_TESTS)
        self.rng = random.Random(1)
        self.current = None

    def begin(self) -> None:
        self._next_test()

    def _next_test(self) -> None:
        if not self.tests:
            self.finish("done")
            return
        name, write, bs, qd, rand = self.tests.pop(0)
        self.current = {"name": name, "write": write, "bs": bs, "qd": qd, "rand": rand,
                        "data": b"\xa5" * bs if write else None, "pos": 0, "ops": 0,
                        "in_flight": 0, "start": time.monotonic(), "end": None}
        self.current["deadline"] = self.current["start"] + self.seconds
        self._fill()

    def _fill(self) -> None:
        if self.quiescing:
            return
        t, dev = self.current, self.device
        while t["in_flight"] < t["qd"] and t["end"] is None and not self.finished:
            if t["rand"]:
                offset = self.rng.randrange(self.size // t["bs"]) * t["bs"]
            else:
                offset = t["pos"]
                t["pos"] = (offset + t["bs"]) % self.size
            t["in_flight"] += 1
            if t["write"]:
                dev.write(offset, t["data"], self._done)
            else:
                dev.read(offset, t["bs"], self._done)

    def _done(self, err, _data) -> None:
        t = self.current
        if err is not None:
            self.finish(f"error: {err}")
            return
        t["in_flight"] -= 1
        t["ops"] += 1
        now = time.monotonic()
        if t["end"] is None and now >= t["deadline"]:
            t["end"] = now
        if t["end"] is None:
            self._fill()
        elif t["in_flight"] == 0:
            secs = now - t["start"]
            nbytes = t["ops"] * t["bs"]
            self.services.publish(f"disk-bench-{t['name']}",
                                  f"ops={t['ops']} bytes={nbytes} seconds={secs:.3f} "
                                  f"iops={t['ops'] / secs:.0f} mbps={nbytes / secs / 1e6:.1f}")
            self._next_test()
