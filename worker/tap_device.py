"""TAP devices (Linux `/dev/net/tun`) and the few interface ioctls hvemu needs.

Used by the guest runtime (each network adapter is a TAP `ethN` in the partition's network
namespace) and by the netvsp driver host (an Internal switch's host interface); vmms creates
and deletes an Internal switch's persistent TAP (`create_persistent`, `delete_persistent`).

TAPs are opened with IFF_VNET_HDR and the offloads TUN_F_CSUM | TSO4 | TSO6 | TSO_ECN: every
frame read or written starts with a 10-byte virtio-net header (VNET_HDR_SIZE) and may be a
segmentation-offloaded frame of up to 64 KiB with a partial checksum. The kernel on the far
TAP finishes the checksum or segments as needed, so the semantics are those of a NIC with
offloads. Every frame of hvemu's switch carries that header (a host or uplink port without
offloads writes a zero header).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import subprocess

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_UP = 0x1
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFHWADDR = 0x8913, 0x8914, 0x8924
ARPHRD_ETHER = 1
VNET_HDR_SIZE = 10
ZERO_VNET_HDR = bytes(VNET_HDR_SIZE)
MAX_FRAME = 65536 + VNET_HDR_SIZE + 64      # an offloaded frame, its header and slack
IFNAMSIZ = 16


def check_ifname(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name.encode()) < IFNAMSIZ or "/" in name \
            or any(c.isspace() for c in name) or name in (".", ".."):
        raise ValueError(f"bad interface name {name!r} (1-15 characters, no '/' or spaces)")
    return name


def open_tap(name: str, offloads: bool = True) -> int:
    """Create (or attach to a persistent) TAP `name`; answers its non-blocking descriptor."""
    check_ifname(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if offloads else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if offloads:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
            fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_persistent(name: str, owner: int | None = None) -> None:
    """A TAP that outlives its opener (an Internal switch's host interface): it survives a
    crash of the driver host serving it, with its addresses."""
    fd = open_tap(name)
    try:
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)
    set_up(name)


def delete_persistent(name: str) -> None:
    """Delete a persistent TAP; one still attached (EBUSY: its driver host has not let go
    yet) is deleted by netlink, which detaches its users."""
    try:
        fd = open_tap(name)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        proc = subprocess.run(["ip", "link", "delete", name], capture_output=True, text=True,
                              timeout=10, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if proc.returncode != 0:
            raise OSError(errno.EBUSY, proc.stderr.strip() or f"cannot delete {name}") from None
        return
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)     # the device goes with the last descriptor


def _ifreq_ioctl(request: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), request, payload)


def set_mac(name: str, mac: bytes) -> None:
    _ifreq_ioctl(SIOCSIFHWADDR, struct.pack("16sH6s8x", name.encode(), ARPHRD_ETHER, mac))


def set_up(name: str) -> None:
    got = _ifreq_ioctl(SIOCGIFFLAGS, struct.pack("16sH22x", name.encode(), 0))
    flags = struct.unpack_from("H", got, 16)[0]
    _ifreq_ioctl(SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))


def exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def read_frames(fd: int, limit: int) -> list[bytes]:
    """Up to `limit` frames now waiting (each with its virtio-net header)."""
    out = []
    read = os.read
    try:
        for _ in range(limit):
            out.append(read(fd, MAX_FRAME))
    except BlockingIOError:
        pass
    return out
