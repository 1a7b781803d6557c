"""The storvsp wire protocol: the messages a guest's storage VSC and the storvsp driver (the
VSP, in a `drvhost`) exchange over a VMBus channel. Pure and transport-agnostic: bytes in,
bytes out; the ring, the channel and the disk backend are someone else's.

Like Hyper-V's VSTOR packets, but with the SCSI layer folded away: a request names an operation
and a byte range of the virtual disk, and gets exactly one response with the same transaction
id. Every message is a fixed little-endian header, then an operation-specific body.

Request (32-byte header):

    u16 operation   u16 flags   u32 length   u64 txid   u64 offset   u64 buffer_offset

Response (24-byte header):

    u16 operation   u16 flags   u32 status   u64 txid   u32 length   u32 reserved (0)

| operation | request body | response body (status SUCCESS) |
|---|---|---|
| NEGOTIATE | u32 version, u32 reserved | u32 version, u32 reserved — also with VERSION_MISMATCH, naming the host's version |
| QUERY_PROPERTIES | — | `DiskProperties` (48 bytes) |
| READ | — | `length` bytes of disk data (none with DATA_IN_BUFFER) |
| WRITE | `length` bytes of data (none with DATA_IN_BUFFER) | — (`length` = bytes written) |
| FLUSH | — | — |

`offset` and `length` are bytes of the virtual disk (whole logical sectors: `check_request`);
`txid` is non-zero and unique among the requests in flight on the channel. Flags: FUA (write:
durable before the completion, like SCSI's force-unit-access) and DATA_IN_BUFFER (the data is
not inline but in the channel's shared data buffer at `buffer_offset` — GPADL-like; the
transport resolves it). A failed request's response has no body and `length` 0.

Key names: `Operation`, `RequestFlags`, `Status`, `Request`, `Response`, `DiskProperties`;
`encode_request` / `decode_request`, `encode_response` / `decode_response`, `complete()` (the
response for a request), `check_request()` (the VSP's semantic check against the disk), and
`Outstanding` (the VSC's table of requests in flight: txids, matching, re-issue after the driver
host restarts).

Trust: each side treats the other's bytes as hostile. `decode_*` checks every field — known
operation, flags and status, reserved fields zero, body exactly as long as the operation
implies, a range that does not overflow, a length at most `MAX_TRANSFER_LIMIT` — and raises
`StorProtocolError` (a `RingProtocolError`: fail the channel) for anything malformed; never
IndexError or struct.error. Requests that are well-formed but wrong for this disk (out of range,
misaligned, too large, a write to a read-only disk) are not protocol errors: `check_request`
names the Status the VSP answers with.

Performance: a message is one struct pack/unpack plus, for data, one join when encoding; decoding
returns the data as a memoryview of the caller's buffer (no copy), so a 1 MiB READ response or
WRITE request costs one memcpy to encode and none to decode. No per-byte Python loop anywhere.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from hypervisor.runtime.errors import HvError
from worker.vmbus.ring import RingProtocolError

PROTOCOL_VERSION = 0x0001_0000            # 1.0, (major << 16) | minor as Hyper-V numbers them
MAX_TRANSFER_LIMIT = 8 << 20              # no request moves more, whatever a disk advertises
DEFAULT_MAX_TRANSFER = 1 << 20            # what storvsp advertises unless told otherwise
MAX_OUTSTANDING_LIMIT = 4096              # requests in flight on one channel, at most

_REQUEST = struct.Struct("<HHIQQQ")
_RESPONSE = struct.Struct("<HHIQII")
_VERSION = struct.Struct("<II")
_PROPERTIES = struct.Struct("<QIIIIII16s")
REQUEST_HEADER_SIZE = _REQUEST.size       # 32
RESPONSE_HEADER_SIZE = _RESPONSE.size     # 24
PROPERTIES_SIZE = _PROPERTIES.size        # 48
_U64 = 1 << 64
SECTOR_SIZES = (512, 4096)


class StorProtocolError(RingProtocolError):
    """A storvsp message breaks the protocol: the channel is failed."""


class Operation(IntEnum):
    NEGOTIATE = 1          # agree on a protocol version (first request on a channel)
    QUERY_PROPERTIES = 2   # the disk's size, sector sizes and transfer limits
    READ = 3
    WRITE = 4
    FLUSH = 5              # every completed write becomes durable


class RequestFlags(IntFlag):
    NONE = 0
    FUA = 1                # WRITE: durable before it completes
    DATA_IN_BUFFER = 2     # READ/WRITE: data in the shared data buffer at buffer_offset


class Status(IntEnum):
    SUCCESS = 0
    INVALID_REQUEST = 1    # the VSP cannot do this request (e.g. before NEGOTIATE)
    VERSION_MISMATCH = 2   # NEGOTIATE: the body names the version the host speaks
    OUT_OF_RANGE = 3       # offset + length beyond the end of the disk
    MISALIGNED = 4         # offset or length not whole logical sectors
    TOO_LARGE = 5          # length above the advertised max_transfer
    READ_ONLY = 6          # a WRITE to a read-only disk
    IO_ERROR = 7           # the backend failed (the request may be retried)
    BUSY = 8               # too many requests in flight, or the device is restarting: retry


# Flag masks as plain ints: `~` on an IntFlag complements only within its members.
_FUA, _IN_BUFFER = int(RequestFlags.FUA), int(RequestFlags.DATA_IN_BUFFER)
_ALLOWED_FLAGS = {
    Operation.NEGOTIATE: 0,
    Operation.QUERY_PROPERTIES: 0,
    Operation.READ: _IN_BUFFER,
    Operation.WRITE: _IN_BUFFER | _FUA,
    Operation.FLUSH: 0,
}
_DATA_OPS = (Operation.READ, Operation.WRITE)


class PropertyFlags(IntFlag):
    NONE = 0
    READ_ONLY = 1


@dataclass(frozen=True, slots=True)
class DiskProperties:
    """What QUERY_PROPERTIES answers: the disk as the guest sees it."""

    size: int
    logical_sector_size: int = 512
    physical_sector_size: int = 4096
    max_transfer: int = DEFAULT_MAX_TRANSFER
    max_outstanding: int = 64
    read_only: bool = False
    disk_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))

    def problem(self) -> str | None:
        """Why these properties are impossible, or None."""
        if self.logical_sector_size not in SECTOR_SIZES:
            return f"logical sector size {self.logical_sector_size} is not 512 or 4096"
        if self.physical_sector_size not in SECTOR_SIZES:
            return f"physical sector size {self.physical_sector_size} is not 512 or 4096"
        if not 0 <= self.size < _U64 or self.size % self.logical_sector_size:
            return f"disk size {self.size} is not whole logical sectors"
        if not self.logical_sector_size <= self.max_transfer <= MAX_TRANSFER_LIMIT or \
                self.max_transfer % self.logical_sector_size:
            return (f"max_transfer {self.max_transfer} is not whole sectors up to "
                    f"{MAX_TRANSFER_LIMIT}")
        if not 1 <= self.max_outstanding <= MAX_OUTSTANDING_LIMIT:
            return f"max_outstanding {self.max_outstanding} is not 1..{MAX_OUTSTANDING_LIMIT}"
        return None

    def pack(self) -> bytes:
        why = self.problem()
        if why:
            raise ValueError(why)
        return _PROPERTIES.pack(self.size, self.logical_sector_size, self.physical_sector_size,
                                self.max_transfer, self.max_outstanding,
                                int(PropertyFlags.READ_ONLY if self.read_only else 0), 0,
                                self.disk_id.bytes_le)

    @classmethod
    def unpack(cls, body) -> "DiskProperties":
        if len(body) != PROPERTIES_SIZE:
            raise StorProtocolError(f"disk properties are {len(body)} bytes, not "
                                    f"{PROPERTIES_SIZE}")
        size, logical, physical, max_transfer, outstanding, flags, reserved, disk_id = \
            _PROPERTIES.unpack(body)
        if flags & ~int(PropertyFlags.READ_ONLY) or reserved:
            raise StorProtocolError(f"disk properties carry unknown flags {flags:#x} or "
                                    "reserved bits")
        props = cls(size, logical, physical, max_transfer, outstanding,
                    bool(flags & PropertyFlags.READ_ONLY), uuid.UUID(bytes_le=bytes(disk_id)))
        why = props.problem()
        if why:
            raise StorProtocolError(f"disk properties: {why}")
        return props


@dataclass(frozen=True, slots=True)
class Request:
    """One request. `data` is the inline WRITE payload (a memoryview of the decoded buffer
    after `decode_request`); `version` is NEGOTIATE's."""

    operation: Operation
    txid: int
    offset: int = 0
    length: int = 0
    flags: RequestFlags = RequestFlags.NONE
    buffer_offset: int = 0
    data: bytes | memoryview = b""
    version: int = 0

    @property
    def inline(self) -> bool:
        return not int(self.flags) & _IN_BUFFER


