"""A partition's memory bound follows its assignment, a lower bound only after a grace
(hypervisor/partition_cgroup.py): written into a fake cgroup tree, nothing on the machine changes."""
from __future__ import annotations

from pathlib import Path

import structlog

from hypervisor.partition_cgroup import (SHRINK_GRACE, CgroupLayout, PartitionCgroups,
                                         memory_limit)

MIB = 1 << 20


def fake_groups(tmp_path) -> tuple[PartitionCgroups, object]:
    groups = PartitionCgroups(None, "t", structlog.get_logger())   # no cgroups: nothing written
    groups.layout = CgroupLayout("v1", "hvemu-t", root=str(tmp_path))
    limit = Path(groups.layout.memory_file("p1"))
    limit.parent.mkdir(parents=True)
    limit.write_text("0")                                   # the kernel makes these files
    return groups, limit


def test_a_growing_bound_is_written_at_once_a_shrinking_one_after_the_grace(tmp_path):
    groups, limit = fake_groups(tmp_path)
    reclaimed = []
    groups.set_memory("p1", 600 * MIB)
    assert int(limit.read_text()) == memory_limit(600 * MIB)
    groups.set_memory("p1", 192 * MIB, reclaim=lambda: reclaimed.append(1), now=100.0)
    assert int(limit.read_text()) == memory_limit(600 * MIB) and groups.pending
    groups.sweep(now=100.0 + SHRINK_GRACE / 2)
    assert int(limit.read_text()) == memory_limit(600 * MIB) and not reclaimed
    groups.sweep(now=100.0 + SHRINK_GRACE)
    # the released range is punched again first, then the bound is lowered
    assert reclaimed == [1] and int(limit.read_text()) == memory_limit(192 * MIB)
    assert not groups.pending


def test_a_shrink_then_a_grow_within_the_grace_never_lowers_the_bound(tmp_path):
    groups, limit = fake_groups(tmp_path)
    groups.set_memory("p1", 600 * MIB)
    groups.set_memory("p1", 120 * MIB, reclaim=lambda: None, now=0.0)
    groups.set_memory("p1", 700 * MIB, reclaim=lambda: None, now=1.0)
    assert int(limit.read_text()) == memory_limit(700 * MIB) and not groups.pending
    groups.sweep(now=10.0)
    assert int(limit.read_text()) == memory_limit(700 * MIB)


def test_a_second_shrink_keeps_the_first_deadline_and_a_removed_partition_forgets_it(tmp_path):
    groups, limit = fake_groups(tmp_path)
    groups.set_memory("p1", 600 * MIB)
    groups.set_memory("p1", 400 * MIB, reclaim=lambda: None, now=0.0)
    groups.set_memory("p1", 300 * MIB, reclaim=lambda: None, now=SHRINK_GRACE - 0.1)
    groups.sweep(now=SHRINK_GRACE)                    # a guest that keeps shrinking still settles
    assert int(limit.read_text()) == memory_limit(300 * MIB)
    groups.set_memory("p1", 100 * MIB, reclaim=lambda: None, now=50.0)
    groups.remove("p1")
    assert groups._lowering == {}
