"""The pure parts of the sandboxes: plans (hypervisor/runtime/sandbox.py), the host's isolation
settings and uid range (hypervisor/runtime/isolation.py), cgroup layout and limits
(hypervisor/partition_cgroup.py). No root needed, nothing on the machine changes."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hypervisor.partition_cgroup import MEMORY_OVERHEAD, CgroupLayout, memory_limit
from hypervisor.runtime import isolation
from hypervisor.runtime import sandbox as sb


def test_full_partition_plan_drops_to_the_vms_uid_inside_every_namespace():
    plan = sb.partition_plan("Full", 2_000_123, 2_000_123, "web1", hide=["/srv/hvemu"])
    assert plan.uid == plan.gid == 2_000_123
    assert plan.host_flags == sb.CLONE_NEWNS
    for flag in (sb.CLONE_NEWUSER, sb.CLONE_NEWNS, sb.CLONE_NEWUTS, sb.CLONE_NEWIPC, sb.CLONE_NEWNET):
        assert plan.user_flags & flag
    assert not plan.user_flags & sb.CLONE_NEWPID      # the worker forks it into one
    kinds = [(m.kind, m.target) for m in plan.host_mounts]
    assert ("proc", "/proc") in kinds and ("tmpfs", "/tmp") in kinds and ("tmpfs", "/dev/shm") in kinds
    assert ("hide", "/srv/hvemu") in kinds
    assert plan.maps == ("0 2000123 1\n", "0 2000123 1\n")   # root inside = the VM's uid outside
    assert plan.hostname == "web1" and plan.loopback_up
    # the maps are its parent's (the worker's) to write, so setgroups stays allowed
    assert plan.maps_by_parent and sb.id_maps(2_000_123, 2_000_123) == plan.maps


def test_without_a_uid_of_its_own_the_guest_writes_its_own_maps():
    assert not sb.partition_plan("UserNamespace", None, None, "a").maps_by_parent
    assert not sb.partition_plan("None", None, None, "a").maps_by_parent


def test_a_home_under_tmp_needs_no_hiding_the_private_tmp_does_it():
    plan = sb.partition_plan("Full", 2_000_001, 2_000_001, "a", hide=["/tmp/hv123"])
    assert not any(m.kind == "hide" for m in plan.host_mounts)


@pytest.mark.parametrize("uid", [None, 0, -1])
def test_full_isolation_refuses_root_or_no_uid(uid):
    with pytest.raises(ValueError):
        sb.partition_plan("Full", uid, uid, "a")
    with pytest.raises(ValueError):
        sb.driver_plan("Full", uid, uid)


def test_user_namespace_mode_has_no_uid_and_no_host_step():
    plan = sb.partition_plan("UserNamespace", None, None, "a")
    assert plan.uid is None and plan.host_flags == 0 and plan.user_flags & sb.CLONE_NEWUSER
    assert plan.notes and "PID" in plan.notes[0]
    assert sb.partition_plan("None", None, None, "a").user_flags == 0


def test_driver_plan_own_uid_mount_and_ipc_namespaces_no_network_namespace():
    plan = sb.driver_plan("Full", 2_003_072, 2_003_072, hide=["/srv/h"])
    assert plan.host_flags == sb.CLONE_NEWNS | sb.CLONE_NEWIPC and plan.user_flags == 0
    assert not plan.dumpable and plan.uid == 2_003_072
    with pytest.raises(ValueError):
        sb.driver_plan("Bogus", 1, 1)


def test_exposures_open_only_the_needed_paths_under_a_closed_folder():
    closed = {"/root"}
    got = sb.exposures(["/root/.pyenv/v/lib", "/root/.pyenv/v", "/usr/lib/python3", "/work/x"],
                       searchable=lambda p: p not in closed)
    assert [(m.kind, m.target, m.options) for m in got] == [("expose", "/root", "/root/.pyenv/v")]
    assert sb.exposures(["/usr/lib"], searchable=lambda p: True) == ()


def test_isolation_uid_ranges_do_not_overlap_and_say_what_is_missing(tmp_path):
    iso = isolation.HostIsolation("Full", 2_004_096, "v1")
    vm_uids = {iso.vm_uid(k) for k in range(isolation.DRIVER_OFFSET - 1)}
    drv_uids = {iso.driver_uid(k) for k in range(isolation.UID_SPAN - isolation.DRIVER_OFFSET)}
    assert not vm_uids & drv_uids and min(vm_uids) > iso.uid_base
    assert max(drv_uids) < iso.uid_base + isolation.UID_SPAN
    with pytest.raises(ValueError):
        iso.vm_uid(isolation.DRIVER_OFFSET)
    assert iso.not_isolated() == []
    none = isolation.HostIsolation("None", 0, None)
    assert none.vm_uid(0) is None and len(none.not_isolated()) == 2
    isolation.save(tmp_path, iso)
    assert isolation.load(tmp_path) == iso
    assert (tmp_path / "isolation.json").stat().st_mode & 0o777 == 0o600


@given(st.sets(st.integers(0, 50), max_size=40))
def test_slot_free_is_the_lowest_unused(used):
    slot = isolation.slot_free(used, 100)
    assert slot not in used and all(s in used for s in range(slot))


def test_cgroup_layout_v1_and_v2():
    v1 = CgroupLayout("v1", "hvemu-abc", "/cg")
    assert v1.memory_file("p3") == "/cg/memory/hvemu-abc/p3/memory.limit_in_bytes"
    assert "/cg/freezer/hvemu-abc/p3" in v1.dirs("p3") and len(v1.dirs("p3")) == 4
    assert v1.freeze_write(True) == ("freezer.state", "FROZEN")
    v2 = CgroupLayout("v2", "hvemu-abc", "/cg")
    assert v2.memory_file("p3") == "/cg/hvemu-abc/p3/memory.max"
    assert v2.freeze_write(False) == ("cgroup.freeze", "0") and v2.dirs("p3") == ["/cg/hvemu-abc/p3"]
    assert memory_limit(64 << 20) == (64 << 20) + MEMORY_OVERHEAD


def test_private_tmp_keeps_code_under_tmp_readable_but_never_a_hidden_home():
    needed = ["/tmp/ci/.venv/lib/python3.11/site-packages", "/tmp/ci", "/usr/lib/python3.11"]
    m = sb.private_tmp("/tmp", "size=1m", hide=["/tmp/hv123"], needed=needed)
    assert m.kind == "tmpfs" and m.binds == ("/tmp/ci",)
    # a home inside the checkout is never exposed by it
    m = sb.private_tmp("/tmp", "size=1m", hide=["/tmp/ci/home"], needed=needed)
    assert m.binds == ("/tmp/ci/.venv/lib/python3.11/site-packages",)
    assert sb.private_tmp("/tmp", "size=1m", needed=["/usr/lib"]).binds == ()


@pytest.mark.parametrize("mode", sb.MODES)
@pytest.mark.parametrize("hide", [["/tmp/hv123"], ["/srv/hvemu"], []])
def test_a_plan_from_precomputed_host_paths_equals_one_computed_on_the_spot(mode, hide):
    """The guest runtime computes `HostPaths` once at import (in the worker fork-server's
    image); every plan made from it is the plan computed from scratch."""
    uid = 2_000_077 if mode == "Full" else None
    paths = sb.host_paths()
    assert sb.partition_plan(mode, uid, uid, "vm", hide=hide, paths=paths) == \
        sb.partition_plan(mode, uid, uid, "vm", hide=hide)
    assert paths.python == tuple(sorted(set(paths.python)))
    assert paths.under_tmp == tuple(p for p in paths.python if p.startswith("/tmp/"))
    assert all(p.startswith("/") for p in paths.python)


def test_host_paths_of_a_checkout_under_tmp_keep_it_in_the_private_tmp():
    python = ("/tmp/ci", "/tmp/ci/.venv/lib/site", "/usr/lib/python3")
    paths = sb.HostPaths(python, (), python[:2])
    plan = sb.partition_plan("Full", 2_000_078, 2_000_078, "vm", hide=["/tmp/hv1"], paths=paths)
    tmp = [m for m in plan.host_mounts if m.target == "/tmp"][0]
    assert tmp.binds == ("/tmp/ci",)
    assert sb.private_tmp("/tmp", tmp.options, ["/tmp/hv1"], paths.python) == tmp


def test_make_dirs_creates_every_level_below_the_top_once(tmp_path):
    top = str(tmp_path)
    sb._make_dirs(top, f"{top}/a/b/c")
    sb._make_dirs(top, f"{top}/a/b/d")      # levels that exist already are fine
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c", "d"]