@dataclass(frozen=True, slots=True)
class Response:
    """One response. `data` is the inline READ payload; `version` NEGOTIATE's, `properties`
    QUERY_PROPERTIES's."""

    operation: Operation
    txid: int
    status: Status = Status.SUCCESS
    length: int = 0
    flags: RequestFlags = RequestFlags.NONE
    data: bytes | memoryview = b""
    version: int = 0
    properties: DiskProperties | None = None


# --- requests ------------------------------------------------------------------------------------

def negotiate(txid: int, version: int = PROTOCOL_VERSION) -> Request:
    return Request(Operation.NEGOTIATE, txid, version=version)


def query_properties(txid: int) -> Request:
    return Request(Operation.QUERY_PROPERTIES, txid)


def read(txid: int, offset: int, length: int, buffer_offset: int | None = None) -> Request:
    """READ `length` bytes from `offset`: inline in the response, or into the shared buffer."""
    if buffer_offset is None:
        return Request(Operation.READ, txid, offset, length)
    return Request(Operation.READ, txid, offset, length, RequestFlags.DATA_IN_BUFFER,
                   buffer_offset)


def write(txid: int, offset: int, data, fua: bool = False) -> Request:
    """WRITE `data` (inline) at `offset`."""
    view = memoryview(data).cast("B")
    return Request(Operation.WRITE, txid, offset, len(view),
                   RequestFlags.FUA if fua else RequestFlags.NONE, data=view)


