"""Interoperability with qemu-img / qemu-io (Debian qemu-utils): files qemu writes are read and
written by hvemu, files hvemu writes pass `qemu-img check` and read back in qemu, and a dirty
log left by qemu is replayed (and one left by hvemu is replayed by qemu). Skipped without qemu."""
from __future__ import annotations

import shutil
import struct
import subprocess
import uuid

import pytest

from parent.storage.vhdx import create, open as open_vhdx
from parent.storage.vhdx.layout import GIB, HEADER_OFFSETS, MIB, ZERO_GUID, Header
from parent.storage.vhdx.log import LogWriter
from tests.helpers.vhdx_files import qemu_info

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-img / qemu-io are not installed")


def run(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done


def qemu_check(path) -> None:
    done = run("qemu-img", "check", "-f", "vhdx", path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def qemu_raw(path, tmp_path) -> bytes:
    raw = tmp_path / f"{uuid.uuid4().hex}.raw"
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", path, str(raw))
    return raw.read_bytes()


def qemu_pattern_ok(path, offset, length, byte) -> bool:
    done = run("qemu-io", "-r", "-f", "vhdx", "-c", f"read -P {byte:#x} {offset} {length}", path,
               check=False)
    output = done.stdout + done.stderr
    assert f"read {length}/{length} bytes" in output, output
    return done.returncode == 0 and "Pattern verification failed" not in output


PATTERN = [(0, b"\x11" * 4096), (12345, b"unaligned bytes"), (8 * MIB - 100, b"\x22" * 300),
           (30 * MIB + 7, bytes(range(256)) * 40)]


@pytest.mark.parametrize("options", ["", "subformat=fixed", "subformat=fixed,block_state_zero=off"])
def test_qemu_created_disk_written_by_hvemu(tmp_path, options):
    path = str(tmp_path / "q.vhdx")
    run("qemu-img", "create", "-q", "-f", "vhdx", *(["-o", options] if options else []),
        path, "64M")
    expected = bytearray(64 * MIB)
    with open_vhdx(path, writable=True) as disk:
        assert (disk.size, disk.block_size, disk.logical_sector_size) == (64 * MIB, 8 * MIB, 512)
        assert disk.vhd_type == ("Fixed" if "fixed" in options else "Dynamic")
        assert disk.read(0, 64 * MIB) == expected
        for offset, data in PATTERN:
            disk.write(offset, data)
            expected[offset:offset + len(data)] = data
    qemu_check(path)
    assert qemu_raw(path, tmp_path) == expected


@pytest.mark.parametrize("fixed", [False, True])
def test_hvemu_created_disk_read_by_qemu(tmp_path, fixed):
    path = str(tmp_path / "h.vhdx")
    create(path, 48 * MIB, fixed=fixed, block_size=2 * MIB, physical_sector=512)
    info = qemu_info(path)
    assert (info["format"], info["virtual-size"], info["cluster-size"]) == \
        ("vhdx", 48 * MIB, 2 * MIB)
    qemu_check(path)
    expected = bytearray(48 * MIB)
    with open_vhdx(path, writable=True) as disk:
        for offset, data in PATTERN:
            disk.write(offset, data)
            expected[offset:offset + len(data)] = data
    qemu_check(path)
    assert qemu_raw(path, tmp_path) == expected
    run("qemu-io", "-f", "vhdx", "-c", f"write -P 0xab {5 * MIB + 512} 70000", path)
    qemu_check(path)
    with open_vhdx(path) as disk:
        assert disk.read(5 * MIB + 512, 70000) == b"\xab" * 70000
        assert disk.read(5 * MIB, 512) == bytes(512)


def test_large_sparse_disk_exercises_the_chunk_interleave(tmp_path):
    path = str(tmp_path / "big.vhdx")
    create(path, 10 * GIB, block_size=16 * MIB)
    info = qemu_info(path)
    assert (info["virtual-size"], info["cluster-size"]) == (10 * GIB, 16 * MIB)
    qemu_check(path)
    near_4g, near_9g = 4 * GIB - 4096, 9 * GIB + 3 * MIB
    # qemu writes across the first chunk boundary; hvemu reads it back
    run("qemu-io", "-f", "vhdx", "-c", f"write -P 0xab {near_4g} 8192",
        "-c", f"write -P 0xcd {near_9g} 65536", path)
    qemu_check(path)
    with open_vhdx(path, writable=True) as disk:
        assert disk.read(near_4g, 8192) == b"\xab" * 8192
        assert disk.read(near_9g, 65536) == b"\xcd" * 65536
        # hvemu writes beyond the second chunk boundary; qemu reads it back
        disk.write(8 * GIB + 100, b"\xef" * 5000)
        disk.write(10 * GIB - 512, b"\x5a" * 512)
    qemu_check(path)
    with open(path, "rb") as f:
        f.seek(2 * MIB)
        bat = struct.unpack("<642Q", f.read(642 * 8))
    assert bat[256] == 0 and bat[513] == 0  # sector-bitmap entries
    assert bat[255] & 7 == 6 and bat[257] & 7 == 6  # 4 GiB - 4 KiB and 4 GiB
    assert bat[578] & 7 == 6 and bat[514] & 7 == 6 and bat[641] & 7 == 6
    assert qemu_pattern_ok(path, 8 * GIB + 100, 5000, 0xEF)
    assert qemu_pattern_ok(path, 10 * GIB - 512, 512, 0x5A)
    assert not qemu_pattern_ok(path, 8 * GIB + 100, 5000, 0x00)  # the check can fail


def make_qemu_dirty_log(path) -> None:
    """qemu's allocation leaves its (applied) log entry in the log area with LogGuid cleared.
    Put the entry's LogGuid back into the headers and undo the BAT update it describes: the
    file is then exactly what a crash between 'log written' and 'BAT applied' leaves."""
    with open(path, "r+b") as f:
        f.seek(MIB)
        entry = f.read(64)
        assert entry[:4] == b"loge"
        guid = uuid.UUID(bytes_le=entry[32:48])
        for slot in HEADER_OFFSETS:
            f.seek(slot)
            header = Header.parse(f.read(4096))
            f.seek(slot)
            f.write(Header(**{**header.__dict__, "log_guid": guid}).pack())
        f.seek(2 * MIB)
        f.write(struct.pack("<Q", 2))  # block 0 back to ZERO


def test_dirty_log_written_by_qemu_is_replayed(tmp_path):
    path = str(tmp_path / "dirty.vhdx")
    run("qemu-img", "create", "-q", "-f", "vhdx", path, "64M")
    run("qemu-io", "-f", "vhdx", "-c", "write -P 0x5a 1M 64k", path)
    make_qemu_dirty_log(path)
    done = run("qemu-img", "check", "-f", "vhdx", path, check=False)
    assert done.returncode != 0 and "replay" in done.stdout + done.stderr
    before = open(path, "rb").read()
    with open_vhdx(path) as disk:  # read-only: replayed in memory, the file is untouched
        assert disk.replayed_log_entries == 1
        assert disk.read(MIB, 65536) == b"\x5a" * 65536
    assert open(path, "rb").read() == before
    with open_vhdx(path, writable=True) as disk:
        assert disk.header.log_guid == ZERO_GUID
        assert disk.read(MIB, 65536) == b"\x5a" * 65536
    qemu_check(path)
    assert qemu_pattern_ok(path, MIB, 65536, 0x5A)


def test_dirty_log_written_by_hvemu_is_replayed_by_qemu(tmp_path):
    """hvemu's log entries follow the spec closely enough for qemu's replay."""
    path = str(tmp_path / "crash.vhdx")
    create(path, 64 * MIB, block_size=8 * MIB)
    guid = uuid.uuid4()
    with open(path, "r+b") as f:
        f.truncate(4 * MIB + 8 * MIB)  # block 2 lands at 4 MiB, its data written and flushed
        f.seek(4 * MIB)
        f.write(b"\x77" * 8192)
        f.seek(2 * MIB)
        sector = bytearray(f.read(4096))
        struct.pack_into("<Q", sector, 16, 4 * MIB | 6)
        LogWriter(MIB, MIB, guid).write_entry(f.fileno(), [(2 * MIB, bytes(sector))], 12 * MIB)
        for slot in HEADER_OFFSETS:
            f.seek(slot)
            header = Header.parse(f.read(4096))
            f.seek(slot)
            f.write(Header(**{**header.__dict__, "log_guid": guid}).pack())
    run("qemu-img", "check", "-r", "all", "-f", "vhdx", path, check=False)
    qemu_check(path)
    assert qemu_pattern_ok(path, 16 * MIB, 8192, 0x77)
    with open_vhdx(path) as disk:
        assert disk.read(16 * MIB, 8192) == b"\x77" * 8192
