"""A late or hung scheduler tick (loaded host, SIGSTOPped hypervisor) must not hold a partition
stopped for seconds afterwards: debt is capped at one period of its VPs (issue 9)."""
from __future__ import annotations

from hypervisor.cpu_scheduler import CpuScheduler, ProcessorSettings

PERIOD = 0.1


def test_overrun_during_a_hung_tick_costs_at_most_about_a_period():
    sched = CpuScheduler(2, PERIOD, 0.002)
    sched.add("p", ProcessorSettings(count=1, reserve=0, maximum=30, relative_weight=100), 0.0)
    used, now = 0.0, 0.0
    for _ in range(20):   # a steady burner at its 30 % cap
        res = sched.tick(now, {"p": used})
        step = 0.01
        if "p" not in res.stop and not sched._parts["p"].stopped:
            used += step
        now += step
    # the shell hangs for 2 s while the partition runs flat out
    used += 2.0
    now += 2.0
    sched.tick(now, {"p": used})
    stopped_for = 0.0
    t = now
    while t < now + 3.0:
        sched.tick(t, {"p": used})
        if sched._parts["p"].stopped:
            stopped_for += 0.01
        else:
            used += 0.01
        t += 0.01
    assert sched._parts["p"].debt <= 1 * PERIOD + 1e-9
    assert stopped_for < 3.0 * 0.8   # at the cap it is stopped ~70 % of the time, not 3 s solid