def write_from_buffer(txid: int, offset: int, length: int, buffer_offset: int,
                      fua: bool = False) -> Request:
    """WRITE `length` bytes that the guest placed in the shared buffer at `buffer_offset`."""
    flags = RequestFlags.DATA_IN_BUFFER | (RequestFlags.FUA if fua else RequestFlags.NONE)
    return Request(Operation.WRITE, txid, offset, length, flags, buffer_offset)


def flush(txid: int) -> Request:
    return Request(Operation.FLUSH, txid)


def _request_problem(op, flags, length, txid, offset, buffer_offset) -> str | None:
    """What is structurally wrong with a request's header fields, or None."""
    if not 1 <= txid < _U64:
        return f"transaction id {txid} is not 1..2^64-1"
    if int(flags) & ~_ALLOWED_FLAGS[op]:
        return f"{op.name} does not take flags {int(flags):#x}"
    if op in _DATA_OPS:
        if not 0 <= length <= MAX_TRANSFER_LIMIT:
            return f"{op.name} of {length} bytes exceeds the protocol's {MAX_TRANSFER_LIMIT}"
        if not 0 <= offset or offset + length > _U64:
            return f"{op.name} range {offset}+{length} overflows"
        if flags & _IN_BUFFER:
            if not 0 <= buffer_offset or buffer_offset + length > _U64:
                return f"buffer range {buffer_offset}+{length} overflows"
        elif buffer_offset:
            return "buffer_offset is set without DATA_IN_BUFFER"
    elif length or offset or buffer_offset:
        return f"{op.name} carries a length, offset or buffer_offset"
    return None


