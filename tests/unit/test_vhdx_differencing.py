"""Differencing disks (AVHDX, MS-VHDX §2.6.2.6 / vhdx-facts §8) against the specification and a
chain built with known data: the bytes hvemu writes (HasParent, the locator, NOT_PRESENT and
PARTIALLY_PRESENT entries, LSB-first sector bitmaps) decoded here independently of the reader;
reads through chains of several levels against a model (hypothesis); the parent found by
relative path when the folder moves; a missing parent (NotFound), a parent changed behind the
child's back (ChainBroken), loops; the locator parser on hostile bytes; merge, with grandchildren
re-pointed, and a merge killed with SIGKILL at random moments (the chain reads the same data and
a repeated merge completes). qemu-img cannot open AVHDX ("Operation not supported", checked),
so hvemu's own reader is the reference here."""
from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from parent.storage.vhdx import (create, create_differencing, merge_into_parent,
                                 open as open_vhdx)
from parent.storage.vhdx.layout import MIB, Header, HEADER_OFFSETS
from parent.storage.vhdx.parent_locator import (ParentLocator, VHDX_LOCATOR_TYPE, pack_locator,
                                                parse_locator)
from parent.storage.disk_backend import chain_paths, open_disk
from worker.vmbus.driver_protocol import open_device_files

SIZE = 16 * MIB
BLOCK = 2 * MIB          # the differencing default
META = 3 * MIB           # create's layout: log 1 MiB, BAT 1 MiB at 2 MiB, metadata at 3 MiB


def raw(path, offset, n):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def current_header(path) -> Header:
    a, b = (Header.parse(raw(path, o, 4096)) for o in HEADER_OFFSETS)
    return max((h for h in (a, b) if h), key=lambda h: h.sequence_number)


def metadata_items(path) -> dict:
    """{GUID: (flags, bytes)} decoded straight from the metadata table."""
    table = raw(path, META, 65536)
    assert table[:8] == b"metadata"
    (count,) = struct.unpack_from("<H", table, 10)
    items = {}
    for i in range(count):
        guid, off, length, flags = struct.unpack_from("<16sIII", table, 32 + 32 * i)
        items[uuid.UUID(bytes_le=guid)] = (flags, raw(path, META + off, length))
    return items


@pytest.fixture
def chain(tmp_path):
    """base (random data in its first 6 MiB) <- c1; the reference bytes."""
    base, child = str(tmp_path / "base.vhdx"), str(tmp_path / "c1.avhdx")
    create(base, SIZE, block_size=4 * MIB)
    ref = bytearray(SIZE)
    data = random.Random(7).randbytes(6 * MIB)
    with open_vhdx(base, writable=True) as disk:
        disk.write(0, data)
    ref[:len(data)] = data
    create_differencing(child, base)
    return base, child, ref


def test_new_child_reads_its_parent_and_is_laid_out_per_spec(chain):
    base, child, ref = chain
    with open_vhdx(child) as disk:
        assert disk.read(0, SIZE) == bytes(ref)
        info = disk.info()
    assert (info["VhdType"], info["ParentPath"], info["Size"], info["BlockSize"]) == \
        ("Differencing", base, SIZE, BLOCK)
    items = metadata_items(child)
    fp_guid = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
    loc_guid = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
    block_size, flags = struct.unpack("<II", items[fp_guid][1])
    assert (block_size, flags & 2) == (BLOCK, 2)              # HasParent
    loc_flags, loc = items[loc_guid]
    assert loc_flags & 4                                       # IsRequired
    assert loc[:16] == bytes.fromhex("b7ef4ab09ed1814ab78925b8e9445913")
    (count,) = struct.unpack_from("<H", loc, 18)
    pairs = {}
    for i in range(count):
        ko, vo, kl, vl = struct.unpack_from("<IIHH", loc, 20 + 12 * i)
        pairs[loc[ko:ko + kl].decode("utf-16-le")] = loc[vo:vo + vl].decode("utf-16-le")
    parent_guid = current_header(base).data_write_guid
    assert pairs["parent_linkage"] == "{" + str(parent_guid).upper() + "}"
    assert pairs["relative_path"] == ".\\base.vhdx"
    assert pairs["absolute_win32_path"] == base
    # BAT: every entry NOT_PRESENT (differencing: S × (CR + 1) entries)
    assert raw(child, 2 * MIB, 8 * 2049) == bytes(8 * 2049)


