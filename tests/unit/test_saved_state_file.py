"""The saved-state file (.vmrs) and the guest RAM state area: only data segments are written,
the RAM comes back byte for byte, and a truncated, corrupted, foreign-version or half-written
file is refused with SavedStateInvalid; the state area round-trips and refuses damage; the
counter program counts in RAM."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from worker import saved_state_file as vmrs
from worker.guest import program_state

MIB = 1 << 20


@pytest.fixture
def ram():
    fd = os.memfd_create("ram")
    os.ftruncate(fd, 64 * MIB)
    os.pwrite(fd, b"\x11" * 3 * MIB, 0)
    os.pwrite(fd, b"\x22" * 4096, 40 * MIB)
    yield fd
    os.close(fd)


def test_round_trip_writes_only_data(ram, tmp_path):
    path = str(tmp_path / "s.vmrs")
    assert vmrs.data_segments(ram, 64 * MIB) == [(0, 3 * MIB), (40 * MIB, 4096)]
    size = vmrs.write_vmrs(path, {"vm_id": "v"}, ram, 64 * MIB)
    assert size < 4 * MIB and not os.path.exists(path + ".tmp")
    meta = vmrs.read_meta(path)
    assert (meta["vm_id"], meta["memory_size"]) == ("v", 64 * MIB)
    target = os.memfd_create("target")
    os.ftruncate(target, 64 * MIB)
    vmrs.load_into(path, meta, target, 64 * MIB)
    assert os.pread(target, 64 * MIB, 0) == os.pread(ram, 64 * MIB, 0)
    with pytest.raises(HvError) as err:   # the partition is smaller than the saved RAM
        vmrs.load_into(path, meta, target, 32 * MIB)
    assert err.value.code == "SavedStateInvalid"
    os.close(target)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3 * MIB + 4096 + 200), st.binary(min_size=1, max_size=16))
def test_damage_anywhere_is_refused(tmp_path_factory, where, junk):
    fd = os.memfd_create("ram")
    os.ftruncate(fd, 8 * MIB)
    os.pwrite(fd, os.urandom(3 * MIB), 4096)
    path = str(tmp_path_factory.mktemp("v") / "s.vmrs")
    size = vmrs.write_vmrs(path, {"vm_id": "v"}, fd, 8 * MIB)
    where = min(where, size - 1)
    with open(path, "r+b") as f:
        f.seek(where)
        old = f.read(len(junk))
        if old == junk[:len(old)]:
            junk = bytes(b ^ 0xFF for b in junk)
        f.seek(where)
        f.write(junk[:len(old)])
    target = os.memfd_create("t")
    os.ftruncate(target, 8 * MIB)
    with pytest.raises(HvError) as err:
        vmrs.load_into(path, vmrs.read_meta(path), target, 8 * MIB)
    assert err.value.code == "SavedStateInvalid"
    os.close(fd)
    os.close(target)


def test_truncated_missing_and_other_versions_are_refused(ram, tmp_path):
    path = str(tmp_path / "s.vmrs")
    size = vmrs.write_vmrs(path, {"vm_id": "v"}, ram, 64 * MIB)
    for cut in (0, 10, 100, size - 1):
        os.truncate(path, cut)
        with pytest.raises(HvError, match="truncated|not an hvemu|no end mark"):
            vmrs.read_meta(path)
        vmrs.write_vmrs(path, {"vm_id": "v"}, ram, 64 * MIB)
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<I", 2))
    with pytest.raises(HvError, match="version 2"):
        vmrs.read_meta(path)
    os.unlink(path)
    with pytest.raises(HvError, match="missing"):
        vmrs.read_meta(path)


def test_a_crash_before_the_rename_leaves_the_old_file(ram, tmp_path, monkeypatch):
    path = str(tmp_path / "s.vmrs")
    vmrs.write_vmrs(path, {"vm_id": "old"}, ram, 64 * MIB)
    monkeypatch.setattr(vmrs, "_write_all", lambda fd, data: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        vmrs.write_vmrs(path, {"vm_id": "new"}, ram, 64 * MIB)
    assert vmrs.read_meta(path)["vm_id"] == "old" and not os.path.exists(path + ".tmp")


def test_state_area_round_trip_and_damage():
    buf = bytearray(program_state.STATE_AREA_SIZE)
    assert program_state.read_state(buf) is None
    program_state.write_state(buf, {"spec": "counter", "kvp": {"a": "b"}})
    assert program_state.read_state(buf) == {"spec": "counter", "kvp": {"a": "b"}}
    buf[program_state.PAYLOAD_OFFSET + 2] ^= 1
    assert program_state.read_state(buf) is None
    with pytest.raises(ValueError):
        program_state.write_state(buf, {"x": "y" * program_state.STATE_AREA_SIZE})


class FakeServices:
    def __init__(self):
        self.kvp = {}

    def publish(self, key, value):
        self.kvp[key] = value


def test_counter_counts_in_ram_and_resumes():
    ram, services = bytearray(program_state.STATE_AREA_SIZE), FakeServices()
    c = program_state.Counter(services, ram, restored=False)
    now = c.next_step
    for i in range(5):
        c.tick(now + i * program_state.COUNTER_INTERVAL + 0.001)
    assert c.value == 5 and services.kvp["counter"] == "5"
    c.quiesce()
    c.tick(now + 10)
    assert c.value == 5
    again = program_state.Counter(FakeServices(), bytes(ram) and ram, restored=True)
    assert again.value == 5
    again.tick(again.next_step + 0.001)
    assert again.value == 6