def request_header(req: Request) -> bytes:
    """The 32-byte header of `req` (a transport that gathers may send it and `req.data`)."""
    op = Operation(req.operation)
    flags = int(req.flags)
    why = _request_problem(op, flags, req.length, req.txid, req.offset, req.buffer_offset)
    if why:
        raise ValueError(why)
    return _REQUEST.pack(op, flags, req.length, req.txid, req.offset, req.buffer_offset)


def encode_request(req: Request) -> bytes:
    """The bytes of `req`; ValueError for a request the protocol cannot express."""
    header = request_header(req)
    op = Operation(req.operation)
    if op == Operation.NEGOTIATE:
        if not 0 < req.version < 1 << 32:
            raise ValueError(f"version {req.version} is not a u32 above 0")
        return header + _VERSION.pack(req.version, 0)
    if op == Operation.WRITE and req.inline:
        data = memoryview(req.data).cast("B")
        if len(data) != req.length:
            raise ValueError(f"WRITE length {req.length} but {len(data)} bytes of data")
        return b"".join((header, data))
    if len(req.data):
        raise ValueError(f"{op.name} carries no inline data")
    return header


def decode_request(buf) -> Request:
    """The request in `buf`; StorProtocolError for anything malformed. WRITE data is a
    memoryview of `buf` (keep `buf` alive and unchanged while using it)."""
    view = _bytes_view(buf)
    if len(view) < REQUEST_HEADER_SIZE:
        raise StorProtocolError(f"request of {len(view)} bytes is shorter than its "
                                f"{REQUEST_HEADER_SIZE}-byte header")
    op_n, flags_n, length, txid, offset, buffer_offset = _REQUEST.unpack_from(view)
    op = _enum(Operation, op_n, "operation")
    why = _request_problem(op, flags_n, length, txid, offset, buffer_offset)
    if why:
        raise StorProtocolError(f"request txid {txid}: {why}")
    flags = RequestFlags(flags_n)
    body = view[REQUEST_HEADER_SIZE:]
    if op == Operation.NEGOTIATE:
        version = _version_body(body, f"NEGOTIATE txid {txid}")
        return Request(op, txid, version=version)
    expected = length if op == Operation.WRITE and not flags_n & _IN_BUFFER else 0
    if len(body) != expected:
        raise StorProtocolError(f"{op.name} request txid {txid} has a {len(body)}-byte body, "
                                f"expected {expected}")
    return Request(op, txid, offset, length, flags, buffer_offset, body if expected else b"")


# --- responses -----------------------------------------------------------------------------------

def complete(req: Request, status: Status = Status.SUCCESS, *, data=b"", length: int | None = None,
             version: int = 0, properties: DiskProperties | None = None) -> Response:
    """The response to `req`. READ success: `data` (inline) or `length` (placed in the buffer);
    WRITE success: `length` defaults to the request's; NEGOTIATE: `version`; QUERY_PROPERTIES
    success: `properties`. A failure carries nothing."""
    status = Status(status)
    flags = RequestFlags(int(req.flags) & _IN_BUFFER)
    if status != Status.SUCCESS:
        if req.operation == Operation.NEGOTIATE and status == Status.VERSION_MISMATCH:
            return Response(req.operation, req.txid, status, version=version)
        return Response(req.operation, req.txid, status, flags=flags)
    if req.operation == Operation.READ and req.inline:
        view = memoryview(data).cast("B")
        return Response(req.operation, req.txid, status, len(view), flags, view)
    if req.operation in _DATA_OPS:
        return Response(req.operation, req.txid, status,
                        req.length if length is None else length, flags)
    if req.operation == Operation.NEGOTIATE:
        return Response(req.operation, req.txid, status, version=version)
    if req.operation == Operation.QUERY_PROPERTIES:
        return Response(req.operation, req.txid, status, properties=properties)
    return Response(req.operation, req.txid, status)


