"""The memory ledger: settings rules, admission, the balancer, and property tests that drive
random admit / demand / settings / balance / kill sequences and check the invariants."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule,
)

from hypervisor.runtime.errors import HvError
from hypervisor.memory_ledger import (
    GRANULE, MIB, MemoryLedger, MemorySettings, check_running_change,
)

GIB = 1024 * MIB


def dyn(startup=1 * GIB, minimum=512 * MIB, maximum=4 * GIB, buffer=20, priority=50):
    return MemorySettings(dynamic=True, startup=startup, minimum=minimum, maximum=maximum,
                          buffer=buffer, priority=priority)


def code_of(excinfo) -> str:
    return excinfo.value.code


# -- MemorySettings.validate -----------------------------------------------------------------

def test_defaults_are_valid_and_match_hyper_v():
    s = MemorySettings()
    s.validate()
    assert (s.dynamic, s.startup, s.maximum, s.buffer, s.priority) == (False, 512 * MIB, 1024 * GIB, 20, 50)


@pytest.mark.parametrize("change, field", [
    (dict(startup=0), "startup"),
    (dict(startup=3 * MIB), "startup"),
    (dict(minimum=-2 * MIB), "minimum"),
    (dict(maximum=1.5), "maximum"),
    (dict(startup=True), "startup"),
    (dict(buffer=4), "buffer"),
    (dict(buffer=2001), "buffer"),
    (dict(buffer=True), "buffer"),
    (dict(priority=101), "priority"),
    (dict(priority=-1), "priority"),
    (dict(priority="50"), "priority"),
    (dict(dynamic=1), "dynamic"),
])
def test_validate_names_the_field(change, field):
    with pytest.raises(HvError) as exc:
        dataclasses.replace(MemorySettings(), **change).validate()
    assert code_of(exc) == "BadRequest" and field in exc.value.message


def test_dynamic_needs_minimum_startup_maximum_in_order():
    with pytest.raises(HvError, match="minimum <= startup <= maximum"):
        dyn(startup=256 * MIB, minimum=512 * MIB).validate()
    with pytest.raises(HvError, match="minimum <= startup <= maximum"):
        dyn(startup=8 * GIB, maximum=4 * GIB).validate()
    # Static memory ignores Minimum / Maximum ordering, as Hyper-V does.
    MemorySettings(startup=8 * GIB, maximum=4 * GIB).validate()


def test_buffer_and_priority_bounds_are_inclusive():
    for buffer, priority in ((5, 0), (2000, 100)):
        dyn(buffer=buffer, priority=priority).validate()


# -- check_running_change --------------------------------------------------------------------

@pytest.mark.parametrize("change", [
    dict(maximum=8 * GIB), dict(minimum=256 * MIB), dict(buffer=100), dict(priority=90),
])
def test_running_changes_allowed(change):
    check_running_change(dyn(), dataclasses.replace(dyn(), **change))


@pytest.mark.parametrize("change, field", [
    (dict(maximum=2 * GIB), "maximum"),
    (dict(minimum=1 * GIB), "minimum"),
    (dict(startup=2 * GIB), "startup"),
    (dict(dynamic=False), "dynamic"),
])
def test_running_changes_refused_name_the_field(change, field):
    with pytest.raises(HvError) as exc:
        check_running_change(dyn(), dataclasses.replace(dyn(), **change))
    assert code_of(exc) == "InvalidState" and field in exc.value.message


# -- MemoryLedger basics ---------------------------------------------------------------------

@pytest.mark.parametrize("capacity, reserve", [
    (0, 0), (3 * MIB, 0), (4 * GIB, 3 * MIB), (4 * GIB, 4 * GIB), (4 * GIB, -2 * MIB), (4.0, 0),
])
def test_ledger_rejects_bad_pool(capacity, reserve):
    with pytest.raises(HvError) as exc:
        MemoryLedger(capacity, reserve)
    assert code_of(exc) == "BadRequest"


def test_admit_assigns_startup_and_release_frees_it():
    ledger = MemoryLedger(4 * GIB, 1 * GIB)
    assert ledger.admit("p1", "web1", MemorySettings(startup=1 * GIB), now=0) == 1 * GIB
    assert ledger.available == 2 * GIB and ledger.partitions() == ["p1"]
    assert ledger.release("p1") == 1 * GIB
    assert ledger.release("p1") == 0  # idempotent
    assert ledger.available == 3 * GIB and ledger.partitions() == []


def test_admit_shortfall_message_names_need_and_free():
    ledger = MemoryLedger(2 * GIB, 256 * MIB)
    ledger.admit("p1", "db", MemorySettings(startup=1 * GIB), now=0)
    with pytest.raises(HvError) as exc:
        ledger.admit("p2", "web1", MemorySettings(startup=1 * GIB), now=0)
    assert code_of(exc) == "InsufficientMemory"
    assert exc.value.message == (
        "Not enough memory in the system to start the virtual machine 'web1': "
        "it needs 1024 MB and 768 MB is available.")
    assert ledger.partitions() == ["p1"]


def test_admit_twice_and_unknown_pids():
    ledger = MemoryLedger(4 * GIB, 0)
    ledger.admit("p1", "a", MemorySettings(), now=0)
    with pytest.raises(HvError) as exc:
        ledger.admit("p1", "a", MemorySettings(), now=0)
    assert code_of(exc) == "AlreadyExists"
    for call in (lambda: ledger.assigned("x"), lambda: ledger.report_demand("x", 0),
                 lambda: ledger.update_settings("x", MemorySettings()), lambda: ledger.stats("x", 0)):
        with pytest.raises(HvError) as exc:
            call()
        assert code_of(exc) == "NotFound"
    with pytest.raises(HvError) as exc:
        ledger.report_demand("p1", -1)
    assert code_of(exc) == "BadRequest"


def test_admit_validates_settings():
    with pytest.raises(HvError) as exc:
        MemoryLedger(4 * GIB, 0).admit("p1", "a", MemorySettings(buffer=1), now=0)
    assert code_of(exc) == "BadRequest"


# -- balance -------------------------------------------------------------------------------

def test_balance_targets_demand_plus_buffer_rounded_up():
    ledger = MemoryLedger(16 * GIB, 0)
    ledger.admit("p1", "a", dyn(buffer=20), now=0)
    assert ledger.balance(now=1) == {}  # no demand reported yet: keeps Startup
    ledger.report_demand("p1", 1000 * MIB)  # × 1.2 = 1200 MiB, already a granule multiple
    assert ledger.balance(now=2) == {"p1": 1200 * MIB}
    ledger.report_demand("p1", 1001 * MIB)  # × 1.2 = 1201.2 MiB -> 1202 MiB
    assert ledger.balance(now=3) == {"p1": 1202 * MIB}
    assert ledger.balance(now=4) == {}  # converged


def test_balance_clamps_to_minimum_and_maximum():
    ledger = MemoryLedger(16 * GIB, 0)
    ledger.admit("p1", "a", dyn(), now=0)
    ledger.report_demand("p1", 0)
    assert ledger.balance(now=1) == {"p1": 512 * MIB}
    ledger.report_demand("p1", 100 * GIB)
    assert ledger.balance(now=2) == {"p1": 4 * GIB}


def test_static_partitions_keep_startup_whatever_the_demand():
    ledger = MemoryLedger(16 * GIB, 0)
    ledger.admit("p1", "a", MemorySettings(startup=2 * GIB), now=0)
    ledger.report_demand("p1", 8 * GIB)
    assert ledger.balance(now=1) == {} and ledger.assigned("p1") == 2 * GIB


def test_live_settings_change_moves_assignment_on_next_balance():
    ledger = MemoryLedger(16 * GIB, 0)
    ledger.admit("p1", "a", dyn(maximum=2 * GIB), now=0)
    ledger.report_demand("p1", 3 * GIB)
    assert ledger.balance(now=1) == {"p1": 2 * GIB}
    ledger.update_settings("p1", dyn(maximum=8 * GIB))
    assert ledger.assigned("p1") == 2 * GIB
    assert ledger.balance(now=2) == {"p1": 3688 * MIB}  # 3 GiB × 1.2 = 3686.4 MiB, rounded up
    with pytest.raises(HvError) as exc:
        ledger.update_settings("p1", dyn(maximum=4 * GIB))
    assert code_of(exc) == "InvalidState"


def test_shortage_drops_buffers_before_touching_demand():
    # Pool 4 GiB: both targets (3 GiB each) do not fit, both demands (1.5 GiB each) do.
    ledger = MemoryLedger(4 * GIB, 0)
    for pid in ("a", "b"):
        ledger.admit(pid, pid, dyn(startup=1 * GIB, buffer=100), now=0)
        ledger.report_demand(pid, 1536 * MIB)  # wants 3 GiB each, needs 1.5 GiB each
    ledger.balance(now=1)
    # Both get their demand and split the remaining 1 GiB of buffer evenly (equal priority).
    assert ledger.assigned("a") == ledger.assigned("b") == 2 * GIB
    ledger.check_invariants()


def test_severe_shortage_splits_above_minimum_by_priority():
    ledger = MemoryLedger(4 * GIB, 0)
    ledger.admit("hi", "hi", dyn(startup=1 * GIB, minimum=1 * GIB, priority=75), now=0)
    ledger.admit("lo", "lo", dyn(startup=1 * GIB, minimum=1 * GIB, priority=25), now=0)
    for pid in ("hi", "lo"):
        ledger.report_demand(pid, 4 * GIB)
    ledger.balance(now=1)
    # 2 GiB above the minimums split 3:1.
    assert ledger.assigned("hi") == 1 * GIB + 1536 * MIB
    assert ledger.assigned("lo") == 1 * GIB + 512 * MIB
    ledger.check_invariants()


def test_shrinks_come_before_grows_and_freed_memory_goes_to_others():
    ledger = MemoryLedger(4 * GIB, 0)
    ledger.admit("a", "a", dyn(startup=2 * GIB), now=0)
    ledger.admit("b", "b", dyn(startup=2 * GIB), now=0)
    ledger.report_demand("a", 3 * GIB - 512 * MIB)  # wants 3 GiB
    ledger.report_demand("b", 512 * MIB)  # wants 614.4 MiB -> 616 MiB
    changes = ledger.balance(now=1)
    assert list(changes) == ["b", "a"]
    assert changes == {"b": 616 * MIB, "a": 3 * GIB}
    ledger.check_invariants()


def test_priority_zero_gets_only_leftovers():
    ledger = MemoryLedger(4 * GIB, 0)
    ledger.admit("z", "z", dyn(startup=1 * GIB, minimum=1 * GIB, priority=0), now=0)
    ledger.admit("p", "p", dyn(startup=1 * GIB, minimum=1 * GIB, priority=1), now=0)
    for pid in ("z", "p"):
        ledger.report_demand(pid, 8 * GIB)
    ledger.balance(now=1)
    assert ledger.assigned("z") == 1 * GIB and ledger.assigned("p") == 3 * GIB


def test_stats_are_time_weighted():
    ledger = MemoryLedger(16 * GIB, 0)
    ledger.admit("p1", "a", dyn(startup=1 * GIB), now=100.0)
    ledger.report_demand("p1", 1706 * MIB)  # × 1.2 = 2047.2 MiB -> 2 GiB
    ledger.balance(now=110.0)
    got = ledger.stats("p1", now=130.0)
    # 10 s at 1 GiB then 20 s at 2 GiB -> 5/3 GiB average.
    assert got["min"] == 1 * GIB and got["max"] == 2 * GIB
    assert got["avg"] == pytest.approx(5 * GIB / 3)
    assert ledger.stats("p1", now=100.0)["avg"] >= 0  # no divide-by-zero


# -- properties ------------------------------------------------------------------------------

granules = st.integers(min_value=1, max_value=64).map(lambda n: n * GRANULE)


@st.composite
def memory_settings(draw):
    if draw(st.booleans()):
        lo, mid, hi = sorted(draw(st.lists(granules, min_size=3, max_size=3)))
        return MemorySettings(dynamic=True, minimum=lo, startup=mid, maximum=hi,
                              buffer=draw(st.integers(5, 2000)), priority=draw(st.integers(0, 100)))
    return MemorySettings(startup=draw(granules))


def needed(ledger: MemoryLedger, pid: str) -> int:
    """Demand without buffer, rounded up and clamped; Startup where demand does not count."""
    s, demand = ledger.settings(pid), ledger.demand(pid)
    if not s.dynamic or demand is None:
        return s.startup
    return min(s.maximum, max(s.minimum, -(-demand // GRANULE) * GRANULE))


class LedgerMachine(RuleBasedStateMachine):
    """Random lives of partitions; after every step the ledger's contract holds."""

    pids = Bundle("pids")

    @initialize(capacity=st.integers(32, 256), reserve=st.integers(0, 16))
    def make(self, capacity, reserve):
        self.ledger = MemoryLedger(capacity * GRANULE, reserve * GRANULE)
        self.now = 0.0
        self.count = 0
        self.dead: set[str] = set()

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(target=pids, s=memory_settings())
    def admit(self, s):
        self.count += 1
        pid = f"p{self.count}"
        before = self.ledger.available
        try:
            assert self.ledger.admit(pid, pid, s, self.tick()) == s.startup
        except HvError as exc:
            assert exc.code == "InsufficientMemory" and s.startup > before
            self.dead.add(pid)
        return pid

    @rule(pid=pids, demand=st.integers(0, 200 * GRANULE))
    def demand(self, pid, demand):
        if pid not in self.dead:
            self.ledger.report_demand(pid, demand)

    @rule(pid=pids, data=st.data())
    def change_settings(self, pid, data):
        if pid in self.dead:
            return
        old = self.ledger.settings(pid)
        new = dataclasses.replace(
            old,
            minimum=data.draw(st.integers(1, old.minimum // GRANULE)) * GRANULE,
            maximum=old.maximum + data.draw(st.integers(0, 8)) * GRANULE,
            buffer=data.draw(st.integers(5, 2000)),
            priority=data.draw(st.integers(0, 100)),
        )
        self.ledger.update_settings(pid, new)

    @rule(pid=consumes(pids))
    def kill(self, pid):
        held = 0 if pid in self.dead else self.ledger.assigned(pid)
        before = self.ledger.available
        assert self.ledger.release(pid) == held
        assert self.ledger.available == before + held
        self.dead.add(pid)

    @rule()
    def balance(self):
        ledger = self.ledger
        pool = ledger.capacity - ledger.root_reserve
        targets = {pid: ledger.target(pid) for pid in ledger.partitions()}
        needs = {pid: needed(ledger, pid) for pid in ledger.partitions()}
        ledger.balance(self.tick())
        if sum(targets.values()) <= pool:  # plenty: one balance reaches every target
            assert all(ledger.assigned(pid) == t for pid, t in targets.items())
        if sum(needs.values()) <= pool:  # short: buffers go before anyone drops below demand
            assert all(ledger.assigned(pid) >= n for pid, n in needs.items())
        for pid in ledger.partitions():
            s = ledger.settings(pid)
            if s.dynamic and ledger.demand(pid) is not None:
                assert ledger.assigned(pid) <= targets[pid]  # never past the target

    @invariant()
    def contract(self):
        if not hasattr(self, "ledger"):
            return
        self.ledger.check_invariants()
        assert not self.dead & set(self.ledger.partitions())  # nothing held for the dead
        for pid in self.ledger.partitions():
            s = self.ledger.settings(pid)
            if not s.dynamic or self.ledger.demand(pid) is None:
                assert self.ledger.assigned(pid) == s.startup


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
TestLedgerMachine = LedgerMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(priorities=st.lists(st.integers(0, 100), min_size=2, max_size=8),
       minimum=st.integers(1, 8), extra=st.integers(0, 200), demand=st.integers(1, 100),
       buffer=st.integers(5, 200))
def test_higher_priority_never_gets_less_under_contention(priorities, minimum, extra, demand, buffer):
    n = len(priorities)
    ledger = MemoryLedger((n * minimum + extra) * GRANULE, 0)
    for i, priority in enumerate(priorities):
        s = MemorySettings(dynamic=True, minimum=minimum * GRANULE, startup=minimum * GRANULE,
                           maximum=(minimum + 100) * GRANULE, buffer=buffer, priority=priority)
        ledger.admit(f"p{i}", f"vm{i}", s, now=0)
        ledger.report_demand(f"p{i}", demand * GRANULE)
    ledger.balance(now=1)
    ledger.check_invariants()
    got = sorted((priorities[i], ledger.assigned(f"p{i}")) for i in range(n))
    assert all(a[1] <= b[1] for a, b in zip(got, got[1:]) if a[0] < b[0])
    # Memory is not left idle while someone is below its target.
    if any(ledger.assigned(pid) < ledger.target(pid) for pid in ledger.partitions()):
        assert ledger.available == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(memory_settings(), min_size=1, max_size=6), st.data())
def test_plenty_of_memory_converges_in_one_balance(all_settings, data):
    ledger = MemoryLedger(1024 * 1024 * GRANULE, 0)  # far more than any target can be
    for i, s in enumerate(all_settings):
        ledger.admit(f"p{i}", f"vm{i}", s, now=0)
        ledger.report_demand(f"p{i}", data.draw(st.integers(0, 300 * GRANULE)))
    ledger.balance(now=1)
    assert all(ledger.assigned(pid) == ledger.target(pid) for pid in ledger.partitions())
    assert ledger.balance(now=2) == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 50), st.integers(5, 300)),
                min_size=2, max_size=8),
       st.integers(0, 100))
