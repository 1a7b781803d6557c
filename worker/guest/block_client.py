"""The guest's storage VSC: a block device over a `storvsp` VMBus channel.

Key names: `StorageDevice` (a `ClientDevice` with raw packets: the storvsp protocol of
worker/vmbus/storvsp_protocol.py), `BufferAllocator` (page-granular first-fit extents of the
channel's shared data buffer), `STORVSP_CLASS`.

Use: `read(offset, length, callback)`, `write(offset, data, callback, fua=False)`,
`flush(callback)`; callback(error, data) with error None on success (data: the bytes read).
Requests queue until the device is ready (NEGOTIATE and QUERY_PROPERTIES answered), then go
out as long as fewer than the disk's max_outstanding are in flight and the data buffer has
room; `properties` is the disk (size, sector sizes, max_transfer). A request larger than
max_transfer is refused at once (callers split). A write never goes out while an overlapping
write is in flight (it waits), which is what makes re-issue safe.

Re-issue: the device outlives its channel. When the driver host dies, the worker rescinds the
channel; the device keeps every request without a completion (with its write data: the new
channel has a new shared buffer). When the device is offered again, `opened()` negotiates anew
and re-sends them, oldest first, with the same transaction ids and buffer offsets. A completion
pops its request, so each completes exactly once; a re-issued READ or WRITE is idempotent.
When the host says the device failed, every waiting request ends with an error.

Performance: a request costs one struct pack and one ring write; write data is copied once
into the shared buffer (one memcpy), read data once out of it. Completions are handled as the
doorbell fires, and callbacks may issue the next request at once (queue depth 1 is a ping-pong
of two doorbells).
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Callable

from worker.guest.vmbus_client import ClientDevice
from worker.vmbus import storvsp_protocol as sp
from worker.vmbus.ring import PacketFlags, PacketType

STORVSP_CLASS = "storvsp"
PAGE = 4096
Callback = Callable[[str | None, bytes | None], None]
SPIN_SECONDS = 50e-6     # busy-poll for a completion this long before sleeping (QD1 latency)
SPIN_MAX_IN_FLIGHT = 1   # ... only with this few requests in flight (deeper queues batch anyway)

# The hot path: a buffered READ/WRITE success is a bare response header; it is unpacked here with
# plain ints and turned into a Response with the enum members looked up (no Enum() calls), and
# checked against its request by `Outstanding.complete` as any other. Anything else goes through
# `decode_response`. Checked at import against the protocol module's decoding.
_RESPONSE_HEADER = struct.Struct("<HHIQII")   # operation, flags, status, txid, length, reserved
_DATA_OPS = {int(op): op for op in (sp.Operation.READ, sp.Operation.WRITE)}
_IN_BUFFER = sp.RequestFlags.DATA_IN_BUFFER


def _decode_response(payload) -> sp.Response:
    if len(payload) == _RESPONSE_HEADER.size:
        op, flags, status, txid, length, reserved = _RESPONSE_HEADER.unpack_from(payload)
        if status == 0 and flags == _IN_BUFFER and not reserved and op in _DATA_OPS \
                and txid and length <= sp.MAX_TRANSFER_LIMIT:
            return sp.Response(_DATA_OPS[op], txid, sp.Status.SUCCESS, length, _IN_BUFFER)
    return sp.decode_response(payload)


for _req in (sp.read(7, 4096, 4096, 8192), sp.write_from_buffer(9, 0, 512, 0, True)):
    _raw = sp.encode_response(sp.complete(_req))
    if _decode_response(_raw) != sp.decode_response(_raw):
        raise ImportError("block_client: the fast response decoding differs from storvsp_protocol's")
del _req, _raw


class BufferAllocator:
    """First-fit allocation of page-aligned extents of a buffer of `size` bytes."""

    def __init__(self, size: int):
        self.size = size - size % PAGE
        self.free_list: list[list[int]] = [[0, self.size]] if self.size else []

    def alloc(self, length: int) -> int | None:
        need = max(PAGE, -(-length // PAGE) * PAGE)
        for i, (start, n) in enumerate(self.free_list):
            if n >= need:
                if n == need:
                    del self.free_list[i]
                else:
                    self.free_list[i] = [start + need, n - need]
                return start
        return None

    def free(self, offset: int, length: int) -> None:
        need = max(PAGE, -(-length // PAGE) * PAGE)
        fl = self.free_list
        i = 0
        while i < len(fl) and fl[i][0] < offset:
            i += 1
        fl.insert(i, [offset, need])
        if i + 1 < len(fl) and fl[i][0] + fl[i][1] == fl[i + 1][0]:   # merge with the next
            fl[i][1] += fl.pop(i + 1)[1]
        if i > 0 and fl[i - 1][0] + fl[i - 1][1] == fl[i][0]:         # and the previous
            fl[i - 1][1] += fl.pop(i)[1]


@dataclass
class _Entry:
    request: sp.Request
    callback: Callback | None
    data: bytes | None = None       # a WRITE's data (re-copied into a new channel's buffer)
    channel_id: int | None = None   # the channel it was last sent on


class StorageDevice(ClientDevice):
    raw = True
    spin_seconds = SPIN_SECONDS

    def __init__(self, bus, offer):
        super().__init__(bus, offer)
        self.table = sp.Outstanding(sp.MAX_OUTSTANDING_LIMIT)
        self.entries: dict[int, _Entry] = {}
        self.waiting: deque[tuple] = deque()       # (op, offset, length, data, callback, fua)
        self.properties: sp.DiskProperties | None = None
        self.ready = False
        self.alloc: BufferAllocator | None = None
        self.on_ready: list[Callable[["StorageDevice"], None]] = []
        self.error: str | None = None              # the device failed or refused us
        self.bytes_read = self.bytes_written = 0

    # --- the API ---------------------------------------------------------------------------------
    def read(self, offset: int, length: int, callback: Callback) -> None:
        self._submit(sp.Operation.READ, offset, length, None, callback, False)

    def write(self, offset: int, data, callback: Callback, fua: bool = False) -> None:
        data = bytes(data)
        self._submit(sp.Operation.WRITE, offset, len(data), data, callback, fua)

    def flush(self, callback: Callback) -> None:
        self._submit(sp.Operation.FLUSH, 0, 0, None, callback, False)

    def spin_wanted(self) -> bool:
        return self.ready and 0 < len(self.entries) <= SPIN_MAX_IN_FLIGHT

    @property
    def in_flight(self) -> int:
        return len(self.entries) + len(self.waiting)

    def _submit(self, op, offset, length, data, callback, fua) -> None:
        if self.error is not None:
            callback(self.error, None)
            return
        if self.properties is not None and length > self.properties.max_transfer:
            callback(f"{op.name} of {length} bytes exceeds max_transfer "
                     f"{self.properties.max_transfer}", None)
            return
        self.waiting.append((op, offset, length, data, callback, fua))
        self._pump()

    def _overlaps_write(self, offset: int, length: int) -> bool:
        for e in self.entries.values():
            r = e.request
            if r.operation == sp.Operation.WRITE and r.offset < offset + length and offset < r.offset + r.length:
                return True
        return False

    def _pump(self) -> None:
        """Issue waiting requests while the disk lets us (in order: a request that must wait
        holds up the ones behind it)."""
        if self.properties is None or self.alloc is None:
            return
        limit = self.properties.max_outstanding
        while self.waiting and len(self.table) < limit:
            op, offset, length, data, callback, fua = self.waiting[0]
            if op == sp.Operation.WRITE and self._overlaps_write(offset, length):
                return
            if op == sp.Operation.FLUSH:
                req = self.table.issue(sp.flush)
            else:
                where = self.alloc.alloc(length)
                if where is None:
                    return
                if op == sp.Operation.READ:
                    req = self.table.issue(sp.read, offset, length, where)
                else:
                    req = self.table.issue(sp.write_from_buffer, offset, length, where, fua)
            self.waiting.popleft()
            entry = self.entries[req.txid] = _Entry(req, callback, data)
            if self.ready:
                self._send(entry)

    def _send(self, entry: _Entry) -> None:
        req, ep = entry.request, self.endpoint
        if ep is None:
            return
        if entry.data is not None:
            ep.buffer[req.buffer_offset:req.buffer_offset + req.length] = entry.data
        if entry.channel_id is not None and entry.channel_id != self.channel_id:
            self.reissued += 1
        entry.channel_id = self.channel_id
        ep.send_packet(PacketType.DATA, sp.encode_request(req), req.txid,
                       PacketFlags.COMPLETION_REQUESTED)

    def _control(self, make) -> None:
        req = self.table.issue(make)
        self.entries[req.txid] = _Entry(req, None)
        self.endpoint.send_packet(PacketType.DATA, sp.encode_request(req), req.txid,
                                  PacketFlags.COMPLETION_REQUESTED)

    # --- channel events --------------------------------------------------------------------------
    def opened(self) -> None:
        """A (new) channel: negotiate, learn the disk, then re-issue what was in flight."""
        for txid, entry in list(self.entries.items()):
            if entry.request.operation in (sp.Operation.NEGOTIATE, sp.Operation.QUERY_PROPERTIES):
                self.table.forget(txid)
                del self.entries[txid]
        self.ready, self.error = False, None
        buf = self.buffer
        if buf is None or (self.alloc is not None and self.alloc.size != len(buf) - len(buf) % PAGE):
            self._fail_all("the storage channel has no usable shared buffer")
            return
        if self.alloc is None:
            self.alloc = BufferAllocator(len(buf))
        self._control(sp.negotiate)
        self._control(sp.query_properties)

    def lost(self) -> None:
        self.ready = False

    def failed(self, reason: str) -> None:
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        self.error = reason
        entries, self.entries = self.entries, {}
        waiting, self.waiting = self.waiting, deque()
        for txid in entries:
            self.table.forget(txid)
        for e in entries.values():
            if e.callback is not None:
                e.callback(reason, None)
        for item in waiting:
            item[4](reason, None)

    def on_packet(self, packet) -> None:
        if packet.type != PacketType.COMPLETION:
            raise sp.StorProtocolError(f"unexpected packet type {packet.type} from storvsp")
        resp = _decode_response(packet.payload)
        if resp.txid != packet.txid:
            raise sp.StorProtocolError(f"response txid {resp.txid} in a packet of txid {packet.txid}")
        req = self.table.complete(resp)
        entry = self.entries.pop(req.txid)
        op = req.operation
        if op == sp.Operation.NEGOTIATE:
            if resp.status != sp.Status.SUCCESS:
                self._fail_all(f"storvsp protocol version {resp.version:#x} is not ours "
                               f"({sp.PROTOCOL_VERSION:#x})")
            return
        if op == sp.Operation.QUERY_PROPERTIES:
            if resp.status != sp.Status.SUCCESS or resp.properties is None:
                self._fail_all(f"storvsp refused QUERY_PROPERTIES: {resp.status.name}")
                return
            first = self.properties is None
            self.properties, self.ready = resp.properties, True
            for e in sorted(self.entries.values(), key=lambda e: e.request.txid):
                if e.request.operation in (sp.Operation.READ, sp.Operation.WRITE, sp.Operation.FLUSH):
                    self._send(e)   # re-issue: same txid, same buffer offset
            if first:
                for listener in self.on_ready:
                    listener(self)
            self._pump()
            return
        data = None
        if op in (sp.Operation.READ, sp.Operation.WRITE):
            if resp.status == sp.Status.SUCCESS and op == sp.Operation.READ:
                data = bytes(self.buffer[req.buffer_offset:req.buffer_offset + req.length]) \
                    if not req.inline else bytes(resp.data)
                self.bytes_read += req.length
            elif resp.status == sp.Status.SUCCESS:
                self.bytes_written += req.length
            self.alloc.free(req.buffer_offset, req.length)
        self.completed += 1
        error = None if resp.status == sp.Status.SUCCESS else \
            f"{op.name} at {req.offset}+{req.length}: {resp.status.name}"
        if entry.callback is not None:
            entry.callback(error, data)
        self._pump()