def test_partial_write_sets_lsb_first_sector_bits(chain):
    base, child, ref = chain
    with open_vhdx(child, writable=True) as disk:
        disk.write(3 * 512, b"\xab" * 1024)          # sectors 3 and 4 of block 0
        disk.write(BLOCK + 100, b"\xcd" * 10)         # inside sector 0 of block 1 (unaligned)
    ref[3 * 512:5 * 512] = b"\xab" * 1024
    ref[BLOCK + 100:BLOCK + 110] = b"\xcd" * 10
    entries = struct.unpack("<8Q", raw(child, 2 * MIB, 64))
    assert entries[0] & 7 == 7 and entries[1] & 7 == 7       # PARTIALLY_PRESENT
    (bitmap_entry,) = struct.unpack("<Q", raw(child, 2 * MIB + 8 * 2048, 8))  # chunk 0, CR 2048
    assert bitmap_entry & 7 == 6
    bitmap = raw(child, bitmap_entry & ~0xFFFFF, 1024)
    assert bitmap[0] == 0b00011000                       # sectors 3, 4 of block 0
    assert bitmap[512] == 0b00000001                     # sector 0 of block 1 (4096 sectors/block)
    assert bitmap[1:512] == bytes(511) and bitmap[513:] == bytes(511)
    with open_vhdx(child) as disk:
        assert disk.read(0, SIZE) == bytes(ref)
    with open_vhdx(base) as disk:                        # the parent is untouched
        assert disk.read(0, 8) == bytes(ref[:3]) + disk.read(3, 5)
        assert disk.read(3 * 512, 1024) != b"\xab" * 1024


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, SIZE - 1), st.integers(1, 300_000),
                          st.integers(0, 255)), min_size=1, max_size=12))
def test_three_level_chain_matches_a_model(tmp_path_factory, writes):
    folder = tmp_path_factory.mktemp("chain")
    paths = [str(folder / n) for n in ("base.vhdx", "c1.avhdx", "c2.avhdx")]
    create(paths[0], SIZE, block_size=MIB)
    models = [bytearray(SIZE)]
    for level, (path) in enumerate(paths):
        if level:
            create_differencing(path, paths[level - 1])
            models.append(bytearray(models[-1]))
        with open_vhdx(path, writable=True) as disk:
            for lv, offset, n, fill in writes:
                if lv == level:
                    n = min(n, SIZE - offset)
                    disk.write(offset, bytes([fill]) * n)
                    models[level][offset:offset + n] = bytes([fill]) * n
    for level, path in enumerate(paths):
        with open_vhdx(path) as disk:
            assert disk.read(0, SIZE) == bytes(models[level])
    merge_into_parent(paths[2])
    with open_vhdx(paths[1]) as disk:
        assert disk.read(0, SIZE) == bytes(models[2])


def test_parent_found_by_relative_path_after_the_folder_moves(chain, tmp_path):
    base, child, ref = chain
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in (base, child):
        shutil.move(p, moved / os.path.basename(p))
    with open_vhdx(str(moved / "c1.avhdx")) as disk:
        assert disk.parent.path == str(moved / "base.vhdx")
        assert disk.read(0, SIZE) == bytes(ref)


def test_missing_parent_is_not_found(chain):
    base, child, _ref = chain
    os.unlink(base)
    with pytest.raises(HvError) as err:
        open_vhdx(child)
    assert err.value.code == "NotFound" and "chain of virtual hard disks is broken" in \
        err.value.message


def test_parent_changed_behind_the_childs_back_is_refused(chain):
    base, child, _ref = chain
    with open_vhdx(base, writable=True) as disk:
        disk.write(0, b"changed")
    before = raw(child, 0, 8 * MIB)
    for writable in (False, True):
        with pytest.raises(HvError) as err:
            open_vhdx(child, writable=writable)
        assert err.value.code == "ChainBroken"
        assert "parent_linkage" in err.value.message and base in err.value.message
    assert raw(child, 0, 8 * MIB) == before
    with pytest.raises(HvError) as err:
        merge_into_parent(child)
    assert err.value.code == "ChainBroken" and os.path.exists(child)


def test_a_loop_in_the_chain_is_refused(tmp_path):
    a, b = str(tmp_path / "a.avhdx"), str(tmp_path / "b.avhdx")
    create(str(tmp_path / "base.vhdx"), SIZE)
    create_differencing(a, str(tmp_path / "base.vhdx"))
    create_differencing(b, a)
    with open_vhdx(a, writable=True, with_parent=False) as disk:  # point a at b
        linkage = current_header(b).data_write_guid
        disk.set_parent_locator(ParentLocator((("parent_linkage", "{%s}" % linkage),
                                               ("relative_path", ".\\b.avhdx"))))
    with pytest.raises(HvError) as err:
        open_vhdx(b)
    assert err.value.code == "BadRequest" and "loops back" in err.value.message


def test_locator_round_trip_and_required_keys():
    loc = ParentLocator((("parent_linkage", "{%s}" % uuid.uuid4()), ("relative_path", "..\\x")))
    assert parse_locator("p", pack_locator(loc)) == loc
    for entries, problem in [((("relative_path", "x"),), "no parent_linkage"),
                             ((("parent_linkage", "{nope}"), ("relative_path", "x")),
                              "is not a GUID"),
                             ((("parent_linkage", "{%s}" % uuid.uuid4()),), "names no parent")]:
        with pytest.raises(HvError, match=problem):
            parse_locator("p", pack_locator(ParentLocator(entries)))
    dup = bytearray(pack_locator(loc))
    struct.pack_into("<IIHH", dup, 32, *struct.unpack_from("<IIHH", dup, 20))
    with pytest.raises(HvError, match="overlap|twice"):
        parse_locator("p", bytes(dup))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 190), st.binary(min_size=1, max_size=8))
