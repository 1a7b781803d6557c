"""The ledger history (hypervisor/ledger_history.py): per-interval differences, the bounded
window, `since` reads, and invariants under arbitrary totals (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.ledger_history import COLUMNS, LedgerHistory

MIB = 1 << 20


def test_samples_are_differences_of_the_totals():
    h = LedgerHistory(interval=1.0, window=10.0)
    h.add("p1", now=100.0)
    h.record(101.0, {"p1": (0.5, 0.4, 0.0, 64 * MIB, 0)})
    h.record(102.0, {"p1": (1.5, 0.9, 0.3, 128 * MIB, 100 * MIB)})
    s = h.samples("p1")
    assert [x.time for x in s] == [101.0, 102.0]
    assert [x.interval for x in s] == [1.0, 1.0]
    assert s[0].cpu_entitled == pytest.approx(0.5) and s[1].cpu_entitled == pytest.approx(1.0)
    assert s[1].cpu_consumed == pytest.approx(0.5) and s[1].cpu_throttled == pytest.approx(0.3)
    assert (s[1].memory_assigned, s[1].memory_demand) == (128 * MIB, 100 * MIB)
    assert h.totals("p1") == {"entitled": 1.5, "consumed": 0.9, "throttled": 0.3}
    assert h.totals("nobody") == {"entitled": 0.0, "consumed": 0.0, "throttled": 0.0}


def test_window_is_bounded_and_keeps_the_newest():
    h = LedgerHistory(interval=1.0, window=5.0)
    for t in range(1, 21):
        h.record(float(t), {"p": (t * 1.0, t * 0.5, 0.0, MIB, 0)})
    cols = h.read("p")
    assert cols["time"] == [16.0, 17.0, 18.0, 19.0, 20.0]
    assert cols["cpu_consumed"] == [0.5] * 5


def test_since_and_limit_select_the_newest_samples():
    h = LedgerHistory(interval=1.0, window=100.0)
    for t in range(1, 11):
        h.record(float(t), {"p": (float(t), 0.0, 0.0, 0, 0)})
    assert h.read("p", since=7.0)["time"] == [8.0, 9.0, 10.0]
    assert h.read("p", since=10.0)["time"] == []
    assert h.read("p", since=0.5)["time"] == [float(t) for t in range(1, 11)]
    assert h.read("p", limit=2)["time"] == [9.0, 10.0]
    assert h.read("p", since=3.0, limit=100)["time"][0] == 4.0
    assert set(h.read("unknown")) == set(COLUMNS) and h.read("unknown")["time"] == []


def test_forget_drops_a_partition_and_a_reset_counts_from_zero():
    h = LedgerHistory(interval=1.0, window=10.0)
    h.record(1.0, {"a": (5.0, 5.0, 0.0, 0, 0), "b": (1.0, 1.0, 0.0, 0, 0)})
    h.forget("a")
    assert "a" not in h and "b" in h and len(h) == 1
    h.record(2.0, {"b": (0.5, 0.2, 0.0, 0, 0)})      # totals went down: not a negative sample
    assert h.read("b")["cpu_consumed"][-1] == 0.0
    h.record(2.0, {"b": (9.0, 9.0, 0.0, 0, 0)})      # time did not advance: ignored
    assert len(h.read("b")["time"]) == 2


def test_bad_shape_is_refused():
    with pytest.raises(ValueError):
        LedgerHistory(interval=0, window=1)
    with pytest.raises(ValueError):
        LedgerHistory(interval=2, window=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 5.0), st.floats(0, 3), st.floats(0, 3), st.floats(0, 3),
                          st.integers(0, 1 << 34), st.integers(0, 1 << 34)), min_size=1, max_size=40),
       st.integers(1, 12))
def test_differences_add_up_and_the_ring_stays_bounded(steps, capacity):
    h = LedgerHistory(interval=1.0, window=float(capacity))
    t, tot = 1000.0, [0.0, 0.0, 0.0]
    first = 1000.0 + steps[0][0]     # a ring made by record() counts from one interval before
    for dt, de, dc, dth, assigned, demand in steps:
        t += dt
        tot = [tot[0] + de, tot[1] + dc, tot[2] + dth]
        h.record(t, {"p": (*tot, assigned, demand)})
    cols = h.read("p")
    kept = min(len(steps), capacity)
    assert len(cols["time"]) == kept
    assert cols["time"] == sorted(cols["time"]) and cols["time"][-1] == t
    assert all(v >= 0 for name in ("cpu_entitled", "cpu_consumed", "cpu_throttled") for v in cols[name])
    if kept == len(steps):   # nothing fell out of the window: the differences sum to the totals
        assert sum(cols["cpu_consumed"]) == pytest.approx(tot[1], rel=1e-9, abs=1e-9)
        assert sum(cols["interval"]) == pytest.approx(t - (first - 1.0), rel=1e-9)
    assert cols["memory_assigned"][-1] == steps[-1][4]
