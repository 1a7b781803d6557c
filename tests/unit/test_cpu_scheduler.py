"""Unit and property tests for the pure CPU scheduler (hypervisor/cpu_scheduler.py).

`FakeHost` is a fake clock plus a fake process model: each partition burns min(Count, demand)
CPUs while not stopped; an oversubscribed host is shared max-min fairly per VP (as a fair
kernel shares threads). It obeys every TickResult, sleeps until next_wakeup (optionally late,
to exercise debt) and checks the per-tick invariants on the way.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.cpu_scheduler import (SHARES_TICK_DUTY, TICK_DUTY, CpuScheduler, Demand,
                                      ProcessorSettings, TickResult, allocate, paced_wakeup)
from hypervisor.runtime.errors import HvError

PERIOD = 0.1
MIN_TICK = 0.002


class FakeHost:
    def __init__(self, host_cpus: int, late: float = 0.0, seed: int = 0, history: int = 400):
        self.sched = CpuScheduler(host_cpus, PERIOD, MIN_TICK, history_periods=history)
        self.host = host_cpus
        self.late = late
        self.rng = random.Random(seed)
        self.t = 0.0
        self.usage: dict[str, float] = {}
        self.demand: dict[str, object] = {}
        self.count: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.stopped_since: dict[str, float] = {}
        self.longest_stop: dict[str, float] = {}
        self.ticks = 0

    def add(self, pid: str, s: ProcessorSettings, demand) -> None:
        self.sched.add(pid, s, self.t, 0.0)
        self.usage[pid], self.demand[pid], self.count[pid] = 0.0, demand, s.count
        self.longest_stop[pid] = 0.0

    def _rates(self) -> dict[str, float]:
        """Max-min fair per VP, as a fair kernel shares threads: each VP gets an equal slice
        of the host unless it wants less, and what it leaves goes to the others."""
        want = {}
        for pid, d in self.demand.items():
            d = d(self.t) if callable(d) else d
            want[pid] = 0.0 if pid in self.stopped else min(self.count[pid], d)
        rates, left = {}, float(self.host)
        vps = sum(self.count[p] for p in want if want[p] > 0)
        for pid in sorted((p for p in want if want[p] > 0),
                          key=lambda p: want[p] / self.count[p]):
            rates[pid] = min(want[pid], left * self.count[pid] / vps)
            left, vps = left - rates[pid], vps - self.count[pid]
        return {pid: rates.get(pid, 0.0) for pid in want}

    def step(self) -> TickResult:
        res = self.sched.tick(self.t, dict(self.usage))
        self.ticks += 1
        assert not (res.stop & res.cont)
        assert not (res.stop & self.stopped), "stop must be a running->stopped transition"
        assert res.cont <= self.stopped, "cont must be a stopped->running transition"
        for pid in res.stop:
            self.stopped_since[pid] = self.t
        for pid in res.cont:
            self.longest_stop[pid] = max(self.longest_stop[pid],
                                         self.t - self.stopped_since.pop(pid))
        self.stopped = (self.stopped | res.stop) - res.cont
        assert self.sched.all_stopped() == self.stopped
        assert res.next_wakeup >= self.t + MIN_TICK - 1e-12
        assert res.next_wakeup <= self.t + PERIOD + 1e-9, "never sleeps past a period end"
        for pid in self.stopped:  # nothing is stopped without cause
            s = self.sched._parts[pid]
            assert s.paused or self.sched.budget(pid) <= 1e-9
        return res

    def run(self, seconds: float) -> None:
        end = self.t + seconds
        while self.t < end - 1e-12:
            res = self.step()
            nxt = min(end, res.next_wakeup + self.rng.uniform(0, self.late))
            for pid, r in self._rates().items():
                self.usage[pid] += r * (nxt - self.t)
            self.t = nxt

    def cpus(self, pid: str, since_period: int = 0) -> float:
        """Average CPUs consumed over recorded whole periods from `since_period` on."""
        periods = self.sched.stats(pid)["periods"][since_period:]
        return sum(c for _, c, _ in periods) / (len(periods) * PERIOD)


# -- ProcessorSettings -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(reserve=150), "Reserve must be an integer 0-100, got 150"),
    (dict(reserve=-1), "Reserve must be an integer 0-100, got -1"),
    (dict(maximum=101), "Maximum must be an integer 0-100, got 101"),
    (dict(relative_weight=0), "RelativeWeight must be an integer 1-10000, got 0"),
    (dict(relative_weight=10001), "RelativeWeight must be an integer 1-10000, got 10001"),
    (dict(count=0), "Count must be an integer 1-4 (the host's logical processors), got 0"),
    (dict(count=5), "Count must be an integer 1-4 (the host's logical processors), got 5"),
    (dict(count=True), "Count must be an integer 1-4 (the host's logical processors), got True"),
    (dict(reserve=50.0), "Reserve must be an integer 0-100, got 50.0"),
    (dict(maximum="100"), "Maximum must be an integer 0-100, got '100'"),
    (dict(reserve=60, maximum=50), "Reserve (60 %) may not exceed Maximum (50 %)"),
])
def test_validate_names_field_and_range(kwargs, message):
    with pytest.raises(HvError) as exc:
        ProcessorSettings(**kwargs).validate(host_cpus=4)
    assert exc.value.code == "BadRequest"
    assert exc.value.message == message


def test_settings_defaults_and_cpus():
    s = ProcessorSettings()
    s.validate(1)
    assert (s.count, s.reserve, s.maximum, s.relative_weight) == (1, 0, 100, 100)
    s = ProcessorSettings(count=4, reserve=25, maximum=50)
    assert s.reserved_cpus == 1.0 and s.cap_cpus == 2.0


# -- admission -------------------------------------------------------------------------------

def test_admission_counts_reserves_in_cpus():
    sched = CpuScheduler(2)
    sched.add("a", ProcessorSettings(count=2, reserve=75), now=0.0)   # 1.5 CPUs
    assert sched.reserve_available_percent() == pytest.approx(25.0)
    with pytest.raises(HvError) as exc:
        sched.add("b", ProcessorSettings(count=2, reserve=75), now=0.0)
    assert exc.value.code == "InsufficientCpu"
    assert "needs 1.50 CPUs of reserve but only 0.50 are available" in exc.value.message
    assert "b" not in sched._parts
    sched.add("b", ProcessorSettings(count=1, reserve=50), now=0.0)   # exactly fills the host
    assert sched.reserve_available_percent() == pytest.approx(0.0)


def test_admission_holds_for_idle_and_paused_partitions_and_frees_on_remove():
    sched = CpuScheduler(1)
    sched.add("a", ProcessorSettings(reserve=100), now=0.0)
    sched.set_paused("a", True)
    with pytest.raises(HvError) as exc:  # a reserve is refused even when the others are idle
        sched.check_admission(ProcessorSettings(reserve=1))
    assert exc.value.code == "InsufficientCpu"
    sched.remove("a")
    sched.check_admission(ProcessorSettings(reserve=100))
    assert sched.reserve_available_percent() == 100.0


def test_update_rechecks_admission_excluding_itself():
    sched = CpuScheduler(2)
    sched.add("a", ProcessorSettings(count=2, reserve=50), now=0.0)
    sched.add("b", ProcessorSettings(count=1, reserve=50), now=0.0)
    sched.update("a", ProcessorSettings(count=2, reserve=75))        # 1.5 + 0.5 = 2: fits
    with pytest.raises(HvError) as exc:
        sched.update("a", ProcessorSettings(count=2, reserve=80))
    assert exc.value.code == "InsufficientCpu"
    assert sched._parts["a"].settings.reserve == 75
    with pytest.raises(HvError) as exc:
        sched.update("a", ProcessorSettings(count=3))
    assert exc.value.code == "BadRequest"


def test_unknown_and_duplicate_partitions():
    sched = CpuScheduler(2)
    sched.add("a", ProcessorSettings(), now=0.0)
    with pytest.raises(HvError) as exc:
        sched.add("a", ProcessorSettings(), now=0.0)
    assert exc.value.code == "AlreadyExists"
    for call in (lambda: sched.remove("x"), lambda: sched.stats("x"),
                 lambda: sched.update("x", ProcessorSettings()),
                 lambda: sched.set_paused("x", True), lambda: sched.is_stopped("x")):
        with pytest.raises(HvError) as exc:
            call()
        assert exc.value.code == "NotFound"
    with pytest.raises(HvError):
        CpuScheduler(0)


# -- allocate (the pure entitlement rule) ----------------------------------------------------

@st.composite
def demand_sets(draw):
    cap = draw(st.integers(1, 8))
    n = draw(st.integers(1, 6))
    out, reserved = {}, 0.0
    for i in range(n):
        count = draw(st.integers(1, cap))
        maximum = draw(st.integers(0, 100))
        reserve = draw(st.integers(0, maximum))
        if reserved + reserve / 100 * count > cap:
            reserve = 0
        reserved += reserve / 100 * count
        limit = maximum / 100 * count
        want = draw(st.floats(0, limit)) if draw(st.booleans()) else limit
        out[f"p{i}"] = Demand(reserve / 100 * count, limit, want, draw(st.integers(1, 10000)))
    return cap, out


@settings(max_examples=200, deadline=None)
@given(demand_sets())
def test_allocate_invariants(case):
    cap, demands = case
    rates = allocate(cap, demands)
    assert sum(rates.values()) <= cap + 1e-9
    for k, d in demands.items():
        assert -1e-12 <= rates[k] <= d.limit + 1e-9
        assert rates[k] >= min(d.reserve, d.want) - 1e-9           # reserves first
    if sum(rates.values()) < cap - 1e-6:                           # work-conserving
        assert all(rates[k] >= d.limit - 1e-6 for k, d in demands.items())
    # Spare beyond reserves goes by weight: two partitions that both still have room
    # received extra in proportion to their weights.
    open_ = [k for k, d in demands.items() if rates[k] < min(d.want, d.limit) - 1e-6]
    for a in open_:
        for b in open_:
            da, db = demands[a], demands[b]
            ea, eb = rates[a] - min(da.reserve, da.want), rates[b] - min(db.reserve, db.want)
            assert ea * db.weight == pytest.approx(eb * da.weight, rel=1e-6, abs=1e-9)


def test_allocate_reserves_then_weight():
    rates = allocate(2.0, {"a": Demand(1.0, 2.0, 2.0, 100), "b": Demand(0.0, 2.0, 2.0, 100)})
    assert rates == pytest.approx({"a": 1.5, "b": 0.5})  # reserve met, spare split 1:1
    rates = allocate(2.0, {"a": Demand(1.0, 2.0, 0.2, 100), "b": Demand(0.0, 2.0, 2.0, 100)})
    assert rates == pytest.approx({"a": 0.2, "b": 1.8})  # an idle reserve is lent out


# -- enforcement in the fake host ------------------------------------------------------------

@pytest.mark.parametrize("late", [0.0, 0.005])
def test_uncontended_partition_is_never_stopped_and_not_polled(late):
    host = FakeHost(4, late=late)
    host.add("a", ProcessorSettings(count=2), demand=5.0)
    host.add("b", ProcessorSettings(count=2), demand=0.3)
    host.run(3.0)
    assert not host.stopped and set(host.stopped_since) == set()
    assert host.ticks <= 3.0 / PERIOD + 2              # period ends only
    assert host.cpus("a") == pytest.approx(2.0, rel=0.06)
    assert host.cpus("b") == pytest.approx(0.3, rel=0.06)


def test_every_busy_partition_runs_every_period():
    host = FakeHost(1, late=0.002)
    for pid, weight, cap in (("a", 100, 100), ("b", 300, 100), ("c", 100, 20)):
        host.add(pid, ProcessorSettings(maximum=cap, relative_weight=weight), demand=1.0)
    host.run(5.0)
    for pid in "abc":
        assert host.longest_stop[pid] <= PERIOD + 0.003
    # c is capped at 0.2; a and b split the other 0.8 by 1:3.
    assert host.cpus("c", 3) == pytest.approx(0.2, abs=0.01)
    assert host.cpus("a", 3) == pytest.approx(0.2, abs=0.02)
    assert host.cpus("b", 3) == pytest.approx(0.6, abs=0.02)


def test_weights_split_spare_time():
    host = FakeHost(2)
    host.add("a", ProcessorSettings(count=2, relative_weight=100), demand=2.0)
    host.add("b", ProcessorSettings(count=2, relative_weight=300), demand=2.0)
    host.run(4.0)
    assert host.cpus("a", 5) == pytest.approx(0.5, abs=0.03)
    assert host.cpus("b", 5) == pytest.approx(1.5, abs=0.03)
    periods = host.sched.stats("a")["periods"][5:]
    assert all(e == pytest.approx(0.05) for e, _, _ in periods)


def test_cap_holds_over_long_run_despite_late_ticks():
    host = FakeHost(4, late=0.003, seed=1)
    host.add("a", ProcessorSettings(count=2, maximum=30), demand=2.0)
    host.run(10.0)
    st_ = host.sched.stats("a")
    pct_of_count = st_["consumed"] / (2 * host.t) * 100
    assert 29.0 <= pct_of_count <= 31.0
    assert host.longest_stop["a"] <= PERIOD + 0.01     # continued every period
    # Throttled VP-seconds: stopped ~70 % of the wall time, times 2 VPs.
    assert st_["throttled"] == pytest.approx(0.7 * host.t * 2, rel=0.05)
    assert 10 < host.ticks / host.t < 60                # a few ticks per period, not polling


def test_reserve_is_met_under_contention():
    host = FakeHost(2)
    host.add("a", ProcessorSettings(count=2, reserve=75, relative_weight=1), demand=2.0)
    host.add("b", ProcessorSettings(count=2, relative_weight=10000), demand=2.0)
    host.run(3.0)
    assert host.cpus("a", 3) >= 1.5 - 0.02
    assert host.cpus("b", 3) == pytest.approx(0.5, abs=0.03)


def test_idle_share_goes_to_others_and_returns_on_wakeup():
    host = FakeHost(1)
    host.add("a", ProcessorSettings(), demand=1.0)
    host.add("b", ProcessorSettings(reserve=60), demand=lambda t: 1.0 if t >= 2.0 else 0.0)
    host.run(2.0)
    assert host.cpus("a", 5) >= 0.9                     # only b's small headroom is held back
    host.run(2.0)
    assert host.cpus("b", 22) == pytest.approx(0.8, abs=0.03)   # reserve 0.6 + half the rest
    assert host.cpus("a", 22) == pytest.approx(0.2, abs=0.03)
    # b's first busy period already got most of its due: rates were redone mid-period.
    assert host.sched.stats("b")["periods"][20][1] >= 0.06


def test_pause_gets_nothing_and_resume_continues():
    host = FakeHost(1)
    host.add("a", ProcessorSettings(), demand=1.0)
    host.add("b", ProcessorSettings(), demand=1.0)
    host.run(1.0)
    host.sched.set_paused("a", True)
    res = host.step()
    assert "a" in res.stop and host.sched.is_stopped("a")
    host.run(1.0)
    periods = host.sched.stats("a")["periods"]
    assert all(e == 0 and c == 0 and t == 0 for e, c, t in periods[11:])
    assert host.cpus("b", 11) == pytest.approx(1.0)
    assert host.sched.budget("a") == 0.0
    host.sched.set_paused("a", False)
    res = host.step()
    assert "a" in res.cont
    host.run(1.0)
    assert host.cpus("a", 22) == pytest.approx(0.5, abs=0.03)


def test_paused_time_is_not_throttled_time():
    host = FakeHost(1)
    host.add("a", ProcessorSettings(maximum=50), demand=1.0)
    host.run(0.07)                                      # a is throttled from 0.05
    assert host.sched.is_stopped("a")
    host.sched.set_paused("a", True)
    host.run(0.5)
    host.sched.set_paused("a", False)
    host.run(0.5)
    host.step()
    s = host.sched.stats("a")
    # Throttled 0.05-0.07 (until the pause was seen), then half of each period after resume.
    assert s["throttled"] == pytest.approx(0.02 + 0.25, abs=0.02)
    assert s["consumed"] == pytest.approx(0.05 + 0.25, abs=0.02)


def test_remove_forgets_and_reports_stopped_for_shutdown():
    host = FakeHost(1)
    host.add("a", ProcessorSettings(maximum=10), demand=1.0)
    host.add("b", ProcessorSettings(), demand=0.0)
    host.sched.set_paused("b", True)
    host.run(0.05)
    assert host.sched.all_stopped() == {"a", "b"}
    host.sched.remove("a")
    assert host.sched.all_stopped() == {"b"}
    host.sched.tick(host.t + 0.01, {})                 # missing keys: no new measurement


def test_stats_ledger():
    host = FakeHost(4, history=20)
    host.add("a", ProcessorSettings(), demand=1.0)
    host.run(3.0)
    host.step()                                       # measure up to now
    s = host.sched.stats("a")
    assert s["cpu_percent_last_second"] == pytest.approx(25.0)
    assert s["avg_cpu_percent"] == pytest.approx(25.0)
    assert s["consumed"] == pytest.approx(3.0)
    assert s["entitled"] == pytest.approx(3.0)
    assert s["throttled"] == 0.0
    assert len(s["periods"]) == 20


def test_first_wakeup_is_when_budget_can_run_out():
    sched = CpuScheduler(4)
    sched.add("a", ProcessorSettings(count=2, maximum=50), now=10.0)
    res = sched.tick(10.0, {"a": 0.0})
    assert res.next_wakeup == pytest.approx(10.05)    # 0.1 CPU-s left at 2 CPUs
    res = sched.tick(10.05, {"a": 0.1})
    assert res.stop == {"a"} and res.next_wakeup == pytest.approx(10.1)
    res = sched.tick(10.1, {"a": 0.1})
    assert res.cont == {"a"}


# -- property: random mixes on a fake host ----------------------------------------------------

@st.composite
def host_mixes(draw):
    cpus = draw(st.integers(1, 4))
    parts, reserved = [], 0.0
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(1, cpus))
        maximum = draw(st.integers(1, 100))
        reserve = draw(st.integers(0, maximum))
        if reserved + reserve / 100 * count > cpus:
            reserve = 0
        reserved += reserve / 100 * count
        demand = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 8.0]))
        parts.append((ProcessorSettings(count, reserve, maximum,
                                        draw(st.integers(1, 10000))), demand))
    return cpus, parts, draw(st.sampled_from([0.0, 0.002])), draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host_mixes())
def test_random_mixes_hold_capacity_caps_and_reserves(case):
    cpus, parts, late, seed = case
    host = FakeHost(cpus, late=late, seed=seed)
    for i, (s, demand) in enumerate(parts):
        host.add(f"p{i}", s, demand)
    host.run(3.0)
    host.step()                                       # measure and close the last period
    pids = [f"p{i}" for i in range(len(parts))]
    n_periods = len(host.sched.stats(pids[0])["periods"])
    for k in range(n_periods):
        rows = [host.sched.stats(p)["periods"][k] for p in pids]
        assert sum(e for e, _, _ in rows) <= cpus * PERIOD * (1 + 1e-6)
    for pid, (s, demand) in zip(pids, parts):
        st_ = host.sched.stats(pid)
        for e, _, _ in st_["periods"]:
            assert e <= s.cap_cpus * PERIOD + 1e-9
        assert st_["consumed"] / (s.count * host.t) * 100 <= s.maximum + 1.0
        if demand >= s.count and s.reserve:          # wants at least its reserve throughout
            assert st_["entitled"] >= 0.95 * s.reserved_cpus * host.t  # first period ramps up
        if demand and sum(s.reserved_cpus for s, _ in parts) < cpus - 1e-9:
            assert st_["consumed"] > 0                # with any spare, nobody busy starves


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(host_mixes(), st.lists(st.tuples(st.floats(0.01, 0.4), st.integers(0, 3),
                                        st.sampled_from(["pause", "resume", "update", "remove"]),
                                        st.integers(0, 100)), max_size=8))
def test_random_events_keep_invariants(case, events):
    cpus, parts, late, seed = case
    host = FakeHost(cpus, late=late, seed=seed)
    live = {}
    for i, (s, demand) in enumerate(parts):
        host.add(f"p{i}", s, demand)
        live[f"p{i}"] = s
    for delay, which, action, value in events:
        host.run(delay)                                  # step() checks every tick
        pid = f"p{which % len(parts)}"
        if pid not in live:
            continue
        if action in ("pause", "resume"):
            host.sched.set_paused(pid, action == "pause")
        elif action == "update":
            s = live[pid]
            new = ProcessorSettings(s.count, s.reserve, max(s.reserve, value), 1 + value * 99)
            host.sched.update(pid, new)
            live[pid] = new
        else:
            host.sched.remove(pid)
            host.stopped.discard(pid)                    # the shell continues it on removal
            del live[pid], host.demand[pid], host.usage[pid]
    host.run(0.5)
    host.step()
    for pid, s in live.items():
        periods = host.sched.stats(pid)["periods"]
        assert all(c >= 0 and t >= 0 for _, c, t in periods)
        assert all(e <= s.cap_cpus * PERIOD + 1e-9 for e, _, _ in periods[-4:])  # current cap
    rows = [host.sched.stats(pid)["periods"] for pid in live]
    for k in range(min(map(len, rows), default=0)):
        assert sum(r[k][0] for r in rows) <= cpus * PERIOD * (1 + 1e-6)


def test_outside_load_scales_a_contended_split_but_not_a_lone_partition():
    sched = CpuScheduler(2, period=0.1)
    sched.add("light", ProcessorSettings(count=2, relative_weight=100), now=0.0)
    sched.add("heavy", ProcessorSettings(count=2, relative_weight=300), now=0.0)
    sched.set_outside_load(0.4)
    sched.tick(0.0, {"light": 0.0, "heavy": 0.0})
    sched.tick(0.1, {"light": 0.04, "heavy": 0.12})
    sched.tick(0.2, {"light": 0.08, "heavy": 0.24})
    last = {p: sched.stats(p)["periods"][-1][0] for p in ("light", "heavy")}
    assert last["heavy"] == pytest.approx(3 * last["light"], rel=0.01)
    assert last["light"] + last["heavy"] == pytest.approx(0.16, rel=0.01)  # (2 - 0.4) CPUs
    lone = CpuScheduler(2, period=0.1)
    lone.add("solo", ProcessorSettings(count=2), now=0.0)
    lone.set_outside_load(0.4)
    res = lone.tick(0.0, {"solo": 0.0})
    assert not res.stop and lone.budget("solo") >= 0.19  # uncontended: may use all it can


def test_stats_without_periods_is_the_same_ledger():
    sched = CpuScheduler(2, period=0.1)
    sched.add("a", ProcessorSettings(maximum=50), now=0.0)
    for k in range(1, 6):
        sched.tick(k * 0.1, {"a": k * 0.05})
    full, brief = sched.stats("a"), sched.stats("a", periods=False)
    assert "periods" not in brief and len(full["periods"]) == 5
    assert {k: v for k, v in full.items() if k != "periods"} == brief


def test_quiet_only_when_every_partition_idles_uncapped():
    """`quiet` lets the shell tick rarely (issue 16): only idle, uncapped, unreserved partitions."""
    host = FakeHost(2)
    host.add("a", ProcessorSettings(), demand=0.0)
    host.add("b", ProcessorSettings(), demand=0.0)
    host.run(1.0)
    assert host.step().quiet
    host.sched.update("b", ProcessorSettings(maximum=50))
    assert not host.step().quiet                       # a cap is enforced every period
    host.sched.update("b", ProcessorSettings())
    host.run(0.5)
    assert host.step().quiet
    busy = FakeHost(2)
    busy.add("a", ProcessorSettings(), demand=1.0)
    busy.run(1.0)
    assert not busy.step().quiet                       # a busy partition is wanting


def test_idle_headroom_is_not_contention_for_outside_load_scaling():
    """200 idle partitions hold 10 CPUs of idle headroom on a 2-CPU host; load outside the
    partitions must not shrink their entitlements as if they were contended (issue 16)."""
    def budgets(outside: float) -> float:
        sched = CpuScheduler(2, period=PERIOD, min_tick=0.004)
        for i in range(200):
            sched.add(f"p{i}", ProcessorSettings(), 0.0)
        t = 0.0
        for _ in range(5):
            t += PERIOD
            sched.tick(t, {f"p{i}": 0.0 for i in range(200)})
        sched.set_outside_load(outside)
        sched.tick(t + PERIOD, {f"p{i}": 0.0 for i in range(200)})
        return sched.budget("p0")
    assert budgets(1.8) == pytest.approx(budgets(0.0))


def test_idle_bursts_on_an_uncontended_host_are_not_stopped():
    """200 idle partitions on 2 CPUs are entitled to 0.01 CPU each; a wake-up of a few ms must
    not stop one while the host has room (issue 16), but a capped one is still held."""
    sched = CpuScheduler(2, period=PERIOD, min_tick=0.004)
    names = [f"p{i}" for i in range(200)]
    for n in names:
        sched.add(n, ProcessorSettings(), 0.0)
    sched.add("capped", ProcessorSettings(maximum=1), 0.0)
    used = dict.fromkeys(names + ["capped"], 0.0)
    t = 0.0
    for _ in range(5):
        t += PERIOD
        sched.tick(t, used)
    used["p0"] += 0.004          # a 4 ms wake-up, well above 0.01 CPU × 0.1 s
    used["capped"] += 0.004      # above its 1 % cap: held
    result = sched.tick(t + PERIOD / 2, used)
    assert "p0" not in result.stop
    assert "capped" in result.stop
    assert result.next_wakeup >= t + PERIOD / 2 + 0.004


@given(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 0.5), st.floats(0.01, 1.0))
def test_paced_wakeup_keeps_the_ticks_within_their_share_of_a_cpu(wakeup, end, cpu, duty):
    at = paced_wakeup(wakeup, end, cpu, duty)
    assert at >= wakeup                                  # never earlier than a budget needs
    assert at - end >= cpu * (1 - duty) / duty - 1e-9    # tick CPU / (tick + gap) <= duty
    if end + cpu * (1 - duty) / duty <= wakeup:
        assert at == wakeup                              # a cheap tick is not delayed at all


def test_paced_wakeup_spaces_costly_ticks_and_leaves_cheap_ones_alone():
    # 200 partitions: a 6.7 ms tick waits 20 ms (a quarter of one CPU at most), not the 1 ms
    # its first budget asked for
    assert paced_wakeup(10.001, 10.0, 0.0067, duty=0.25) == pytest.approx(10.0201)
    # a few partitions: a 0.2 ms tick keeps the scheduler's own 5 ms deadline
    assert paced_wakeup(10.005, 10.0, 0.0002, duty=0.25) == 10.005


_SETTINGS = st.builds(lambda reserve, maximum: ProcessorSettings(count=1, reserve=min(reserve, maximum),
                                                                 maximum=maximum),
                      st.sampled_from([0, 0, 5]), st.sampled_from([100, 100, 40]))


@given(st.lists(st.tuples(st.sampled_from(["add", "update", "remove"]), st.integers(0, 5), _SETTINGS),
                max_size=40))
def test_tick_duty_is_the_limits_duty_exactly_while_a_partition_has_a_cap_or_reserve(ops):
    sched = CpuScheduler(64, PERIOD, MIN_TICK)
    now = 0.0
    for op, n, s in ops:
        pid, now = f"p{n}", now + 0.01
        try:
            {"add": lambda: sched.add(pid, s, now), "update": lambda: sched.update(pid, s),
             "remove": lambda: sched.remove(pid)}[op]()
        except HvError:
            pass   # already there / not there: nothing changed
        limited = any(sched.settings(p).maximum < 100 or sched.settings(p).reserve > 0
                      for p in sched._parts)
        assert sched.tick_duty() == (TICK_DUTY if limited else SHARES_TICK_DUTY)


def test_a_burst_of_uncapped_partitions_paces_ticks_at_the_shares_duty():
    sched = CpuScheduler(2, PERIOD, MIN_TICK)
    for i in range(200):
        sched.add(f"p{i}", ProcessorSettings(), 0.0)
    # a 6 ms tick over 200 partitions that only share the host by weight waits 54 ms: a tenth
    # of one CPU at most
    assert paced_wakeup(1.001, 1.0, 0.006, sched.tick_duty()) == pytest.approx(1.054)
    sched.update("p7", ProcessorSettings(maximum=50))   # a cap to hold: finer ticks again
    assert paced_wakeup(1.001, 1.0, 0.006, sched.tick_duty()) == pytest.approx(1.018)