def test_locator_parser_never_fails_otherwise(blob, at, junk):
    good = bytearray(pack_locator(ParentLocator((("parent_linkage", "{%s}" % uuid.UUID(int=1)),
                                                 ("relative_path", ".\\p.vhdx")))))
    for data in (blob, VHDX_LOCATOR_TYPE.bytes_le + blob, good[:at] + junk + good[at + 1:]):
        try:
            parse_locator("p", bytes(data))
        except HvError as err:
            assert err.code == "BadRequest"


def test_merge_reparents_grandchildren_and_deletes_the_child(chain, tmp_path):
    base, child, ref = chain
    with open_vhdx(child, writable=True) as disk:
        disk.write(5 * MIB + 512, b"\x11" * 4096)
    ref[5 * MIB + 512:5 * MIB + 512 + 4096] = b"\x11" * 4096
    grandchild = str(tmp_path / "c2.avhdx")
    create_differencing(grandchild, child)
    with open_vhdx(grandchild, writable=True) as disk:
        disk.write(9 * MIB, b"\x22" * 3 * MIB)
    model = bytearray(ref)
    model[9 * MIB:12 * MIB] = b"\x22" * 3 * MIB
    seen = []
    assert merge_into_parent(child, reparent=(grandchild,),
                             progress=lambda d, t: seen.append((d, t))) == base
    assert not os.path.exists(child) and seen[-1][0] == seen[-1][1] > 0
    with open_vhdx(base) as disk:
        assert disk.read(0, SIZE) == bytes(ref)
    with open_vhdx(grandchild) as disk:
        assert disk.parent.path == base and disk.read(0, SIZE) == bytes(model)


MERGER = """
import sys
from parent.storage.vhdx import merge_into_parent
merge_into_parent(sys.argv[1], reparent=tuple(sys.argv[2:]))
"""


def test_merge_killed_at_any_moment_reads_the_same_and_completes(tmp_path):
    base, child, grandchild = (str(tmp_path / n) for n in ("b.vhdx", "c.avhdx", "g.avhdx"))
    size = 64 * MIB
    create(base, size, block_size=MIB)
    rng = random.Random(3)
    with open_vhdx(base, writable=True) as disk:
        disk.write(0, rng.randbytes(8 * MIB))
    create_differencing(child, base)
    with open_vhdx(child, writable=True) as disk:
        for _ in range(40):
            off, n = rng.randrange(size - 2 * MIB), rng.randrange(1, 2 * MIB)
            disk.write(off, rng.randbytes(n))
    create_differencing(grandchild, child)
    with open_vhdx(grandchild, writable=True) as disk:
        disk.write(MIB + 7, b"grandchild")
    with open_vhdx(grandchild) as disk:
        expected = disk.read(0, size)
    with open_vhdx(child) as disk:
        expected_child = disk.read(0, size)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for attempt in range(6):
        if not os.path.exists(child):
            break
        proc = subprocess.Popen([sys.executable, "-c", MERGER, child, grandchild], env=env)
        time.sleep(0.05 + rng.random() * 0.25)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with open_vhdx(grandchild) as disk:     # whatever moment it died at
            assert disk.read(0, size) == expected, f"attempt {attempt}"
        if os.path.exists(child):
            with open_vhdx(child) as disk:
                assert disk.read(0, size) == expected_child
    if os.path.exists(child):
        merge_into_parent(child, reparent=(grandchild,))
    assert not os.path.exists(child)
    with open_vhdx(base) as disk:
        assert disk.read(0, size) == expected_child
    with open_vhdx(grandchild) as disk:
        assert disk.parent.path == base and disk.read(0, size) == expected


def test_chain_opens_from_handed_over_descriptors_alone(chain, tmp_path):
    """A sandboxed storvsp host can open no path: the worker opens every file of the chain
    (driver_protocol.open_device_files with `parent_paths`) and the disk opens from those."""
    base, child, ref = chain
    assert chain_paths(child) == [base] and chain_paths(base) == []
    files, fds = open_device_files({"path": child, "parent_paths": chain_paths(child)})
    assert files == [child, base] and len(fds) == 2
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for p in (child, base):                        # the names no longer lead anywhere
        os.rename(p, moved / os.path.basename(p))
    disk = open_disk(child, writable=True, fd=fds[0], parents=[(base, fds[1])])
    try:
        assert disk.read(0, SIZE) == bytes(ref)
        disk.write(0, b"\x01" * 4096)
        assert disk.read(0, 4096) == b"\x01" * 4096
    finally:
        disk.close()
    # a parent not handed over is named, not looked up by path
    files, fds = open_device_files({"path": str(moved / "c1.avhdx")})
    with pytest.raises(HvError) as err:
        open_disk(str(moved / "c1.avhdx"), writable=True, fd=fds[0], parents=[])
    assert err.value.code == "NotFound" and "not handed over" in err.value.message
