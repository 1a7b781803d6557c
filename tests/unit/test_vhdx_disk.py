"""hvemu's own VHDX files: create, open, read/write at any offset, header updates, block
allocation, crash consistency through the log, read-only in-memory replay, the backend table."""
from __future__ import annotations

import os
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from parent.storage import disk_backend
from parent.storage.vhdx import VhdxDisk, create, open as open_vhdx
from parent.storage.vhdx.layout import HEADER_OFFSETS, MIB, ZERO_GUID, Header
from parent.storage.vhdx.log import build_entry

INFO_KEYS = {"Path", "VhdFormat", "VhdType", "Size", "FileSize", "BlockSize",
             "LogicalSectorSize", "PhysicalSectorSize", "ParentPath"}


def headers(path) -> list[Header]:
    with open(path, "rb") as f:
        data = f.read(256 * 1024)
    return [Header.parse(data[o:o + 4096]) for o in HEADER_OFFSETS]


def bat_entries(path, count, bat_offset=2 * MIB) -> tuple[int, ...]:
    with open(path, "rb") as f:
        f.seek(bat_offset)
        return struct.unpack(f"<{count}Q", f.read(8 * count))


@pytest.fixture
def dyn(tmp_path):
    path = str(tmp_path / "d.vhdx")
    create(path, 16 * MIB, block_size=MIB)
    return path


def test_create_dynamic_and_info(dyn):
    with open_vhdx(dyn, writable=False) as disk:
        info = disk.info()
        assert set(info) == INFO_KEYS
        assert info == {"Path": dyn, "VhdFormat": "VHDX", "VhdType": "Dynamic",
                        "Size": 16 * MIB, "FileSize": 4 * MIB, "BlockSize": MIB,
                        "LogicalSectorSize": 512, "PhysicalSectorSize": 4096,
                        "ParentPath": None}
        assert disk.read(0, 16 * MIB) == bytes(16 * MIB)
        assert isinstance(disk, disk_backend.DiskBackend)
    h1, h2 = headers(dyn)
    assert (h1.sequence_number + 1, h1.log_guid) == (h2.sequence_number, ZERO_GUID)


def test_create_fixed_is_provisioned(tmp_path):
    path = str(tmp_path / "f.vhdx")
    create(path, 10 * MIB, fixed=True, block_size=4 * MIB, physical_sector=512)
    assert os.path.getsize(path) == 4 * MIB + 3 * 4 * MIB  # whole blocks, even the short last
    assert bat_entries(path, 3) == (4 * MIB | 6, 8 * MIB | 6, 12 * MIB | 6)
    with open_vhdx(path, writable=True) as disk:
        assert (disk.vhd_type, disk.physical_sector_size) == ("Fixed", 512)
        disk.write(10 * MIB - 7, b"the end")
        assert disk.file_size == 16 * MIB  # no allocation
    with open_vhdx(path) as disk:
        assert disk.read(10 * MIB - 7, 7) == b"the end"


def test_create_refuses_bad_parameters_and_existing_files(tmp_path, dyn):
    for kwargs in ({"size": 0}, {"size": 65 * 1024 * 1024 * MIB}, {"size": MIB + 1},
                   {"size": MIB, "block_size": 3 * MIB}, {"size": MIB, "block_size": 512 * MIB},
                   {"size": MIB, "logical_sector": 1024}, {"size": MIB, "physical_sector": 1},
                   {"size": True}):
        with pytest.raises(HvError) as err:
            create(str(tmp_path / "x.vhdx"), **kwargs)
        assert err.value.code == "BadRequest"
    assert not (tmp_path / "x.vhdx").exists()
    with pytest.raises(HvError) as err:
        create(dyn, MIB)
    assert err.value.code == "AlreadyExists"


def test_writes_allocate_blocks_at_the_end_in_1_mib_steps(dyn):
    with open_vhdx(dyn, writable=True) as disk:
        disk.write(5 * MIB + 100, b"abc")
        disk.write(MIB - 2, b"wxyz")  # straddles blocks 0 and 1
        assert disk.file_size == 4 * MIB + 3 * MIB
        assert disk.read(MIB - 2, 4) == b"wxyz"
        disk.write(MIB - 2, b"WX")  # into an allocated block: no allocation
        assert disk.file_size == 7 * MIB
    entries = bat_entries(dyn, 16)
    assert entries[5] == 4 * MIB | 6
    assert {entries[0], entries[1]} == {5 * MIB | 6, 6 * MIB | 6}
    assert entries[2] == 2  # untouched blocks stay ZERO
    with open_vhdx(dyn) as disk:
        assert disk.read(MIB - 3, 6) == b"\0WXyz\0"
        assert disk.read(5 * MIB + 99, 5) == b"\0abc\0"


