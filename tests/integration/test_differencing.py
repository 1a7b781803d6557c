"""Differencing disks end to end (issue 13, part 1): hvctl new-vhd --differencing / get-vhd,
the storvsp driver serving a three-level chain to a guest (reads fall through to the parents,
writes land in the child only), merge-vhd, and a parent changed behind a child's back refused
by get-vhd and by start-vm with ChainBroken."""
from __future__ import annotations

import pytest

from parent.storage.vhdx import open as open_vhdx
from tests.helpers.host_views import hvctl_in, refused, released, result
from worker.guest import disk_pattern

pytestmark = pytest.mark.integration

MIB = 1 << 20


def test_chain_served_to_a_guest_then_merged(host, tmp_path):
    base = str(tmp_path / "base.vhdx")
    host.hvctl("new-vhd", base, "--size-bytes", "32MB")
    host.new_vm("d1", guest="disk-write:8MB:seed-a")
    host.call("add-vmharddiskdrive", vm="d1", path=base)
    host.start("d1")
    assert result(host, "d1", "disk-write") == "ok"
    host.call("stop-vm", vm="d1")
    released(base)
    host.call("remove-vmharddiskdrive", vm="d1", controller_location=0)

    chain = [base]
    for name in ("c1.avhdx", "c2.avhdx", "c3.avhdx"):
        rc, info, err = hvctl_in(host, tmp_path, "new-vhd", name, "--differencing",
                                 "--parent-path", chain[-1])
        assert rc == 0, err
        assert (info["VhdType"], info["ParentPath"], info["Size"]) == \
            ("Differencing", chain[-1], 32 * MIB)
        chain.append(info["Path"])
    _rc, info, _ = host.hvctl("get-vhd", chain[-1])
    assert info["ParentPath"] == chain[2] and info["BlockSize"] == 2 * MIB

    host.call("add-vmharddiskdrive", vm="d1", path=chain[-1])
    host.call("set-vm", vm="d1", guest="disk-verify:8MB:seed-a")
    host.start("d1")
    assert result(host, "d1", "disk-verify") == "ok"       # read through three parents
    host.call("stop-vm", vm="d1")
    released(chain[-1])
    host.call("set-vm", vm="d1", guest="disk-write:4MB:seed-b")
    host.start("d1")
    assert result(host, "d1", "disk-write") == "ok"
    host.call("stop-vm", vm="d1")
    released(chain[-1])
    expected = disk_pattern.generate("seed-b", 0, 4 * MIB) + \
        disk_pattern.generate("seed-a", 0, 8 * MIB)[4 * MIB:]
    with open_vhdx(chain[-1]) as disk:
        assert disk.read(0, 8 * MIB) == expected
    for parent in chain[:-1]:                               # the parents are untouched
        with open_vhdx(parent) as disk:
            assert disk.read(0, 8 * MIB) == disk_pattern.generate("seed-a", 0, 8 * MIB)

    host.call("remove-vmharddiskdrive", vm="d1", controller_location=0)
    rc, merged, err = hvctl_in(host, tmp_path, "merge-vhd", chain[-1])
    assert rc == 0, err
    assert merged["Path"] == chain[2] and merged["MergedPath"] == chain[-1]
    with open_vhdx(chain[2]) as disk:
        assert disk.read(0, 8 * MIB) == expected

    host.call("add-vmharddiskdrive", vm="d1", path=chain[2])
    with open_vhdx(base, writable=True) as disk:            # the base changes behind the chain
        disk.write(0, b"x" * 512)
    message = refused(host, "get-vhd", chain[2], code="ChainBroken")
    assert "parent_linkage" in message and chain[1] in message
    message = refused(host, "start-vm", "d1", code="ChainBroken")
    assert "cannot start" in message
    assert host.vm("d1")["State"] == "Off"


def test_differencing_bad_input(host, tmp_path):
    base = str(tmp_path / "b.vhdx")
    host.hvctl("new-vhd", base, "--size-bytes", "8MB")
    refused(host, "new-vhd", str(tmp_path / "c.avhdx"), "--differencing", "--parent-path",
            str(tmp_path / "missing.vhdx"), code="NotFound")
    refused(host, "new-vhd", str(tmp_path / "c.avhdx"), "--differencing", "--parent-path", base,
            "--size-bytes", "16MB", code="BadRequest")
    rc, _out, err = host.hvctl("new-vhd", str(tmp_path / "c.avhdx"), "--differencing",
                               check=False)
    assert rc == 2 and "--parent-path" in err
    refused(host, "merge-vhd", base, code="BadRequest")     # not a differencing disk