def encode_response(resp: Response) -> bytes:
    """The bytes of `resp`; ValueError for a response the protocol cannot express."""
    op, status, flags = Operation(resp.operation), Status(resp.status), int(resp.flags)
    if not 1 <= resp.txid < _U64:
        raise ValueError(f"transaction id {resp.txid} is not 1..2^64-1")
    if flags & ~_IN_BUFFER or (flags and op not in _DATA_OPS):
        raise ValueError(f"{op.name} response does not take flags {int(flags):#x}")
    data = memoryview(resp.data).cast("B")
    inline_read = op == Operation.READ and status == Status.SUCCESS and not flags
    if inline_read and len(data) != resp.length:
        raise ValueError(f"READ response length {resp.length} but {len(data)} bytes of data")
    if not inline_read and len(data):
        raise ValueError(f"{op.name} response carries no inline data")
    if not 0 <= resp.length <= MAX_TRANSFER_LIMIT or (resp.length and
                                                      (op not in _DATA_OPS or status)):
        raise ValueError(f"{op.name} response length {resp.length} is not allowed")
    header = _RESPONSE.pack(op, flags, status, resp.txid, resp.length, 0)
    if op == Operation.NEGOTIATE and status in (Status.SUCCESS, Status.VERSION_MISMATCH):
        if not 0 < resp.version < 1 << 32:
            raise ValueError(f"version {resp.version} is not a u32 above 0")
        return header + _VERSION.pack(resp.version, 0)
    if op == Operation.QUERY_PROPERTIES and status == Status.SUCCESS:
        if resp.properties is None:
            raise ValueError("QUERY_PROPERTIES success needs properties")
        return header + resp.properties.pack()
    if inline_read:
        return b"".join((header, data))
    return header


def decode_response(buf) -> Response:
    """The response in `buf`; StorProtocolError for anything malformed. READ data is a
    memoryview of `buf`."""
    view = _bytes_view(buf)
    if len(view) < RESPONSE_HEADER_SIZE:
        raise StorProtocolError(f"response of {len(view)} bytes is shorter than its "
                                f"{RESPONSE_HEADER_SIZE}-byte header")
    op_n, flags_n, status_n, txid, length, reserved = _RESPONSE.unpack_from(view)
    op = _enum(Operation, op_n, "operation")
    status = _enum(Status, status_n, f"{op.name} status")
    where = f"{op.name} response txid {txid}"
    if txid == 0:
        raise StorProtocolError(f"{where}: transaction id 0")
    if reserved:
        raise StorProtocolError(f"{where}: reserved field is {reserved:#x}")
    if flags_n & ~_IN_BUFFER or (flags_n and op not in _DATA_OPS):
        raise StorProtocolError(f"{where}: unknown flags {flags_n:#x}")
    flags = RequestFlags(flags_n)
    if length > MAX_TRANSFER_LIMIT or (length and (op not in _DATA_OPS or status)):
        raise StorProtocolError(f"{where}: length {length} is not allowed")
    body = view[RESPONSE_HEADER_SIZE:]
    if op == Operation.NEGOTIATE and status in (Status.SUCCESS, Status.VERSION_MISMATCH):
        return Response(op, txid, status, version=_version_body(body, where))
    if op == Operation.QUERY_PROPERTIES and status == Status.SUCCESS:
        return Response(op, txid, status, properties=DiskProperties.unpack(body))
    inline_read = op == Operation.READ and status == Status.SUCCESS and not flags
    expected = length if inline_read else 0
    if len(body) != expected:
        raise StorProtocolError(f"{where} has a {len(body)}-byte body, expected {expected}")
    return Response(op, txid, status, length, flags, body if inline_read else b"")


# --- semantics -----------------------------------------------------------------------------------

