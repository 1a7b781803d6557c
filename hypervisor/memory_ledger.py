"""The memory ledger: the single authority over the host memory pool (DESIGN.md §4).

Pure bookkeeping with Hyper-V's `Set-VMMemory` semantics. It does no I/O and never reads a
clock; the hypervisor drives it with method calls (passing `now` where time matters) and then
makes the answers real by resizing each partition's `GuestMemory`.

Key types:
- `MemorySettings` (defined in hypervisor/hypercall_defs.py, with `check_running_change()`, so
  callers need not import the ledger) — Startup / Minimum / Maximum / Buffer / Priority of one
  VM, plus whether dynamic memory is on.
- `MemoryLedger` — the pool (capacity minus the root partition's reserve) and what each
  partition holds. `admit()` assigns Startup or refuses with `InsufficientMemory`;
  `report_demand()` records a guest's committed bytes; `balance()` moves dynamic partitions
  towards demand × (1 + Buffer %) and, when the pool is short, drops buffers first and then
  splits what is left by Priority; `release()` frees everything a partition held.

Every size is a multiple of `GRANULE` (2 MiB). Internally the balancer counts in granules so
rounding can never break the invariant Σ assigned + root reserve ≤ capacity.
"""
from __future__ import annotations

from hypervisor.hypercall_defs import GRANULE, MIB, MemorySettings, check_size, is_int
from hypervisor.hypercall_defs import check_running_change  # noqa: F401 (tests reach it here too)
from hypervisor.runtime.errors import HvError


