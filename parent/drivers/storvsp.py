"""storvsp: the storage VSP, a parent-hosted driver serving virtual hard disks over VMBus.

Devices in three parts (STYLE.md): the wire protocol is worker/vmbus/storvsp_protocol.py (shared
with the guest's VSC, worker/guest/block_client.py); the configuration is the device's settings
(`path`, `controller_location`: what vmms derives from a VM's `hard_disk_drives`,
parent/vm_devices.py `storage_devices`); this module is the implementation. It talks to the disk
only through the disk-backend interface (parent/storage/disk_backend.py: read, write, flush),
so VHDX is just the first backend.

Key names: `StorvspDriver` (entry point `storvsp` in pyproject.toml), `OpenDisks` (the disks
this driver host holds: one open, locked image per file, shared by the channels that use it),
`StorChannel` (per-channel state: the negotiated flag and the disk's properties).

A channel's life: the guest opens it → the driver opens the image writable (from the
descriptor the worker opened and handed over with the open; a sandboxed driver host cannot open
a path) (the backend's
exclusive flock: the disk is held by this process while any channel serves it; another opener
gets Busy and the open is refused) → NEGOTIATE, QUERY_PROPERTIES, then READ / WRITE / FLUSH,
each answered by exactly one COMPLETION with the request's transaction id → the channel closes
(or the worker goes away) → the last channel of a disk flushes and closes the image.

Several requests may be in flight per channel: the guest writes as many as it likes (up to the
advertised max_outstanding) into the ring; the driver host drains the ring in one batch and
answers each in order. Data moves through the channel's shared data buffer (`buffer_size`, the
GPADL's role): the request names an offset in it; a READ is preadv'd by the backend straight
into the buffer (`read_into`, when the backend has it; else one read and one copy), a WRITE hands the backend a memoryview of the buffer (one
pwrite, no copy). Inline data (in the packet) is accepted too, up to INLINE_LIMIT for reads.

Re-issue after a crash: a guest re-sends what had no completion, with the same txids, on the
new channel. A READ or WRITE of the same range and data is idempotent (the VSC never has two
overlapping writes in flight), a FLUSH trivially so; so nothing is lost or applied twice.

Metering: `stats()` reports bytes read and written per VM (`vms` {vm_id: {read, write}}),
which vmms turns into measure-vm's TotalDiskRead / TotalDiskWrite (parent/disk_metering.py).

Performance: per request one struct unpack, one backend call and one struct pack; the bottleneck
is the Python work per request and the doorbell wake-ups, not the copies (see
scripts/bench/storage).
"""
from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass

from hypervisor.runtime.errors import HvError
from parent.drivers.driver_api import Driver, DriverChannel, DriverContext, DriverRefused
from parent.storage.disk_backend import DiskBackend, open_disk
from worker.vmbus import storvsp_protocol as sp
from worker.vmbus.ring import PacketType

INLINE_LIMIT = 16 << 10          # largest READ answered inline in the ring
MAX_OUTSTANDING = 64

# The hot path: a buffered READ or WRITE that succeeded is answered with a response header
# packed here directly (no Response object, no enum conversions, no re-validation of what we
# built ourselves); checked at import against the protocol module's own encoding.
_OK_HEADER = struct.Struct("<HHIQII")   # operation, flags, status, txid, length, reserved
_IN_BUFFER = int(sp.RequestFlags.DATA_IN_BUFFER)


def _ok_in_buffer(req: sp.Request) -> bytes:
    return _OK_HEADER.pack(req.operation, _IN_BUFFER, 0, req.txid, req.length, 0)


for _req in (sp.read(7, 4096, 4096, 8192), sp.write_from_buffer(9, 0, 512, 0, True)):
    if _ok_in_buffer(_req) != sp.encode_response(sp.complete(_req)):
        raise ImportError("storvsp: the fast response encoding differs from storvsp_protocol's")
del _req


class OpenDisks:
    """The images this driver host holds open, one per file, with a count of channels."""

    def __init__(self, opener=open_disk):
        self._open = opener
        self._disks: dict[str, list] = {}     # path -> [disk, channels]

    def acquire(self, path: str, fd: int | None = None,
                parents: list | None = None) -> DiskBackend:
        """The open image of `path` (opened from `fd`, the parent's descriptor, when given;
        `parents`: a differencing disk's chain as [(path, fd)], handed over too; descriptors not
        needed are closed)."""
        entry = self._disks.get(path)
        if entry is not None:
            for extra in ([fd] if fd is not None else []) + [f for _p, f in parents or ()]:
                os.close(extra)
        if entry is None:
            if parents:
                disk = self._open(path, writable=True, fd=fd, parents=parents)
            elif fd is None:
                disk = self._open(path, writable=True)
            else:
                disk = self._open(path, writable=True, fd=fd)
            entry = self._disks[path] = [disk, 0]
        entry[1] += 1
        return entry[0]

    def release(self, path: str) -> None:
        entry = self._disks.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._disks[path]
            entry[0].close()

    def __len__(self) -> int:
        return len(self._disks)


@dataclass
class StorChannel:
    path: str
    disk: DiskBackend
    properties: sp.DiskProperties
    negotiated: bool = False