def check_request(req: Request, props: DiskProperties) -> Status:
    """SUCCESS when the VSP may carry out `req` on this disk, else the Status to answer with."""
    if req.operation not in _DATA_OPS:
        return Status.SUCCESS
    if req.length > props.max_transfer:
        return Status.TOO_LARGE
    if req.offset % props.logical_sector_size or req.length % props.logical_sector_size:
        return Status.MISALIGNED
    if req.offset + req.length > props.size:
        return Status.OUT_OF_RANGE
    if req.operation == Operation.WRITE and props.read_only:
        return Status.READ_ONLY
    return Status.SUCCESS


class Outstanding:
    """The VSC's requests in flight on one channel, by txid.

    `issue` gives a request a fresh txid and records it; `complete` matches a response to its
    request and checks it answers that request (same operation, same buffer mode, the length
    asked for); `pending` lists what is still in flight, oldest first — after the driver host
    restarts, the VSC sends those again on the re-opened channel (a re-issued READ or WRITE of
    the same range and data is idempotent, as long as the VSC never has two overlapping writes
    in flight at once).
    """

    def __init__(self, limit: int = 64):
        if not 1 <= limit <= MAX_OUTSTANDING_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_OUTSTANDING_LIMIT}")
        self.limit = limit
        self._in_flight: dict[int, Request] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._in_flight)

    def issue(self, make, *args, **kwargs) -> Request:
        """`make(txid, *args, **kwargs)` (e.g. `read`, `write`, `flush`) with a fresh txid,
        recorded as in flight; Busy when `limit` requests already are."""
        if len(self._in_flight) >= self.limit:
            raise HvError("Busy", f"{len(self._in_flight)} storage requests already in flight")
        while self._next in self._in_flight:
            self._next = self._next % (_U64 - 1) + 1
        txid = self._next
        self._next = self._next % (_U64 - 1) + 1
        req = make(txid, *args, **kwargs)
        if req.txid != txid:
            raise ValueError("the request factory must use the txid it is given")
        self._in_flight[txid] = req
        return req

    def complete(self, resp: Response) -> Request:
        """The request `resp` answers (no longer in flight); StorProtocolError if it answers
        none, or does not fit it."""
        req = self._in_flight.get(resp.txid)
        if req is None:
            raise StorProtocolError(f"{resp.operation.name} response for unknown txid "
                                    f"{resp.txid}")
        where = f"{resp.operation.name} response txid {resp.txid}"
        if resp.operation != req.operation:
            raise StorProtocolError(f"{where} answers a {req.operation.name} request")
        if resp.status == Status.SUCCESS and req.operation in _DATA_OPS:
            if (int(resp.flags) ^ int(req.flags)) & _IN_BUFFER:
                raise StorProtocolError(f"{where}: data mode differs from the request's")
            if resp.length != req.length:
                raise StorProtocolError(f"{where} moved {resp.length} bytes, "
                                        f"{req.length} were asked for")
        del self._in_flight[resp.txid]
        return req

    def pending(self) -> list[Request]:
        """Requests in flight, oldest first (to re-issue on a re-opened channel)."""
        return list(self._in_flight.values())

    def forget(self, txid: int) -> Request | None:
        """Drop a request that will not be re-issued (a NEGOTIATE or QUERY_PROPERTIES of a
        channel that is gone, or every request of a device that failed)."""
        return self._in_flight.pop(txid, None)


# --- helpers -------------------------------------------------------------------------------------

def _bytes_view(buf) -> memoryview:
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except TypeError:
        raise StorProtocolError(f"a message must be contiguous bytes, not "
                                f"{type(buf).__name__}") from None


def _enum(kind, value: int, what: str):
    try:
        return kind(value)
    except ValueError:
        raise StorProtocolError(f"unknown {what} {value}") from None


def _version_body(body: memoryview, where: str) -> int:
    if len(body) != _VERSION.size:
        raise StorProtocolError(f"{where}: version body is {len(body)} bytes, not "
                                f"{_VERSION.size}")
    version, reserved = _VERSION.unpack(body)
    if version == 0 or reserved:
        raise StorProtocolError(f"{where}: version {version:#x} / reserved {reserved:#x}")
    return version