def _round_up(nbytes: int) -> int:
    return -(-nbytes // GRANULE) * GRANULE


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _water_fill(budget: int, claims: list[tuple[str, int, int]]) -> dict[str, int]:
    """Split `budget` granules over claims (key, weight, cap) in proportion to weight, never
    past a cap. Granules left by rounding go to the heaviest claim first, so a heavier claim
    never ends with less than a lighter one with the same cap. Weight 0 only gets what no
    weighted claim can take (then split evenly)."""
    grant = {key: 0 for key, _, _ in claims}
    open_claims = [c for c in claims if c[2] > 0]
    while budget > 0 and open_claims:
        total = sum(weight for _, weight, _ in open_claims)
        handed = 0
        for key, weight, cap in open_claims:
            share = budget * weight // total if total else budget // len(open_claims)
            share = min(share, cap - grant[key])
            grant[key] += share
            handed += share
        budget -= handed
        if handed == 0:  # less than one granule per claim left: hand out singles by weight
            for key, _, _ in sorted(open_claims, key=lambda c: (-c[1], c[0])):
                if budget == 0:
                    break
                grant[key] += 1
                budget -= 1
        open_claims = [c for c in open_claims if grant[c[0]] < c[2]]
    return grant


class _Partition:
    """What the ledger knows about one admitted partition, plus its assignment history."""

    __slots__ = ("vm_name", "settings", "assigned", "demand", "born", "since", "area", "low", "high")

    def __init__(self, vm_name: str, settings: MemorySettings, now: float):
        self.vm_name = vm_name
        self.settings = settings
        self.assigned = settings.startup
        self.demand: int | None = None
        self.born = self.since = now
        self.area = 0.0  # ∫ assigned dt from born to since (byte-seconds)
        self.low = self.high = settings.startup

    def assign(self, nbytes: int, now: float) -> None:
        now = max(now, self.since)  # a clock that steps back must not make area negative
        self.area += self.assigned * (now - self.since)
        self.since = now
        self.assigned = nbytes
        self.low = min(self.low, nbytes)
        self.high = max(self.high, nbytes)


class MemoryLedger:
    """The host memory pool and every partition's share of it."""

    def __init__(self, capacity: int, root_reserve: int):
        check_size("capacity", capacity)
        if not is_int(root_reserve) or root_reserve < 0 or root_reserve % GRANULE:
            raise HvError("BadRequest", f"root_reserve must be a multiple of 2 MiB, got {root_reserve!r}")
        if root_reserve >= capacity:
            raise HvError("BadRequest", "root_reserve must be smaller than capacity")
        self.capacity = capacity
        self.root_reserve = root_reserve
        self._parts: dict[str, _Partition] = {}
        self._reclaimed: dict[str, int] = {}

    # -- queries ---------------------------------------------------------------------------

    @property
    def available(self) -> int:
        return self.capacity - self.root_reserve - sum(p.assigned for p in self._parts.values())

    def _donors(self) -> list[tuple[int, int, str]]:
        """(priority, spare bytes, pid) of the dynamic partitions that can give memory back
        (balloon down to their Minimum); booting ones (no demand reported yet) keep Startup."""
        return sorted(((p.settings.priority, p.assigned - p.settings.minimum, q)
                       for q, p in self._parts.items()
                       if p.settings.dynamic and p.demand is not None
                       and p.assigned > p.settings.minimum),
                      key=lambda d: (d[0], -d[1]))

    @property
    def available_to_start(self) -> int:
        """What a starting VM can get: the unassigned pool plus what dynamic-memory partitions
        can give back. The one figure both a refused start and get-vmhost's MemoryAvailable
        name."""
        return self.available + sum(d[1] for d in self._donors())

    def _get(self, pid: str) -> _Partition:
        try:
            return self._parts[pid]
        except KeyError:
            raise HvError("NotFound", f"no partition {pid!r} in the memory ledger") from None

    def partitions(self) -> list[str]:
        return list(self._parts)

    def assigned(self, pid: str) -> int:
        return self._get(pid).assigned

    def demand(self, pid: str) -> int | None:
        return self._get(pid).demand

    def settings(self, pid: str) -> MemorySettings:
        return self._get(pid).settings

    def stats(self, pid: str, now: float) -> dict:
        """Assigned bytes over the partition's life: time-weighted "avg", "min", "max"."""
        p = self._get(pid)
        now = max(now, p.since)
        lifetime = now - p.born
        area = p.area + p.assigned * (now - p.since)
        avg = area / lifetime if lifetime > 0 else float(p.assigned)
        return {"avg": avg, "min": p.low, "max": p.high, "assigned": p.assigned, "demand": p.demand}

    # -- changes ---------------------------------------------------------------------------

    def admit(self, pid: str, vm_name: str, settings: MemorySettings, now: float) -> int:
        """Assign Startup to a starting partition and return it; refuse if the pool is short."""
        settings.validate()
        if pid in self._parts:
            raise HvError("AlreadyExists", f"partition {pid!r} is already in the memory ledger")
        free = self.available
        # Dynamic partitions above their Minimum can give memory back (balloon) to make room.
        donors = self._donors()
        if settings.startup > self.available_to_start:
            raise HvError(
                "InsufficientMemory",
                f"Not enough memory in the system to start the virtual machine '{vm_name}': "
                f"it needs {settings.startup // MIB} MB and "
                f"{self.available_to_start // MIB} MB is available.",
            )
        short = settings.startup - free
        for _, spare, q in donors:  # lowest priority gives first
            if short <= 0:
                break
            give = min(spare, short)
            donor = self._parts[q]
            donor.assign(donor.assigned - give, now)
            self._reclaimed[q] = donor.assigned
            short -= give
        self._parts[pid] = _Partition(vm_name, settings, now)
        return settings.startup

    def take_reclaimed(self) -> dict[str, int]:
        """{pid: new assignment} of partitions `admit` shrank to make room (apply, then forget)."""
        out, self._reclaimed = self._reclaimed, {}
        return out

    def release(self, pid: str) -> int:
        """Free everything the partition held and return how much; unknown pid frees 0."""
        p = self._parts.pop(pid, None)
        return p.assigned if p else 0

    def report_demand(self, pid: str, demand: int) -> None:
        """Record the guest's committed bytes; `balance()` acts on it."""
        if not is_int(demand) or demand < 0:
            raise HvError("BadRequest", f"demand must be a non-negative integer, got {demand!r}")
        self._get(pid).demand = demand

    def update_settings(self, pid: str, settings: MemorySettings) -> None:
        """Apply a live `Set-VMMemory`; the next `balance()` moves the assignment."""
        p = self._get(pid)
        settings.validate()
        check_running_change(p.settings, settings)
        p.settings = settings

    def target(self, pid: str) -> int:
        """What the partition would hold with plenty of memory: demand × (1 + Buffer %),
        rounded up to 2 MiB and clamped to [Minimum, Maximum]; Startup for static memory or
        before the guest has reported demand."""
        p = self._get(pid)
        s = p.settings
        if not s.dynamic or p.demand is None:
            return s.startup
        return _clamp(_round_up(-(-p.demand * (100 + s.buffer) // 100)), s.minimum, s.maximum)

    def has_dynamic(self) -> bool:
        """Any partition with Dynamic Memory (only those are ever rebalanced)."""
        return any(p.settings.dynamic for p in self._parts.values())

    def balance(self, now: float) -> dict[str, int]:
        """Rebalance dynamic partitions and return {pid: new assigned} for those that changed.

        With room for every target, each gets its target. Short of that, buffers go first:
        each gets its demand (rounded up, clamped) and what is left of the buffers is split by
        Priority. Short even of demand, each keeps its Minimum and the rest is split by
        Priority up to demand. The result is ordered shrinks first, so a caller applying it in
        order returns pages to the host before another partition takes them.
        """
        pool = (self.capacity - self.root_reserve) // GRANULE
        plan: dict[str, int] = {}  # pid -> granules
        flex: list[tuple[str, _Partition]] = []
        for pid, p in self._parts.items():
            if p.settings.dynamic and p.demand is not None:
                flex.append((pid, p))
            else:
                plan[pid] = self.target(pid) // GRANULE  # static or silent: keeps Startup
        free = pool - sum(plan.values())

        want = {pid: self.target(pid) // GRANULE for pid, _ in flex}
        need = {pid: _clamp(_round_up(p.demand), p.settings.minimum, p.settings.maximum) // GRANULE
                for pid, p in flex}
        floor = {pid: p.settings.minimum // GRANULE for pid, p in flex}
        weight = {pid: p.settings.priority for pid, p in flex}
        if sum(want.values()) <= free:
            plan.update(want)
        else:
            base, top = (need, want) if sum(need.values()) <= free else (floor, need)
            # Minimums always fit: assignments never go below them and only ever sum to <= pool.
            extra = _water_fill(free - sum(base.values()),
                                [(pid, weight[pid], top[pid] - base[pid]) for pid, _ in flex])
            plan.update({pid: base[pid] + extra[pid] for pid, _ in flex})

        shrinks, grows = {}, {}
        for pid, granules in plan.items():
            p = self._parts[pid]
            new = granules * GRANULE
            if new != p.assigned:
                (shrinks if new < p.assigned else grows)[pid] = new
        for pid, new in (*shrinks.items(), *grows.items()):
            self._parts[pid].assign(new, now)
        return {**shrinks, **grows}

    def check_invariants(self) -> None:
        """Raise AssertionError if the ledger is inconsistent (explicit raises survive -O)."""
        held = sum(p.assigned for p in self._parts.values())
        if held + self.root_reserve + self.available != self.capacity:
            raise AssertionError("assigned + root reserve + available != capacity")
        if self.available < 0:
            raise AssertionError(f"pool overcommitted by {-self.available} bytes")
        for pid, p in self._parts.items():
            s = p.settings
            if p.assigned % GRANULE or p.assigned <= 0:
                raise AssertionError(f"{pid}: assignment {p.assigned} is not a positive multiple of 2 MiB")
            if not s.dynamic and p.assigned != s.startup:
                raise AssertionError(f"{pid}: static partition holds {p.assigned}, not startup {s.startup}")
            if s.dynamic and not s.minimum <= p.assigned <= s.maximum:
                raise AssertionError(f"{pid}: assignment {p.assigned} outside [{s.minimum}, {s.maximum}]")