class StorvspDriver(Driver):
    version = "1.0"
    class_id = "storvsp"
    ring_size = 128 * 1024
    buffer_size = 8 << 20
    raw_packets = True

    def __init__(self, context: DriverContext | None = None):
        super().__init__(context)
        self.disks = OpenDisks()
        self.by_vm: dict[str, dict[str, int]] = {}
        self.requests = 0
        self.errors = 0

    # --- channels --------------------------------------------------------------------------------
    def open(self, channel: DriverChannel) -> None:
        path = channel.settings.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise DriverRefused("storvsp needs an absolute disk path in the device settings")
        try:
            disk = self.disks.acquire(path, channel.take_file(path), self._parents(channel))
        except HvError as err:
            raise DriverRefused(err.message) from None
        try:
            disk_id = getattr(disk, "disk_id", None)
            props = sp.DiskProperties(
                size=disk.size, logical_sector_size=disk.logical_sector_size,
                physical_sector_size=disk.physical_sector_size,
                max_transfer=sp.DEFAULT_MAX_TRANSFER, max_outstanding=MAX_OUTSTANDING,
                read_only=not disk.writable,
                disk_id=disk_id if isinstance(disk_id, uuid.UUID) else uuid.UUID(int=0))
            if props.problem():
                raise DriverRefused(f"{path}: {props.problem()}")
        except BaseException:
            self.disks.release(path)
            raise
        channel.state = StorChannel(path, disk, props)
        self.by_vm.setdefault(channel.vm_id, {"read": 0, "write": 0})

    @staticmethod
    def _parents(channel: DriverChannel) -> list | None:
        """A differencing disk's parent chain as handed over by the worker ([(path, fd)],
        nearest first), or None when the settings name none. A parent not handed over stays
        out: opening the chain then names the missing file."""
        names = channel.settings.get("parent_paths")
        if not isinstance(names, list) or not names:
            return None
        out = []
        for name in names:
            fd = channel.take_file(name) if isinstance(name, str) else None
            if fd is None:
                break
            out.append((name, fd))
        return out

    def close(self, channel: DriverChannel) -> None:
        st = channel.state
        if isinstance(st, StorChannel):
            channel.state = None
            self.disks.release(st.path)

    # --- requests --------------------------------------------------------------------------------
    def packet(self, channel: DriverChannel, packet) -> bytes | None:
        if packet.type != PacketType.DATA:
            return None                       # CANCEL: every request completes anyway
        req = sp.decode_request(packet.payload)
        if req.txid != packet.txid:
            raise sp.StorProtocolError(f"request txid {req.txid} in a packet of txid {packet.txid}")
        self.requests += 1
        resp = self._serve(channel, channel.state, req)
        if type(resp) is bytes:
            return resp                       # an encoded success (the hot path)
        if resp.status not in (sp.Status.SUCCESS, sp.Status.VERSION_MISMATCH):
            self.errors += 1
        return sp.encode_response(resp)

    def _serve(self, channel: DriverChannel, st: StorChannel, req: sp.Request) -> sp.Response | bytes:
        op = req.operation
        if op == sp.Operation.NEGOTIATE:
            if req.version >> 16 != sp.PROTOCOL_VERSION >> 16:
                return sp.complete(req, sp.Status.VERSION_MISMATCH, version=sp.PROTOCOL_VERSION)
            st.negotiated = True
            return sp.complete(req, version=sp.PROTOCOL_VERSION)
        if not st.negotiated:
            return sp.complete(req, sp.Status.INVALID_REQUEST)
        if op == sp.Operation.QUERY_PROPERTIES:
            return sp.complete(req, properties=st.properties)
        if op == sp.Operation.FLUSH:
            try:
                st.disk.flush()
            except HvError:
                return sp.complete(req, sp.Status.IO_ERROR)
            return sp.complete(req)
        status = sp.check_request(req, st.properties)
        if status != sp.Status.SUCCESS:
            return sp.complete(req, status)
        buf = None
        if not req.inline:
            buf = channel.buffer
            if buf is None or req.buffer_offset + req.length > len(buf):
                return sp.complete(req, sp.Status.INVALID_REQUEST)
        elif op == sp.Operation.READ and req.length > INLINE_LIMIT:
            return sp.complete(req, sp.Status.TOO_LARGE)
        counts = self.by_vm.setdefault(channel.vm_id, {"read": 0, "write": 0})
        try:
            if op == sp.Operation.READ:
                if buf is None:
                    data = st.disk.read(req.offset, req.length)
                    counts["read"] += req.length
                    return sp.complete(req, data=data)
                read_into = getattr(st.disk, "read_into", None)
                if read_into is None:
                    buf[req.buffer_offset:req.buffer_offset + req.length] = \
                        st.disk.read(req.offset, req.length)
                else:
                    with buf[req.buffer_offset:req.buffer_offset + req.length] as target:
                        read_into(req.offset, target)   # preadv straight into the buffer
                counts["read"] += req.length
                return _ok_in_buffer(req)
            if buf is None:
                st.disk.write(req.offset, req.data)
            else:
                with buf[req.buffer_offset:req.buffer_offset + req.length] as source:
                    st.disk.write(req.offset, source)   # the backend's pwrite reads the buffer
            if req.flags & sp.RequestFlags.FUA:
                st.disk.flush()
            counts["write"] += req.length
            return _ok_in_buffer(req) if buf is not None else sp.complete(req)
        except HvError:
            return sp.complete(req, sp.Status.IO_ERROR)

    def stats(self) -> dict:
        return {"disks": len(self.disks), "requests": self.requests, "errors": self.errors,
                "vms": {vm: dict(c) for vm, c in self.by_vm.items()}}
