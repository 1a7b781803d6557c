"""The switch's ports that are not VMs, as the netvsp driver host serves them.

- `HostTapPort`: an Internal switch's host interface, a persistent TAP vmms created
  (worker/tap_device.py `create_persistent`), so a crash of the driver host leaves the
  interface and its addresses in place.
- `UplinkPort`: an External switch's uplink, an AF_PACKET socket bound to an existing host
  interface (promiscuous, PACKET_VNET_HDR so offloaded frames keep their virtio-net header,
  PACKET_IGNORE_OUTGOING so the switch does not hear its own frames back).

vmms opens both (`open_host_port`: it has the privileges, CAP_NET_ADMIN / CAP_NET_RAW) and
hands the driver host duplicates with its configuration (DESIGN §9: a driver host gets what it
serves as descriptors), so the switch host itself needs no privilege.

Both read and write whole frames with the 10-byte virtio-net header; `read()` answers what is
waiting now (bounded), `write()` drops a frame the kernel has no room for (Ethernet).
"""
from __future__ import annotations

import os
import socket
import struct

from worker import tap_device

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
READ_BATCH = 64


def open_uplink(ifname: str) -> socket.socket:
    """An External switch's packet socket on host interface `ifname` (needs CAP_NET_RAW: vmms
    opens it and hands the driver host a duplicate). OSError if the interface is missing."""
    index = socket.if_nametoindex(ifname)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass     # older kernels: outgoing frames are filtered in read()
        sock.bind((ifname, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                        struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except BaseException:
        sock.close()
        raise
    return sock


def open_host_port(spec: dict) -> int | None:
    """A descriptor for a switch's host side (Internal: its TAP; External: a packet socket),
    None for a Private switch. The caller owns it."""
    if spec.get("type") == "Internal" and spec.get("host_interface"):
        return tap_device.open_tap(spec["host_interface"])
    if spec.get("type") == "External" and spec.get("net_adapter"):
        return open_uplink(spec["net_adapter"]).detach()
    return None


class HostTapPort:
    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.dropped = 0

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[bytes]:
        return tap_device.read_frames(self.fd, READ_BATCH)

    def write(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except (BlockingIOError, OSError):
            self.dropped += 1

    def close(self) -> None:
        os.close(self.fd)


class UplinkPort:
    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.dropped = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[bytes]:
        out = []
        recv = self.sock.recvfrom
        try:
            for _ in range(READ_BATCH):
                data, addr = recv(tap_device.MAX_FRAME)
                if addr[2] != socket.PACKET_OUTGOING:
                    out.append(data)
        except (BlockingIOError, InterruptedError):
            pass
        return out

    def write(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        self.sock.close()


def port_for(spec: dict, fd: int):
    """The port object serving a switch's host side over `fd` (which it then owns)."""
    return HostTapPort(fd) if spec.get("type") == "Internal" else UplinkPort(fd)
