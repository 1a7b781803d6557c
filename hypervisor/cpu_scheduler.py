"""The CPU ledger and scheduler (DESIGN.md §4): pure, no I/O, no clock, no signals.

Hyper-V's `Set-VMProcessor` semantics: `Count` VPs (the partition can use at most Count CPUs),
`Reserve` % of Count guaranteed under contention, `Maximum` % of Count as a hard ceiling,
`RelativeWeight` splitting spare time. The hypervisor daemon is the thin shell: each tick it
measures every partition's cumulative CPU seconds (whole process tree), calls `tick(now, usage)`,
sends SIGSTOP / SIGCONT for `TickResult.stop` / `.cont` and sleeps until `.next_wakeup`.

Key types: `ProcessorSettings` (validated settings; defined in hypervisor/hypercall_defs.py so
callers need not import the scheduler), `CpuScheduler` (ledger + enforcement),
`TickResult`, and `allocate()` (the pure entitlement rule, also useful on its own).

Algorithm. Time is cut into periods on a fixed grid (default 100 ms). Each partition has an
entitlement *rate* in CPUs, recomputed at every period start and whenever demand changes
(add / remove / update / pause / an idle estimate proving too low). `allocate()` computes it:
  1. reserves first, to partitions that want the CPU: min(reserve, want);
  2. spare capacity water-filled by weight among partitions that want more, up to their want;
  3. whatever is still unclaimed water-filled by weight up to each limit (work-conserving:
     idle partitions' shares go to whoever can use them).
  Each rate is at most min(Maximum, Count) CPUs and the rates sum to at most host CPUs, so a
  period's entitlements (the integral of the rates) never exceed host_cpus × period.
"Want" is estimated from measured use: a partition throttled in the last period, or one that
used >= 90 % of its entitlement, wants all it may have; any other wants 1.25 × its highest use
over the last 3 periods plus a headroom of 0.05 CPU per VP. If an idle-looking partition burns
through that within a period it is marked wanting and rates are recomputed at once, for the
rest of the period, so reserves and fair shares follow demand within one tick.
Enforcement: a partition runs until its consumption in the period reaches its entitlement minus
debt; it is then stopped until the period ends. Overrun (ticks are discrete, so consumption
overshoots) becomes debt carried into later periods, so the long-run average meets the cap.
Debt is capped at one period of the partition's VPs (count × period), so a late or hung tick
never holds a partition stopped for more than about a period afterwards.
Unused entitlement is not banked. A partition whose rate is its full Count cannot outrun its
entitlement, so it is never stopped (an uncontended partition with Maximum 100) and its debt,
which can only be measurement noise, is forgiven.
Throttled time = wall time stopped by the scheduler × Count (VP-seconds denied), not counting
time paused. A pause noticed while throttled ends the throttle at the next tick.

Quiet host (issue 16): when every partition is idle — none wanting, throttled, capped or
reserved — `TickResult.quiet` says so, and the shell may tick less often than every period (the
hypervisor daemon: QUIET_TICK). A partition that starts to burn is then seen at that later tick:
its overrun becomes debt (at most one period of its VPs) and it is wanting, so ticks are
per-period again from then on; the only cost is that first unmeasured stretch.

Performance: `tick()` is O(n) in partitions; a rate recomputation is O(n log n) (a sort for the
water-filling) and happens at most once per period plus once per demand change. The shell is
woken only when a running, capped partition can first exhaust its budget (remaining / Count:
it burns at most Count CPUs) or the period ends, never sooner than `min_tick` — no fixed-rate
polling. An idle partition with neither a cap nor a reserve sets no wake-up of its own: a
sudden burst from it is seen at the period end and its overrun repaid as debt.

Limits. SIGSTOP can hold a partition back, never push it forward: inside a period the host
kernel decides who runs first, so a partition with few VPs beside many-VP burners can end a
period short of its reserve although it was entitled to it (in simulated worst mixes it still
got >= ~80 %). The idle headroom costs busy partitions up to 0.05 CPU per idle VP on a saturated
host, and on a host whose reserves add up to 100 % a partition without a reserve may get
nothing. A tiny rate (weight 1 beside 10000s) still runs one tick when continued and then pays
the overrun back as debt over many periods.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping, NamedTuple

from hypervisor.hypercall_defs import ProcessorSettings
from hypervisor.runtime.errors import HvError

WANT_FRACTION = 0.9     # used this much of its entitlement -> it wants more
STARVED_FRACTION = 0.1   # run-queue wait >= 10 % of a period: starved, so wanting
IDLE_MARGIN = 1.25      # an idle partition wants its recent use times this ...
IDLE_HEADROOM = 0.05    # ... plus this many CPUs per VP, so a wake-up is not stopped at once
DEMAND_WINDOW = 3       # periods of history behind the idle estimate
IDLE_BURST = 0.01       # CPU-s per VP an uncapped partition may overrun when uncontended
CONTENDED_FRACTION = 0.9  # partitions' use + outside load >= this × host CPUs: contended
_EPS = 1e-9             # CPU-seconds; float noise, not time
TICK_DUTY = 0.25        # the ticks themselves may use at most this share of one CPU ...
SHARES_TICK_DUTY = 0.1  # ... or this, while no partition is capped or reserved (tick_duty())


@dataclass
class TickResult:
    stop: frozenset[str]    # SIGSTOP now (running -> stopped)
    cont: frozenset[str]    # SIGCONT now (stopped -> running)
    next_wakeup: float      # call tick() again at this time (the caller's clock)
    quiet: bool = False     # nothing to enforce within a period: every partition idle (not
                            # wanting, not held), none capped or reserved; see `tick()`


def paced_wakeup(next_wakeup: float, tick_end: float, tick_cpu: float,
                 duty: float = TICK_DUTY) -> float:
    """When to tick next: at `next_wakeup` (the first budget to run out), but no sooner than the
    last tick's own CPU (`tick_cpu`, ended at `tick_end`) allows at `duty` of one CPU.

    A tick measures every partition, so it costs milliseconds with hundreds of them; ticking at
    each small budget's end then spent a whole CPU on the scheduler itself (issue 16: 200 VMs
    contended after a burst of starts, 77 ticks/s of 6.7 ms). Paced, enforcement coarsens
    instead: what a partition overruns between two ticks is measured and repaid as debt."""
    return max(next_wakeup, tick_end + tick_cpu * (1.0 - duty) / duty)


def _has_limits(settings: ProcessorSettings) -> bool:
    return settings.maximum < 100 or settings.reserve > 0


class Demand(NamedTuple):
    """Input to `allocate()`, all in CPUs: want <= limit, reserve <= limit. (A tuple: one is
    made per partition at every rate recomputation.)"""
    reserve: float
    limit: float
    want: float
    weight: int


def _water_fill(capacity: float, items: list[tuple[str, int, float]]) -> dict[str, float]:
    """Split `capacity` by weight, each item (key, weight, room) getting at most its room."""
    out: dict[str, float] = {}
    items = sorted((i for i in items if i[2] > _EPS), key=lambda i: i[2] / i[1])
    total_w = sum(w for _, w, _ in items)
    left = max(0.0, capacity)
    # Ascending room/weight: once one item is not saturated, none after it is either.
    for key, w, room in items:
        give = min(room, left * w / total_w)
        out[key] = give
        left = max(0.0, left - give)
        total_w -= w
    return out


def allocate(capacity: float, demands: Mapping[str, Demand]) -> dict[str, float]:
    """Entitlement rates (CPUs): reserves, then spare by weight up to want, then up to limit."""
    rate = {k: min(d.reserve, d.want) for k, d in demands.items()}
    total = sum(rate.values())
    if total > capacity:  # only if admission was bypassed; shrink rather than overcommit
        rate = {k: r * capacity / total for k, r in rate.items()}
        return rate
    for room_of in (lambda d: d.want, lambda d: d.limit):
        spare = capacity - sum(rate.values())
        extra = _water_fill(spare, [(k, d.weight, room_of(d) - rate[k])
                                    for k, d in demands.items()])
        for k, e in extra.items():
            rate[k] += e
    return rate


class _Partition:
    __slots__ = ("settings", "paused", "stopped", "throttled_since", "wanting", "rate", "acc",
                 "consumed", "throttled", "was_throttled", "debt", "last_usage", "added_at",
                 "history", "totals", "waited", "last_wait", "recent", "bursting")

    def __init__(self, settings: ProcessorSettings, now: float, usage: float, keep: int):
        self.settings = settings
        self.paused = False
        self.stopped = False                        # as the shell left it (throttle or pause)
        self.throttled_since: float | None = None   # set while stopped by the scheduler
        self.wanting = True                         # no history yet: assume a booting guest
        self.rate = 0.0                             # entitlement rate now, CPUs
        self.acc = 0.0                              # entitlement this period up to the mark
        self.consumed = 0.0                         # CPU-s this period
        self.throttled = 0.0                        # VP-s this period
        self.was_throttled = False
        self.debt = 0.0
        self.last_usage = usage
        self.added_at = now
        self.history: deque[tuple[float, float, float, float]] = deque(maxlen=keep)
        self.totals = [0.0, 0.0, 0.0]               # entitled, consumed, throttled
        self.waited = 0.0                           # run-queue wait this period, s
        self.last_wait: float | None = None
        self.bursting = False                       # idle until a tick of this period found
                                                    # it over its idle estimate (see tick())
        self.recent = 0.0                           # highest use rate (CPUs) of the last
                                                    # DEMAND_WINDOW periods, kept by note_period

    @property
    def count(self) -> int:
        return self.settings.count

    def unlimited(self) -> bool:
        return self.rate >= self.count - _EPS

    def want(self, headroom: bool = True) -> float:
        limit = self.settings.cap_cpus
        if self.wanting:
            return limit
        return min(limit, self.recent * IDLE_MARGIN + (IDLE_HEADROOM * self.count if headroom else 0.0))

    def note_period(self, row: tuple[float, float, float, float]) -> None:
        """Append a closed period's (length, entitled, consumed, throttled) and refresh `recent`."""
        history = self.history
        history.append(row)
        n = len(history)
        recent = 0.0
        for i in range(n - DEMAND_WINDOW if n > DEMAND_WINDOW else 0, n):
            length, _, consumed, _ = history[i]
            if length > 0 and consumed / length > recent:
                recent = consumed / length
        self.recent = recent


