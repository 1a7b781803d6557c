"""A bounded history of the hypervisor's ledgers: pure, no I/O, no clock of its own.

Per partition, one ring of samples taken every `interval` seconds (default 1 s, i.e. ten CPU
scheduler periods) over a `window` (default 15 min): the CPU time it was entitled to, consumed
and was throttled (VP-seconds held back) during that interval, and the memory assigned to it and
its reported demand at the sample's time. The daemon feeds it cumulative ledger totals
(`record()`); the ring stores per-interval differences, so a reader needs no arithmetic across
samples.

Key types: `LedgerHistory` (the rings, keyed by partition id), `Sample` (one row, for tests and
readers), `COLUMNS` (the column names `read()` answers with).

Performance: a ring is seven preallocated `array` columns (8 bytes a value): 900 samples cost
~50 KB per partition, ~5 MB at 100 partitions; `record()` is O(partitions) once per interval and
allocates nothing per sample; `read(since=t)` is O(samples returned): it walks back from the
newest sample (a binary search when that is far) and slices the arrays.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterable, Mapping

DEFAULT_INTERVAL = 1.0       # s between samples
DEFAULT_WINDOW = 900.0       # s kept (15 min)

# the columns of `read()`, in order; CPU figures are seconds within the sample's interval
COLUMNS = ("time", "interval", "cpu_entitled", "cpu_consumed", "cpu_throttled",
           "memory_assigned", "memory_demand")


@dataclass(frozen=True)
class Sample:
    time: float              # wall-clock time of the sample (s since the epoch)
    interval: float          # seconds since the previous sample (or since the partition began)
    cpu_entitled: float      # CPU-seconds
    cpu_consumed: float      # CPU-seconds
    cpu_throttled: float     # VP-seconds held back by the scheduler
    memory_assigned: int     # bytes
    memory_demand: int       # bytes (0 when the guest reports none)


class _Ring:
    __slots__ = ("cols", "capacity", "start", "count", "last_totals", "last_time")

    def __init__(self, capacity: int, began: float):
        self.capacity = capacity
        self.cols = [array("d", bytes(8 * capacity)) for _ in range(5)] + \
                    [array("q", bytes(8 * capacity)) for _ in range(2)]
        self.start = 0      # index of the oldest sample
        self.count = 0
        self.last_totals = (0.0, 0.0, 0.0)
        self.last_time = began

    def append(self, values: tuple) -> None:
        i = (self.start + self.count) % self.capacity
        if self.count == self.capacity:
            self.start = (self.start + 1) % self.capacity
        else:
            self.count += 1
        for col, v in zip(self.cols, values):
            col[i] = v

    def index(self, k: int) -> int:
        return (self.start + k) % self.capacity

    def first_after(self, since: float) -> int:
        """Position (0..count) of the first sample with time > since (times are ascending)."""
        times, lo, hi = self.cols[0], 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            if times[self.index(mid)] > since:
                hi = mid
            else:
                lo = mid + 1
        return lo


class LedgerHistory:
    """Rings of ledger samples per partition; see the module doc."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, window: float = DEFAULT_WINDOW):
        if not (interval > 0 and window >= interval):
            raise ValueError("need interval > 0 and window >= interval")
        self.interval = interval
        self.window = window
        self.capacity = int(round(window / interval))
        self._rings: dict[str, _Ring] = {}

    def __contains__(self, pid: str) -> bool:
        return pid in self._rings

    def __len__(self) -> int:
        return len(self._rings)

    def add(self, pid: str, now: float) -> None:
        """Start a ring for a new partition (its ledger totals begin at zero at `now`)."""
        self._rings[pid] = _Ring(self.capacity, now)

    def forget(self, pid: str) -> None:
        self._rings.pop(pid, None)

    def record(self, now: float, totals: Mapping[str, tuple[float, float, float, int, int]]) -> None:
        """One sample per partition from its cumulative (entitled, consumed, throttled) CPU
        seconds and current (assigned, demand) bytes. A partition without a ring gets one
        (counting from `now - interval`); a time that does not advance is ignored."""
        for pid, (entitled, consumed, throttled, assigned, demand) in totals.items():
            ring = self._rings.get(pid)
            if ring is None:
                ring = self._rings[pid] = _Ring(self.capacity, now - self.interval)
            if now <= ring.last_time:
                continue
            le, lc, lt = ring.last_totals
            # a total never goes down; a smaller one (a reset) counts as a new start
            values = (now, now - ring.last_time,
                      max(0.0, entitled - le), max(0.0, consumed - lc), max(0.0, throttled - lt),
                      int(assigned), int(demand or 0))
            ring.append(values)
            ring.last_totals = (entitled, consumed, throttled)
            ring.last_time = now

    def read(self, pid: str, since: float | None = None, limit: int | None = None) -> dict[str, list]:
        """The samples of pid newer than `since` (all when None), oldest first, as columns
        named by COLUMNS; at most the newest `limit` of them. Unknown pid: empty columns."""
        return dict(zip(COLUMNS, self.read_columns(pid, since, limit)))

    def read_columns(self, pid: str, since: float | None = None, limit: int | None = None) -> list[list]:
        """`read()` as a list of columns in COLUMNS order (cheaper to send)."""
        ring = self._rings.get(pid)
        if ring is None:
            return [[] for _ in COLUMNS]
        if since is None:
            first = 0
        else:   # a poll usually wants the newest one or two: walk back from the end
            first, times = ring.count, ring.cols[0]
            while first > 0 and times[ring.index(first - 1)] > since:
                first -= 1
                if ring.count - first > 16:      # a long way back: binary search instead
                    first = ring.first_after(since)
                    break
        if limit is not None:
            first = max(first, ring.count - max(0, limit))
        start = (ring.start + first) % ring.capacity
        end = start + (ring.count - first)
        if end <= ring.capacity:     # contiguous: slice the arrays (C speed)
            return [col[start:end].tolist() for col in ring.cols]
        end -= ring.capacity
        return [col[start:].tolist() + col[:end].tolist() for col in ring.cols]

    def totals(self, pid: str) -> dict[str, float]:
        """The cumulative CPU seconds (entitled, consumed, throttled) of pid's newest sample."""
        return dict(zip(("entitled", "consumed", "throttled"), self.last_totals(pid)))

    def last_totals(self, pid: str) -> tuple[float, float, float]:
        ring = self._rings.get(pid)
        return ring.last_totals if ring is not None else (0.0, 0.0, 0.0)

    def samples(self, pid: str, since: float | None = None) -> list[Sample]:
        cols = self.read(pid, since)
        return [Sample(*row) for row in zip(*(cols[name] for name in COLUMNS))]

    def partitions(self) -> Iterable[str]:
        return list(self._rings)
