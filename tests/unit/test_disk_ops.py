"""The disk control ops' rules without daemons: argument checks, "the same file", lock holders,
and the start-time check against a fake vmms (records only)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from hypervisor.runtime.errors import HvError
from parent.control import disk_ops as d
from parent.storage.disk_backend import create_disk, open_disk
from parent.vm_record import VmRecord

MIB = 1 << 20


def fake_vmms(*recs):
    return SimpleNamespace(vms={r.id: r for r in recs})


def record(name, *paths, running=False):
    rec = VmRecord(config={"id": f"id-{name}", "name": name, d.DRIVES_KEY: [
        {"path": p, "controller_type": "SCSI", "controller_number": 0, "controller_location": i}
        for i, p in enumerate(paths)]})
    rec.worker = SimpleNamespace(pid=-1) if running else None
    return rec


@pytest.mark.parametrize("value,code,words", [
    ("rel.vhdx", "BadRequest", "absolute"),
    ("", "BadRequest", "non-empty"),
    ("/x/a\0.vhdx", "BadRequest", "NUL"),
    ("/x/a.img", "BadRequest", "unsupported disk format"),
    (5, "BadRequest", "string"),
    ("/" + "a" * 5000 + ".vhdx", "BadRequest", "longer"),
])
def test_path_arg_refusals(value, code, words):
    with pytest.raises(HvError) as info:
        d.path_arg({"path": value})
    assert info.value.code == code and words in info.value.message


def test_path_arg_normalises_and_sizes_parse():
    assert d.path_arg({"path": "/tmp//x/../d.VHDX"}) == "/tmp/d.VHDX"
    assert d.bytes_arg({"s": "2GB"}, "s") == 2 << 30 and d.bytes_arg({}, "s") is None
    for bad in (0, -1, True, 1.5, [1]):
        with pytest.raises(HvError):
            d.bytes_arg({"s": bad}, "s")


def test_same_file_through_a_symlink_and_missing_files(tmp_path):
    a = tmp_path / "a.vhdx"
    a.write_bytes(b"")
    os.symlink(a, tmp_path / "b.vhdx")
    assert d.file_identity(str(a)) == d.file_identity(str(tmp_path / "b.vhdx"))
    assert d.file_identity(str(tmp_path / "gone.vhdx")) == \
        d.file_identity(str(tmp_path / "x" / ".." / "gone.vhdx"))


def test_lock_holders_name_the_process(tmp_path):
    path = str(tmp_path / "l.vhdx")
    create_disk(path, 8 * MIB)
    assert d.lock_holders(path) == []
    with open_disk(path, writable=True):
        assert os.getpid() in d.lock_holders(path)
        vmms = fake_vmms()
        assert f"process {os.getpid()}" in d.describe_process(vmms, os.getpid())
    assert d.lock_holders(str(tmp_path / "missing.vhdx")) == []


def test_start_check(tmp_path):
    path = str(tmp_path / "s.vhdx")
    create_disk(path, 8 * MIB)
    mine, other = record("mine", path), record("other", path, running=True)
    with pytest.raises(HvError) as info:
        d.check_disks_for_start(fake_vmms(mine, other), mine)
    assert info.value.code == "InvalidState" and "running VM 'other'" in info.value.message
    other.worker = None
    d.check_disks_for_start(fake_vmms(mine, other), mine)   # valid, and no one uses it
    with open(path, "r+b") as f:
        f.write(b"junk")
    with pytest.raises(HvError) as info:
        d.check_disks_for_start(fake_vmms(mine), mine)
    assert info.value.code == "BadRequest" and "VM 'mine' cannot start" in info.value.message
    d.check_disks_for_start(fake_vmms(record("none")), record("none"))  # no drives: nothing to do