def test_header_updates_on_first_write_and_logguid_cleared_on_close(dyn):
    before = headers(dyn)
    with open_vhdx(dyn, writable=True) as disk:
        disk.read(0, 512)
        assert headers(dyn) == before  # a read-write open with no writes changes nothing
        disk.write(0, b"x")
        during = headers(dyn)
        assert during[0].sequence_number == during[1].sequence_number + 1 or \
            during[1].sequence_number == during[0].sequence_number + 1
        assert max(h.sequence_number for h in during) == before[1].sequence_number + 2
        current = max(during, key=lambda h: h.sequence_number)
        assert current.file_write_guid != before[1].file_write_guid
        assert current.data_write_guid != before[1].data_write_guid
        assert current.log_guid != ZERO_GUID  # the session may allocate through the log
        disk.write(MIB, b"y")
        assert max(headers(dyn), key=lambda h: h.sequence_number) == current  # once a session
    after = headers(dyn)
    assert all(h.log_guid == ZERO_GUID for h in after)
    assert {h.data_write_guid for h in after} == {current.data_write_guid}


def test_read_only_and_closed_disks_refuse(dyn):
    disk = open_vhdx(dyn)
    with pytest.raises(HvError) as err:
        disk.write(0, b"x")
    assert err.value.code == "InvalidState"
    for offset, length in ((-1, 1), (16 * MIB, 1), (16 * MIB - 1, 2)):
        with pytest.raises(HvError) as err:
            disk.read(offset, length)
        assert err.value.code == "BadRequest"
    disk.close()
    disk.close()
    with pytest.raises(HvError) as err:
        disk.read(0, 1)
    assert err.value.code == "InvalidState"


def test_writers_exclude_each_other(dyn):
    with open_vhdx(dyn, writable=True):
        with pytest.raises(HvError) as err:
            open_vhdx(dyn, writable=True)
        assert err.value.code == "Busy" and err.value.retryable
    with open_vhdx(dyn), open_vhdx(dyn):
        pass  # readers share


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(HvError) as err:
        open_vhdx(str(tmp_path / "nope.vhdx"))
    assert err.value.code == "NotFound"


def test_4k_logical_sectors(tmp_path):
    path = str(tmp_path / "4k.vhdx")
    create(path, 8 * MIB, block_size=MIB, logical_sector=4096)
    with open_vhdx(path, writable=True) as disk:
        assert disk.logical_sector_size == 4096
        disk.write(4096 * 3, b"q" * 4096)
    with open_vhdx(path) as disk:
        assert disk.read(4096 * 3, 4096) == b"q" * 4096


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 8 * MIB - 1), st.binary(min_size=1, max_size=40000)),
                max_size=6))
def test_random_writes_match_a_model(tmp_path, writes):
    path = str(tmp_path / f"m{uuid.uuid4().hex}.vhdx")
    create(path, 8 * MIB, block_size=MIB)
    model = bytearray(8 * MIB)
    with open_vhdx(path, writable=True) as disk:
        for offset, data in writes:
            data = data[:8 * MIB - offset]
            disk.write(offset, data)
            model[offset:offset + len(data)] = data
    with open_vhdx(path) as disk:
        assert disk.read(0, 8 * MIB) == model
    os.unlink(path)


# -- crash consistency --------------------------------------------------------------------------

def crash_before(monkeypatch, predicate):
    """Make os.pwrite fail (as a power cut would) on the first write matching predicate."""
    real = os.pwrite

    def pwrite(fd, data, offset):
        if predicate(offset, len(data)):
            raise SystemExit("power cut")
        return real(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)


def abandon(disk: VhdxDisk) -> None:
    os.close(disk._fd)
    disk._fd = None


