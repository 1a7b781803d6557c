"""Guest RAM files: private creation, sharing by mmap, hot-add, balloon-down that really returns
pages, and cleanup. Every file made here carries a per-test prefix and is swept afterwards."""
from __future__ import annotations

import gc
import mmap
import os
import secrets
import stat

import pytest

from hypervisor.runtime.errors import HvError
from hypervisor.guest_memory import SHM_DIR, GuestMemory, punch_hole, sweep_stale

MIB = 1024 * 1024

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


@pytest.fixture
def prefix():
    prefix = f"hvemu-test-{os.getpid()}-{secrets.token_hex(4)}-"
    yield prefix
    leftovers = sweep_stale(prefix)
    assert leftovers == [], f"test left guest memory behind: {leftovers}"


def fill(path: str, offset: int, length: int, byte: int = 0xAB) -> None:
    """Touch every page of a range through a second descriptor, as the guest would."""
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, offset + length) as m:
            m[offset:offset + length] = bytes([byte]) * length
    finally:
        os.close(fd)


def blocks(gm: GuestMemory) -> int:
    return os.fstat(gm.fileno()).st_blocks


def test_created_private_with_unguessable_name(prefix):
    with GuestMemory(4 * MIB, prefix) as a, GuestMemory(4 * MIB, prefix) as b:
        st = os.stat(a.path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == a.size == 4 * MIB
        name = os.path.basename(a.path)
        assert name.startswith(prefix) and len(name) == len(prefix) + 32  # 128 random bits
        int(name[len(prefix):], 16)
        assert a.path != b.path
        assert os.get_inheritable(a.fileno()) is False


def test_mode_is_0600_whatever_the_umask(prefix):
    old = os.umask(0)
    try:
        with GuestMemory(2 * MIB, prefix) as gm:
            assert stat.S_IMODE(os.stat(gm.path).st_mode) == 0o600
    finally:
        os.umask(old)


def test_guest_mapping_shares_pages_with_hypervisor(prefix):
    with GuestMemory(4 * MIB, prefix) as gm:
        fill(gm.path, MIB, 4096, 0x5A)
        assert os.pread(gm.fileno(), 4096, MIB) == b"\x5a" * 4096


def test_grow_is_hot_add(prefix):
    with GuestMemory(2 * MIB, prefix) as gm:
        fill(gm.path, 0, 4096, 0x11)
        gm.resize(8 * MIB)
        assert gm.size == os.fstat(gm.fileno()).st_size == 8 * MIB
        fill(gm.path, 6 * MIB, 4096, 0x22)  # the added range is mappable and usable
        assert os.pread(gm.fileno(), 1, 0) == b"\x11"
        assert os.pread(gm.fileno(), 1, 6 * MIB) == b"\x22"


def test_shrink_returns_pages_to_the_host(prefix):
    with GuestMemory(8 * MIB, prefix) as gm:
        fill(gm.path, 0, 8 * MIB)
        full = blocks(gm)
        assert full * 512 >= 8 * MIB
        gm.resize(2 * MIB)
        assert gm.size == os.fstat(gm.fileno()).st_size == 2 * MIB
        assert blocks(gm) * 512 <= 2 * MIB < full * 512
        assert os.pread(gm.fileno(), 4, 0) == b"\xab" * 4  # the kept range is untouched


def test_punch_hole_frees_pages_but_keeps_size(prefix):
    with GuestMemory(8 * MIB, prefix) as gm:
        fill(gm.path, 0, 8 * MIB)
        before = blocks(gm)
        punch_hole(gm.fileno(), 2 * MIB, 4 * MIB)
        assert os.fstat(gm.fileno()).st_size == 8 * MIB
        assert (before - blocks(gm)) * 512 >= 4 * MIB
        assert os.pread(gm.fileno(), 4, 3 * MIB) == b"\0" * 4  # punched pages read as zero
        assert os.pread(gm.fileno(), 4, 7 * MIB) == b"\xab" * 4


def test_close_removes_and_is_idempotent(prefix):
    gm = GuestMemory(2 * MIB, prefix)
    path = gm.path
    gm.close()
    gm.close()
    assert gm.closed and not os.path.exists(path)
    for call in (gm.fileno, lambda: gm.resize(4 * MIB)):
        with pytest.raises(HvError) as exc:
            call()
        assert exc.value.code == "InvalidState"


def test_close_after_file_already_removed(prefix):
    gm = GuestMemory(2 * MIB, prefix)
    os.unlink(gm.path)
    gm.close()
    assert gm.closed


def test_forgotten_object_is_cleaned_up(prefix):
    gm = GuestMemory(2 * MIB, prefix)
    path = gm.path
    del gm
    gc.collect()
    assert not os.path.exists(path)


@pytest.mark.parametrize("size", [-1, 1.5, True, "2"])
def test_bad_size_is_refused(prefix, size):
    with pytest.raises(HvError) as exc:
        GuestMemory(size, prefix)
    assert exc.value.code == "BadRequest"
    with GuestMemory(2 * MIB, prefix) as gm, pytest.raises(HvError):
        gm.resize(size)


def test_sweep_removes_only_our_regular_files(prefix, tmp_path):
    stale = os.path.join(SHM_DIR, prefix + "deadbeef")
    os.close(os.open(stale, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    outside = tmp_path / "keep"
    outside.write_text("x")
    link = os.path.join(SHM_DIR, prefix + "link")
    os.symlink(outside, link)
    try:
        assert sweep_stale(prefix) == [stale]
        assert not os.path.exists(stale) and outside.exists()
    finally:
        os.unlink(link)


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b"])
def test_sweep_refuses_unsafe_prefixes(bad):
    with pytest.raises(HvError) as exc:
        sweep_stale(bad)
    assert exc.value.code == "BadRequest"