def test_shortage_takes_buffers_before_demand_whatever_the_priority(vms, slack):
    # Every VM starts at 1 granule; the pool holds every demand plus `slack` granules.
    pool = sum(demand for _, demand, _ in vms) + slack
    ledger = MemoryLedger(pool * GRANULE, 0)
    for i, (priority, demand, buffer) in enumerate(vms):
        ledger.admit(f"p{i}", f"vm{i}", dyn(startup=GRANULE, minimum=GRANULE, maximum=1024 * GRANULE,
                                            buffer=buffer, priority=priority), now=0)
        ledger.report_demand(f"p{i}", demand * GRANULE)
    ledger.balance(now=1)
    ledger.check_invariants()
    for i, (_, demand, _) in enumerate(vms):
        assert demand * GRANULE <= ledger.assigned(f"p{i}") <= ledger.target(f"p{i}")


def test_admission_reclaims_from_dynamic_partitions_lowest_priority_first():
    ledger = MemoryLedger(1024 * MIB, 256 * MIB)
    for pid, prio in (("a", 90), ("b", 10)):
        ledger.admit(pid, pid, MemorySettings(dynamic=True, startup=128 * MIB, minimum=64 * MIB,
                                              maximum=1024 * MIB, priority=prio), 0.0)
        ledger.report_demand(pid, 600 * MIB)
    ledger.balance(1.0)
    assert ledger.available == 0
    ledger.admit("c", "c", MemorySettings(startup=128 * MIB, minimum=128 * MIB, maximum=128 * MIB), 2.0)
    a_before = ledger.assigned("a")
    shrunk = ledger.take_reclaimed()
    assert list(shrunk) == ["b", "a"]  # the low-priority one gives all it can first
    assert shrunk["b"] == ledger.assigned("b") == 64 * MIB
    assert a_before - shrunk["a"] < 128 * MIB
    ledger.check_invariants()
    assert ledger.take_reclaimed() == {}
    with pytest.raises(HvError) as exc:
        ledger.admit("d", "web9", MemorySettings(startup=700 * MIB, minimum=700 * MIB,
                                                 maximum=700 * MIB), 3.0)
    assert exc.value.code == "InsufficientMemory" and "'web9': it needs 700 MB and 512 MB is available" in exc.value.message
    ledger.check_invariants()
