"""VHDX structures without files: CRC-32C known answers, headers and header choice, region
tables, metadata, BAT geometry (the chunk interleave) and log entries."""
from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from hypervisor.runtime.errors import HvError
from parent.storage.vhdx import auto_block_size
from parent.storage.vhdx.bat import ZERO, BlockAllocationTable, pack_bat
from parent.storage.vhdx.checksum import checksum_ok, crc32c, crc32c_pure
from parent.storage.vhdx.layout import (BAT_REGION_GUID, GIB, MIB, METADATA_REGION_GUID, TIB,
                                        ZERO_GUID, Header, Region, choose_header,
                                        pack_region_table, parse_region_table)
from parent.storage.vhdx.log import LogWriter, build_entry, find_replay, parse_entry
from parent.storage.vhdx.metadata import (DiskParameters, bat_entry_count, bat_index,
                                          chunk_ratio, pack_metadata, parse_metadata)


def zero_header(seq: int) -> Header:
    return Header(sequence_number=seq, file_write_guid=ZERO_GUID, data_write_guid=ZERO_GUID,
                  log_guid=ZERO_GUID, log_length=MIB, log_offset=MIB)


# -- CRC-32C -------------------------------------------------------------------------------------

def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c_pure(b"123456789") == 0xE3069283


@settings(max_examples=50)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_fast_and_pure_agree_and_chain(data, cut):
    cut = min(cut, len(data))
    assert crc32c(data) == crc32c_pure(data)
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)


def test_header_known_answers_from_the_fact_sheet():
    raw = zero_header(1).pack()
    assert raw[:8] == bytes.fromhex("686561641347fdf1")
    assert struct.unpack_from("<I", raw, 4)[0] == 0xF1FD4713
    assert struct.unpack_from("<I", zero_header(2).pack(), 4)[0] == 0x7318957B


def test_region_table_known_answers_from_the_fact_sheet():
    def table(required):
        return pack_region_table([Region(BAT_REGION_GUID, 2 * MIB, MIB, required),
                                  Region(METADATA_REGION_GUID, 3 * MIB, MIB, required)])
    assert struct.unpack_from("<I", table(False), 4)[0] == 0x2C6FCE83
    assert struct.unpack_from("<I", table(True), 4)[0] == 0x24453396
    assert checksum_ok(table(True), 4)


def test_guids_are_stored_mixed_endian():
    raw = pack_region_table([Region(BAT_REGION_GUID, 2 * MIB, MIB, False)])
    assert raw[16:32] == bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")


# -- headers ----------------------------------------------------------------------------------

def test_header_round_trip_and_invalid_copies():
    h = Header(7, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), 2 * MIB, 3 * MIB)
    assert Header.parse(h.pack()) == h
    raw = bytearray(h.pack())
    raw[100] ^= 1
    assert Header.parse(raw) is None  # bad CRC
    assert Header.parse(Header(1, ZERO_GUID, ZERO_GUID, ZERO_GUID, MIB, MIB,
                               version=2).pack()) is None


def test_choose_header_prefers_the_larger_sequence_number():
    one, two = zero_header(5).pack(), zero_header(6).pack()
    assert choose_header("f", one, two) == (zero_header(6), 1)
    assert choose_header("f", two, one) == (zero_header(6), 0)
    assert choose_header("f", one, b"\0" * 4096) == (zero_header(5), 0)
    assert choose_header("f", b"junk" * 1024, two)[1] == 1
    assert choose_header("f", one, one)[0] == zero_header(5)  # identical copies are fine


@pytest.mark.parametrize("first,second,problem", [
    (b"\0" * 4096, b"\0" * 4096, "no valid VHDX header"),
    (zero_header(3).pack(), Header(3, uuid.uuid4(), ZERO_GUID, ZERO_GUID, MIB, MIB).pack(),
     "differ"),
    (zero_header(3).pack(), Header(4, ZERO_GUID, ZERO_GUID, ZERO_GUID, MIB, MIB,
                                   log_version=1).pack(), "log version"),
    (zero_header(3).pack(), Header(4, ZERO_GUID, ZERO_GUID, ZERO_GUID, MIB, 512 * 1024).pack(),
     "1 MiB"),
])
def test_choose_header_refusals(first, second, problem):
    with pytest.raises(HvError) as err:
        choose_header("disk.vhdx", first, second)
    assert err.value.code == "BadRequest" and problem in err.value.message
    assert err.value.message.startswith("disk.vhdx: ")


# -- region tables ----------------------------------------------------------------------------

def test_region_table_round_trip_and_overlap():
    regions = [Region(BAT_REGION_GUID, 2 * MIB, MIB, True),
               Region(METADATA_REGION_GUID, 3 * MIB, MIB, True)]
    raw = pack_region_table(regions)
    parsed = parse_region_table("f", raw, raw, zero_header(1), 8 * MIB)
    assert list(parsed.values()) == regions
    overlapping = pack_region_table([Region(BAT_REGION_GUID, 2 * MIB, 2 * MIB, True),
                                     Region(METADATA_REGION_GUID, 3 * MIB, MIB, True)])
    with pytest.raises(HvError, match="overlaps"):
        parse_region_table("f", overlapping, overlapping, zero_header(1), 8 * MIB)
    with pytest.raises(HvError, match="truncated"):
        parse_region_table("f", raw, raw, zero_header(1), 3 * MIB)