def test_crash_after_log_entry_is_replayed(dyn, monkeypatch):
    disk = open_vhdx(dyn, writable=True)
    disk.write(0, b"first")
    crash_before(monkeypatch, lambda off, n: 2 * MIB <= off < 3 * MIB)  # the BAT sector
    with pytest.raises(SystemExit):
        disk.write(3 * MIB, b"second")
    monkeypatch.undo()
    abandon(disk)
    assert bat_entries(dyn, 4)[3] == 2  # BAT not written ...
    assert headers(dyn)[0].log_guid != ZERO_GUID  # ... but the log is dirty
    snapshot = open(dyn, "rb").read()
    with open_vhdx(dyn) as ro:  # read-only: replay in memory, file untouched
        assert ro.replayed_log_entries == 1
        assert ro.read(3 * MIB, 6) == b"second"
    assert open(dyn, "rb").read() == snapshot
    with open_vhdx(dyn, writable=True) as rw:
        assert rw.read(0, 5) == b"first" and rw.read(3 * MIB, 6) == b"second"
    assert all(h.log_guid == ZERO_GUID for h in headers(dyn))
    assert bat_entries(dyn, 4)[3] & 7 == 6


def test_crash_before_log_entry_loses_only_the_unacknowledged_write(dyn, monkeypatch):
    disk = open_vhdx(dyn, writable=True)
    disk.write(0, b"first")
    crash_before(monkeypatch, lambda off, n: MIB <= off < 2 * MIB)  # the log entry
    with pytest.raises(SystemExit):
        disk.write(3 * MIB, b"second")
    monkeypatch.undo()
    abandon(disk)
    with open_vhdx(dyn, writable=True) as rw:
        assert rw.read(0, 5) == b"first"
        assert rw.read(3 * MIB, 6) == bytes(6)  # the leaked block is never exposed
        rw.write(3 * MIB, b"again")
        assert rw.read(3 * MIB, 5) == b"again"


def test_many_allocations_wrap_the_log(tmp_path):
    path = str(tmp_path / "w.vhdx")
    create(path, 300 * MIB, block_size=MIB)
    with open_vhdx(path, writable=True) as disk:
        for block in range(0, 300, 2):  # 150 entries of 8 KiB: more than one lap of 1 MiB
            disk.write(block * MIB, struct.pack("<I", block))
        assert disk._log_writer.sequence > 128
    with open_vhdx(path) as disk:
        assert all(disk.read(b * MIB, 4) == struct.pack("<I", b) for b in range(0, 300, 2))


def test_disk_backend_table(tmp_path):
    path = str(tmp_path / "t.vhdx")
    disk_backend.create_disk(path, 4 * MIB, block_size=MIB)
    with disk_backend.open_disk(path, writable=True) as disk:
        disk.write(1, b"z")
        disk.flush()
    assert disk_backend.format_for_path("X.VHDX").name == "VHDX"
    with pytest.raises(HvError, match="unsupported disk format"):
        disk_backend.open_disk(str(tmp_path / "t.vmdk"))


def test_replay_applies_zero_descriptors_and_extends_the_file(dyn):
    with open_vhdx(dyn, writable=True) as disk:
        disk.write(0, b"\x99" * MIB)  # block 0 at 4 MiB; the file is 5 MiB
    guid = uuid.uuid4()
    entry = build_entry(sequence=1, tail=0, log_guid=guid, flushed_file_offset=5 * MIB,
                        last_file_offset=7 * MIB, writes=[],
                        zeros=[(4 * MIB + 8192, 8192), (5 * MIB - 4096, MIB + 4096)])
    with open(dyn, "r+b") as f:
        f.seek(MIB)
        f.write(entry)
        for slot in HEADER_OFFSETS:
            f.seek(slot)
            header = Header.parse(f.read(4096))
            f.seek(slot)
            f.write(Header(**{**header.__dict__, "log_guid": guid}).pack())
    expected = bytearray(b"\x99" * MIB)
    expected[8192:16384] = bytes(8192)
    expected[MIB - 4096:] = bytes(4096)
    with open_vhdx(dyn) as disk:
        assert disk.read(0, MIB) == expected and disk.file_size == 7 * MIB
    assert os.path.getsize(dyn) == 5 * MIB
    with open_vhdx(dyn, writable=True) as disk:
        assert disk.read(0, MIB) == expected
    assert os.path.getsize(dyn) == 7 * MIB
