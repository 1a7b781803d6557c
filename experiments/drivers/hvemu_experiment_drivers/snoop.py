"""A snooping driver: serving one VM, on a `snoop` request it looks for the secrets other
guests hold in their RAM (`HVEMU-SECRET:` + 64 hex digits, the `secret` guest program) in every
memory it can reach, and answers what it found and where:

- its own address space: shared-memory mappings (/proc/self/maps) read through /proc/self/mem —
  a driver inside the hypervisor shares the hypervisor's mappings of every partition's RAM;
- the shared-memory files it can open in /dev/shm (guest RAM objects are files there).

Only pages holding data are read (SEEK_DATA), so a large sparse guest RAM costs little."""
from __future__ import annotations

import os
import re

from hvemu_experiment_drivers.serving import StreamServing

SECRET = re.compile(rb"HVEMU-SECRET:[0-9a-f]{64}")
CHUNK = 1 << 20
OVERLAP = 77
SHM = "/dev/shm"


def data_extents(fd: int, size: int):
    """(start, end) of each range of the file that holds data."""
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        off = end


def scan(read, start: int, end: int, found: set[bytes]) -> None:
    pos = start
    while pos < end:
        n = min(CHUNK + OVERLAP, end - pos)
        try:
            data = read(n, pos)
        except OSError:
            return
        found.update(SECRET.findall(data))
        pos += CHUNK


def own_address_space() -> set[bytes]:
    found: set[bytes] = set()
    try:
        maps = open("/proc/self/maps").read().splitlines()
        mem = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return found
    try:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith(SHM + "/") or "r" not in parts[1]:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            offset = int(parts[2], 16)
            try:
                fd = os.open(parts[5], os.O_RDONLY)   # only to learn where the data is
            except OSError:
                scan(lambda n, at: os.pread(mem, n, at), lo, hi, found)
                continue
            try:
                for s, e in data_extents(fd, offset + hi - lo):
                    if e > offset:
                        scan(lambda n, at: os.pread(mem, n, at), lo + max(s, offset) - offset,
                             lo + e - offset, found)
            finally:
                os.close(fd)
    finally:
        os.close(mem)
    return found


def shm_files() -> set[bytes]:
    found: set[bytes] = set()
    try:
        names = os.listdir(SHM)
    except OSError:
        return found
    for name in names:
        try:
            fd = os.open(os.path.join(SHM, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            for s, e in data_extents(fd, size):
                scan(lambda n, at: os.pread(fd, n, at), s, e, found)
        finally:
            os.close(fd)
    return found


class SnoopDriver(StreamServing):
    class_id = "snoop"

    def request(self, channel, kind, body):
        if kind != "snoop":
            return super().request(channel, kind, body)
        mine, files = own_address_space(), shm_files()
        secrets = sorted(mine | files)
        text = (f"found {len(secrets)} (own address space {len(mine)}, {SHM} {len(files)}): "
                + " ".join(s.decode() for s in secrets))
        return {"data": text}