class CpuScheduler:
    """Per-partition CPU entitlement, enforcement decisions and the ledger; see module doc."""

    def __init__(self, host_cpus: int, period: float = 0.1, min_tick: float = 0.002,
                 history_periods: int = 50):
        if isinstance(host_cpus, bool) or not isinstance(host_cpus, int) or host_cpus < 1:
            raise HvError("BadRequest", f"host_cpus must be a positive integer, got {host_cpus!r}")
        if not (period > 0 and 0 < min_tick <= period and history_periods >= 1):
            raise HvError("BadRequest", "need period > 0, 0 < min_tick <= period, history >= 1")
        self.host_cpus = host_cpus
        self.outside_load = 0.0   # CPUs busy outside every partition (root work, other load)
        self.period = period
        self.min_tick = min_tick
        self.history_periods = history_periods
        self._parts: dict[str, _Partition] = {}
        self._start: float | None = None    # current period [start, end) ...
        self._end = 0.0
        self._origin, self._k = 0.0, 0      # ... = origin + [k, k+1) * period: no float drift
        self._mark = 0.0                    # rates have been integrated into `acc` up to here
        self._now = float("-inf")
        self._dirty = False                 # demand changed: recompute rates at the next tick
        self._contended = False             # partitions' real demand (no headroom) > host CPUs
        self._limited = 0                   # partitions with a cap or a reserve (tick_duty())

    # -- admission -------------------------------------------------------------------------
    def _reserved(self, exclude: str | None = None) -> float:
        return sum(p.settings.reserved_cpus for pid, p in self._parts.items() if pid != exclude)

    def check_admission(self, settings: ProcessorSettings, exclude: str | None = None) -> None:
        settings.validate(self.host_cpus)
        free = self.host_cpus - self._reserved(exclude)
        if settings.reserved_cpus > free + 1e-9:
            raise HvError("InsufficientCpu",
                          f"Reserve {settings.reserve} % of {settings.count} VPs needs "
                          f"{settings.reserved_cpus:.2f} CPUs of reserve but only "
                          f"{max(0.0, free):.2f} are available")

    def set_outside_load(self, cpus: float) -> None:
        """The shell's measure of CPU used outside the partitions (smoothed by the caller)."""
        cpus = min(max(0.0, float(cpus)), float(self.host_cpus))
        if abs(cpus - self.outside_load) > 0.02:
            self.outside_load = cpus
            self._dirty = True

    def reserve_available_percent(self) -> float:
        return max(0.0, (self.host_cpus - self._reserved()) / self.host_cpus * 100)

    # -- membership ------------------------------------------------------------------------
    def _get(self, pid: str) -> _Partition:
        try:
            return self._parts[pid]
        except KeyError:
            raise HvError("NotFound", f"no partition {pid!r} in the CPU scheduler") from None

    def add(self, pid: str, settings: ProcessorSettings, now: float, usage: float = 0.0) -> None:
        if pid in self._parts:
            raise HvError("AlreadyExists", f"partition {pid!r} is already scheduled")
        self.check_admission(settings)
        now = max(now, self._now)
        self._now = now
        if self._start is None:
            self._begin_grid(now)
        elif now >= self._end - _EPS:
            self._close_period(now)  # others' unmeasured use lands in the next period
        self._parts[pid] = _Partition(settings, now, usage, self.history_periods)
        self._limited += _has_limits(settings)
        # entitled from the next tick, before which its guest cannot run long: the daemon ticks
        # within a period of a new partition. Recomputing every share at each add made a burst
        # of N starts cost O(N²) (issue 16).
        self._dirty = True

    def update(self, pid: str, settings: ProcessorSettings) -> None:
        p = self._get(pid)
        self.check_admission(settings, exclude=pid)
        self._limited += _has_limits(settings) - _has_limits(p.settings)
        p.settings = settings
        self._dirty = True

    def settings(self, pid: str) -> ProcessorSettings:
        return self._get(pid).settings

    def remove(self, pid: str) -> None:
        self._limited -= _has_limits(self._get(pid).settings)
        del self._parts[pid]
        self._dirty = True

    def tick_duty(self) -> float:
        """The share of one CPU the ticks may use (`paced_wakeup`). A cap or a reserve is a
        limit a late tick lets a partition overrun, so with one the ticks may cost more; with
        none they only split a contended host by weight, where what a partition overran is
        repaid as debt at the next tick anyway. With hundreds of partitions a tick costs
        milliseconds, so this bounds what the scheduler costs while a burst of starts
        contends the host (issue 16)."""
        return TICK_DUTY if self._limited else SHARES_TICK_DUTY

    def set_paused(self, pid: str, paused: bool) -> None:
        p = self._get(pid)
        if p.paused != paused:
            p.paused = paused
            p.wanting = not paused   # a resumed guest is assumed busy until measured
            self._dirty = True

    # -- the tick --------------------------------------------------------------------------
    def _remaining(self, p: _Partition) -> float:
        """CPU-seconds p may still consume before this period ends."""
        return p.acc + p.rate * (self._end - self._mark) - p.debt - p.consumed

    def _retarget(self, now: float) -> None:
        for p in self._parts.values():
            p.acc += p.rate * (now - self._mark)
        self._mark = now
        demands = {pid: Demand(p.settings.reserved_cpus, p.settings.cap_cpus, p.want(),
                               p.settings.relative_weight)
                   for pid, p in self._parts.items() if not p.paused}
        rates = allocate(float(self.host_cpus), demands)
        # Contended means partitions really want more than the host has: the idle headroom
        # does not count (200 idle VMs hold 10 CPUs of headroom on a 2-CPU host; issue 16).
        # Contended for the idle burst (see tick()): the partitions' measured use in the last
        # period plus the load outside them fills the host. Measured, not wanted: a partition
        # throttled in the last period wants everything, and 200 of them would otherwise keep
        # one another "contended" for ever.
        used = sum(p.history[-1][2] / p.history[-1][0] for p in self._parts.values()
                   if p.history and p.history[-1][0] > 0)
        self._contended = used + self.outside_load >= CONTENDED_FRACTION * self.host_cpus
        if self.outside_load > 0 and sum(p.want(headroom=False) for p in self._parts.values()
                                         if not p.paused) > self.host_cpus:
            # Contended, and part of the host is busy outside the partitions, where SIGSTOP
            # cannot reach: scale entitlements to what is really left, so the split between
            # partitions keeps its proportions (reserves are never scaled below themselves).
            scale = max(0.0, self.host_cpus - self.outside_load) / self.host_cpus
            rates = {k: max(r * scale, min(demands[k].reserve, demands[k].want))
                     for k, r in rates.items()}
        for pid, p in self._parts.items():
            p.rate = rates.get(pid, 0.0)
        self._dirty = False

    def _begin_grid(self, now: float) -> None:
        self._origin, self._k = now, 0
        self._start, self._end, self._mark = now, now + self.period, now

    def _close_period(self, now: float) -> None:
        # Stay on the grid unless whole periods were missed; then restart the grid at now.
        late = now >= self._end + self.period
        t = now if late else min(now, self._end)  # now may be a hair before end (float noise)
        mark, length, period, contended = self._mark, t - self._start, self.period, self._contended
        for p in self._parts.values():
            settings, consumed = p.settings, p.consumed
            entitled = p.acc + p.rate * (t - mark)
            if p.throttled_since is not None:
                p.throttled += (t - p.throttled_since) * p.count
                p.throttled_since = t
            p.note_period((length, entitled, consumed, p.throttled))
            totals = p.totals
            totals[0] += entitled
            totals[1] += consumed
            totals[2] += p.throttled
            # Debt is bounded by one period of the partition's VPs: overrun beyond that was not
            # the partition's doing but the shell's (a late or hung tick: a loaded host, a
            # SIGSTOPped hypervisor), and repaying it would hold the partition stopped for
            # seconds once the shell runs again (issue 9: the memory-step stall under load).
            # ... and by one period of its own rate (at least IDLE_BURST per VP): an idle guest
            # entitled to 0.01 CPU that overran by a tick while booting would otherwise be held
            # stopped for ten seconds, and lose its heartbeat (issue 16: 200 VMs starting).
            if not contended and settings.maximum >= 100 and settings.reserve <= 0:
                p.debt = 0.0   # a share's debt only matters while others wait for the CPU
            else:
                count = settings.count
                cap = min(count * period, max(p.rate * period, IDLE_BURST * count))
                p.debt = min(max(0.0, p.debt + consumed - entitled), cap)
            # Entitled to nothing (just resumed, Maximum 0, starved) also counts as wanting.
            # Runnable but starved by the host (run-queue wait) is wanting too: without it a
            # partition crowded out by load outside the partitions looks idle and loses its share.
            # Starved counts only if running the time it waited would have reached its
            # entitlement: an idle guest that waits on a busy host's run queue at each of its
            # rare wake-ups is not asking for more (issue 16: 200 idle VMs on a loaded host).
            want = WANT_FRACTION * entitled - _EPS
            p.wanting = not p.paused and (p.was_throttled or consumed >= want or
                                          (p.waited > STARVED_FRACTION * length > 0 and
                                           consumed + p.waited >= want))
            p.acc = p.consumed = p.throttled = p.waited = 0.0
            p.was_throttled = p.throttled_since is not None
            p.bursting = False
        if late:
            self._begin_grid(t)
        else:
            self._k += 1
            self._start, self._mark = t, t
            self._end = self._origin + (self._k + 1) * self.period
        self._retarget(t)
        for p in self._parts.values():
            if p.unlimited():
                p.debt = 0.0

    def tick(self, now: float, usage: dict[str, float],
             waiting: dict[str, float] | None = None) -> TickResult:
        """`usage`: cumulative CPU seconds per partition; `waiting` (optional): cumulative
        seconds its processes spent runnable on a run queue (schedstat's run_delay)."""
        now = max(now, self._now)
        for pid, total in (waiting or {}).items():
            p = self._parts.get(pid)
            if p is not None:
                if p.last_wait is not None:
                    p.waited += max(0.0, total - p.last_wait)
                p.last_wait = total
        self._now = now
        if self._start is None:
            self._begin_grid(now)
        for pid, total in usage.items():
            p = self._parts.get(pid)
            if p is not None:
                # A smaller total means the tree lost a member: re-baseline, count nothing.
                p.consumed += max(0.0, total - p.last_usage)
                p.last_usage = total
        if now >= self._end - _EPS:
            self._close_period(now)
        parts = self._parts
        end, mark = self._end, self._mark
        for p in parts.values():
            # inline `_remaining()` / `unlimited()`: this loop runs every tick
            if (not p.paused and not p.stopped and not p.wanting
                    and p.rate < p.settings.count - _EPS
                    and p.acc + p.rate * (end - mark) - p.debt - p.consumed <= _EPS):
                p.wanting = True     # the idle estimate was too low: share again now
                p.bursting = True
                self._dirty = True
        if self._dirty:
            self._retarget(now)
            end, mark = self._end, self._mark

        stop, cont, wake, quiet = set(), set(), end, True
        contended = self._contended
        for pid, p in parts.items():
            settings = p.settings
            count = settings.count
            remaining = p.acc + p.rate * (end - mark) - p.debt - p.consumed
            limited = p.rate < count - _EPS
            paused = p.paused
            # Uncontended, a partition held only by its share (no cap, no reserve: the rest of
            # the host is free) may burst IDLE_BURST per VP past it, still counted as debt: an
            # idle guest's wake-up must not be stopped and continued (issue 16: 200 idle VMs
            # get 0.01 CPU each, less than one heartbeat of a Python guest in a 100 ms period).
            # Contended, so may one that was idle until this period (`bursting`): its debt is
            # then kept and repaid, so shares hold over time, but a loaded host (contended by
            # work outside the partitions, which SIGSTOP cannot reach) does not stop and
            # continue every idle guest at each of its wake-ups (issue 16: 200 idle VMs beside
            # other load cost the hypervisor 30 % of a core in signals and ticks).
            slack = IDLE_BURST * count if (not contended or p.bursting) and settings.maximum >= 100 \
                and settings.reserve <= 0 else 0.0
            throttle = not paused and limited and remaining <= _EPS - slack
            halt = paused or throttle
            if halt != p.stopped:
                (stop if halt else cont).add(pid)
                p.stopped = halt
            # Throttle time runs from the tick that decides it to the tick that ends it,
            # including a switch between paused and throttled while staying stopped.
            if throttle:
                if p.throttled_since is None:
                    p.throttled_since, p.was_throttled = now, True
            elif p.throttled_since is not None:
                p.throttled += (now - p.throttled_since) * count
                p.throttled_since = None
            # Wake when a busy, capped or reserved partition can first run out. Any other idle
            # one is left to the period end: if it wakes up meanwhile, its overrun becomes debt
            # (at most one period's worth), which saves the shell most wake-ups on a busy host.
            if not halt and limited and (p.wanting or settings.maximum < 100
                                         or settings.reserve > 0):
                t = now + (remaining + slack) / count
                if t < wake:
                    wake = t
            if quiet and not paused and (throttle or p.wanting or settings.maximum < 100
                                         or settings.reserve > 0):
                quiet = False
        return TickResult(frozenset(stop), frozenset(cont), max(wake, now + self.min_tick), quiet)

    # -- queries ---------------------------------------------------------------------------
    def is_stopped(self, pid: str) -> bool:
        return self._get(pid).stopped

    def budget(self, pid: str) -> float:
        """CPU-seconds pid may still use in the current period, as of the last tick."""
        p = self._get(pid)
        return 0.0 if p.paused else max(0.0, self._remaining(p))

    def all_stopped(self) -> frozenset[str]:
        return frozenset(pid for pid, p in self._parts.items() if p.stopped)

    def totals(self, pid: str) -> tuple[float, float, float]:
        """`stats()`'s cumulative (entitled, consumed, throttled) alone (cheap: the ledger
        history samples every partition's every second)."""
        p = self._parts[pid]
        now = max(self._now, self._mark)
        throttled = p.throttled
        if p.throttled_since is not None:
            throttled += (now - p.throttled_since) * p.count
        t = p.totals
        return (t[0] + p.acc + p.rate * (now - self._mark), t[1] + p.consumed, t[2] + throttled)

    def stats(self, pid: str, periods: bool = True) -> dict:
        """The ledger of pid; `periods=False` leaves out the per-period rows (cheaper)."""
        p = self._get(pid)
        now = max(self._now, self._mark)
        throttled = p.throttled
        if p.throttled_since is not None:
            throttled += (now - p.throttled_since) * p.count
        # Last ~1 s from whole periods, newest first; the current partial one if none yet.
        length = used = 0.0
        for ln, _, c, _ in reversed(p.history):
            if length >= 1.0 - _EPS:
                break
            length, used = length + ln, used + c
        if length <= 0 and self._start is not None:
            length, used = now - self._start, p.consumed
        host = self.host_cpus
        alive = now - p.added_at
        return {
            "entitled": p.totals[0] + p.acc + p.rate * (now - self._mark),
            "consumed": p.totals[1] + p.consumed,
            "throttled": p.totals[2] + throttled,
            "cpu_percent_last_second": used / length / host * 100 if length > 0 else 0.0,
            "avg_cpu_percent": (p.totals[1] + p.consumed) / alive / host * 100 if alive > 0
            else 0.0,
            **({"periods": [(e, c, t) for _, e, c, t in p.history]} if periods else {}),
        }