# -- metadata and geometry ------------------------------------------------------------------------

def test_metadata_round_trip():
    params = DiskParameters(size=10 * GIB, block_size=16 * MIB, logical_sector_size=512,
                            physical_sector_size=4096, disk_id=uuid.uuid4(),
                            leave_block_allocated=True)
    region = pack_metadata(params)
    assert parse_metadata("f", region[:65536], len(region),
                          lambda off, n: region[off:off + n]) == params


@pytest.mark.parametrize("block,sector,ratio", [
    (1 * MIB, 512, 4096), (8 * MIB, 512, 512), (16 * MIB, 512, 256), (256 * MIB, 512, 16),
    (1 * MIB, 4096, 32768)])
def test_chunk_ratio(block, sector, ratio):
    assert chunk_ratio(block, sector) == ratio


def test_bat_interleave_matches_qemu_on_a_10_gib_disk():
    ratio = chunk_ratio(16 * MIB, 512)
    assert bat_index(256, ratio) == 257  # the write at 4 GiB
    assert bat_index(9 * GIB // (16 * MIB), ratio) == 578  # the write at 9 GiB
    assert bat_entry_count(10 * GIB, 16 * MIB, 512) == 640 + 2
    assert bat_entry_count(4 * GIB, 16 * MIB, 512) == 256  # no bitmap entry after the last chunk
    assert bat_entry_count(10 * GIB, 16 * MIB, 512, has_parent=True) == 3 * 257


def test_fresh_bat_leaves_bitmap_entries_not_present():
    params = DiskParameters(10 * GIB, 16 * MIB, 512, 512, uuid.uuid4())
    raw = pack_bat(params, MIB, None)
    entries = struct.unpack_from(f"<{params.bat_entries}Q", raw)
    assert entries[256] == 0 and entries[513] == 0 and entries[257] == ZERO
    assert sum(1 for e in entries if e == ZERO) == params.payload_blocks
    bat = BlockAllocationTable.load("f", params, 2 * MIB, MIB, raw[:8192], 4 * MIB,
                                    [(0, MIB, "header section")])
    assert bat.lookup(256) == (ZERO, 0)


@pytest.mark.parametrize("size,block", [(64 * MIB, 8 * MIB), (1 * GIB, 8 * MIB),
                                        (1 * GIB + 512, 16 * MIB), (100 * GIB, 16 * MIB),
                                        (101 * GIB, 32 * MIB), (33 * TIB, 64 * MIB)])
def test_auto_block_size_follows_qemu(size, block):
    assert auto_block_size(size) == block


# -- log entries ------------------------------------------------------------------------------

def test_log_entry_round_trip_and_replay_order():
    guid = uuid.uuid4()
    image_a, image_b = bytes([1]) * 4096, bytes(range(256)) * 16
    log = bytearray(MIB)
    raw = build_entry(sequence=9, tail=0, log_guid=guid, flushed_file_offset=4 * MIB,
                      last_file_offset=5 * MIB, writes=[(2 * MIB, image_a), (2 * MIB, image_b)],
                      zeros=[(3 * MIB, 8192)])
    log[:len(raw)] = raw
    entry = parse_entry(bytes(log), 0, guid)
    assert entry.ops == [(3 * MIB, 8192), (2 * MIB, image_a), (2 * MIB, image_b)]
    assert parse_entry(bytes(log), 0, uuid.uuid4()) is None  # another session's entry
    replay = find_replay("f", bytes(log), guid)
    assert (replay.head_sequence, replay.last_file_offset, replay.entries) == (9, 5 * MIB, 1)


def test_find_replay_follows_tail_and_picks_the_newest_sequence():
    guid, log = uuid.uuid4(), bytearray(MIB)
    pos = 0
    for seq, tail in ((1, 0), (2, 0), (3, 8192)):  # seq 3's sequence starts at seq 2
        raw = build_entry(sequence=seq, tail=tail, log_guid=guid, flushed_file_offset=MIB,
                          last_file_offset=MIB, writes=[(2 * MIB, bytes([seq]) * 4096)])
        log[pos:pos + len(raw)] = raw
        pos += len(raw)
    replay = find_replay("f", bytes(log), guid)
    assert replay.entries == 2 and [op[1][0] for op in replay.ops] == [2, 3]
    log[8192 + 100] ^= 0xFF  # corrupt seq 2: seq 3's tail chain breaks, seq 1 stands alone
    replay = find_replay("f", bytes(log), guid)
    assert replay.head_sequence == 1


def test_entry_that_wraps_around_the_log_end_is_read():
    guid = uuid.uuid4()
    raw = build_entry(sequence=4, tail=MIB - 4096, log_guid=guid, flushed_file_offset=MIB,
                      last_file_offset=MIB, writes=[(2 * MIB, b"w" * 4096)])
    log = bytearray(MIB)
    log[MIB - 4096:] = raw[:4096]
    log[:4096] = raw[4096:]
    assert find_replay("f", bytes(log), guid).ops == [(2 * MIB, b"w" * 4096)]


def test_log_writer_caps_entries_at_a_quarter_of_the_log():
    writer = LogWriter(MIB, MIB, uuid.uuid4())
    assert writer.max_writes == 63
    batches = writer.batches([(i * 4096, bytes(4096)) for i in range(130)])
    assert [len(b) for b in batches] == [63, 63, 4]
