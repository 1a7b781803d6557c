"""Carrying a VMBus channel between processes: a shared-memory region, two doorbells, and
file-descriptor passing.

What: `ChannelResources` is what the worker creates when a channel opens — a memfd holding the
channel's two rings (formatted here, `ring.attach(init=True)`) and one eventfd per direction
(the guest rings the host's doorbell, the host rings the guest's). The worker hands these three
descriptors over a Unix socket with SCM_RIGHTS (hypervisor/runtime/packet_socket.py): to the guest over its link,
to a driver host over the driver's socket. `ChannelEndpoint` is one side's live view: it maps
the region, writes its outgoing ring, reads its incoming one, waits on its own doorbell and
rings the peer's. Ring data never passes through any socket — only the descriptors do once.

Signalling follows the ring (worker/vmbus/ring.py): a sender rings the peer's doorbell only on
an empty → non-empty transition; a reader that frees space a blocked writer asked for rings it
back. A packet that does not fit waits in a bounded backlog and goes out when the reader
signals. Because the empty check and the index publish are not one atomic step, every owner
also drains its endpoints on its loop's periodic tick, which bounds any lost wake-up.

Trust: the peer may be hostile. `receive()` raises `RingProtocolError` for anything malformed;
the caller fails that channel only. A region whose size does not match its offer is refused.

Performance: a round trip costs two eventfd writes, two poll wake-ups and four memcpys;
packets are read in batches and one doorbell read clears any number of signals. A caller on a
latency path (netvsp) reads with `receive(rearm=False)`, handles the packets, then `rearm()`s
(clear, look again): the doorbell's system call comes after the work, not before it.
`send_gather` copies a payload given as pieces straight into the ring (no join).
"""
from __future__ import annotations

import mmap
import os

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.packet_socket import close_fds
from worker.vmbus import messages
from worker.vmbus.ring import (Packet, PacketFlags, PacketType, RingEndpoint, RingFull,
                               RingProtocolError, attach, region_size)

BACKLOG_LIMIT = 4096
_eventfd_write = os.eventfd_write
MAX_BUFFER_SIZE = 64 << 20


# --- doorbells -----------------------------------------------------------------------------

def new_doorbell() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def ring_doorbell(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass  # saturated (BlockingIOError: a wake-up is pending anyway) or the peer closed
              # its side (noticed elsewhere)


def clear_doorbell(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


# --- the region --------------------------------------------------------------------------

def channel_region_size(ring_size: int, buffer_size: int = 0) -> int:
    """The two rings, then an optional data buffer both sides share (a GPADL's role: bulk data
    a packet refers to by offset instead of carrying it)."""
    return region_size(ring_size) + buffer_size


def check_buffer_size(buffer_size) -> int:
    if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or \
            not 0 <= buffer_size <= MAX_BUFFER_SIZE or buffer_size % mmap.PAGESIZE:
        raise HvError("BadRequest", f"channel buffer size {buffer_size!r} must be a multiple of "
                                    f"{mmap.PAGESIZE} up to {MAX_BUFFER_SIZE}")
    return buffer_size


class ChannelResources:
    """The descriptors of one open channel, created and formatted by the worker.

    `fds()` is the order every receiver expects: [region, host doorbell, guest doorbell].
    """

    def __init__(self, ring_size: int, name: str, buffer_size: int = 0):
        size = channel_region_size(ring_size, check_buffer_size(buffer_size))
        self.ring_size, self.buffer_size = ring_size, buffer_size
        self.memfd = os.memfd_create(name[:200], os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.memfd, size)
            with mmap.mmap(self.memfd, size, mmap.MAP_SHARED) as mm:
                attach(mm, ring_size, "host", init=True).release()
            self.host_bell = new_doorbell()
            self.guest_bell = new_doorbell()
        except BaseException:
            os.close(self.memfd)
            raise

    def fds(self) -> list[int]:
        return [self.memfd, self.host_bell, self.guest_bell]

    def close(self) -> None:
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass
        self.memfd = self.host_bell = self.guest_bell = -1


class ChannelEndpoint:
    """One side ("guest" or "host") of an open channel, attached to the region in `fds`.

    Takes ownership of the three descriptors (it closes them on `close()`).
    """

    def __init__(self, fds: list[int], ring_size: int, side: str, buffer_size: int = 0):
        if len(fds) != 3:
            close_fds(fds)
            raise HvError("BadRequest", f"a channel needs 3 descriptors, got {len(fds)}")
        memfd, host_bell, guest_bell = fds
        self.side = side
        try:
            size = channel_region_size(ring_size, check_buffer_size(buffer_size))
            actual = os.fstat(memfd).st_size
            if actual != size:
                raise RingProtocolError(f"channel region is {actual} bytes, offer says {size}")
            self.mm = mmap.mmap(memfd, size, mmap.MAP_SHARED)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.close(memfd)  # the mapping keeps the memory; no descriptor needed any more
        self.ring: RingEndpoint = attach(self.mm, ring_size, side, init=False)
        self._out, self._inp = self.ring.out, self.ring.inp   # one attribute hop on the data path
        # the shared data buffer (None without one); the peer may change it at any moment
        self.buffer: memoryview | None = memoryview(self.mm)[region_size(ring_size):] if buffer_size else None
        self.own_bell, self.peer_bell = (host_bell, guest_bell) if side == "host" else (guest_bell, host_bell)
        self.backlog: list[tuple[int, bytes, int, int]] = []
        self.closed = False
        self.sent = self.received = 0

    def fileno(self) -> int:
        return self.own_bell

    @property
    def max_payload(self) -> int:
        return self.ring.out.ring.max_payload

    # --- sending -------------------------------------------------------------------------
    def send_packet(self, type: int, payload=b"", txid: int = 0, flags: int = 0) -> None:
        """Queue-or-write one packet; rings the peer when the ring went non-empty."""
        if self.closed:
            return
        if self.backlog:
            self._queue(type, payload, txid, flags)
            return
        try:
            if self.ring.send(type, payload, txid, flags):
                ring_doorbell(self.peer_bell)
            self.sent += 1
        except RingFull:
            self._queue(type, payload, txid, flags)

    def send_gather(self, type: int, pieces, n: int, txid: int = 0, flags: int = 0) -> None:
        """`send_packet` of a payload given as pieces (netvsp_protocol.gather_batches): copied
        into the ring piece by piece; joined only if it has to wait in the backlog."""
        if self.closed:
            return
        if not self.backlog:
            try:
                if self._out.write_gather(type, pieces, n, txid, flags):
                    try:                       # ring_doorbell(), inline: a frame's path
                        _eventfd_write(self.peer_bell, 1)
                    except OSError:
                        pass
                self.sent += 1
                return
            except RingFull:
                pass
        self._queue(type, b"".join(pieces), txid, flags)

    def _queue(self, type: int, payload, txid: int, flags: int) -> None:
        if len(self.backlog) >= BACKLOG_LIMIT:
            raise HvError("Busy", f"channel backlog of {BACKLOG_LIMIT} packets is full")
        self.backlog.append((type, bytes(payload), txid, flags))

    def flush(self) -> None:
        """Write what waited for room, in order, until the ring is full again."""
        signal = False
        while self.backlog and not self.closed:
            type_, payload, txid, flags = self.backlog[0]
            try:
                signal |= self.ring.send(type_, payload, txid, flags)
            except RingFull:
                break
            self.backlog.pop(0)
            self.sent += 1
        if signal:
            ring_doorbell(self.peer_bell)

    def send_oneway(self, kind: str, body: dict) -> None:
        self.send_packet(PacketType.DATA, messages.encode(kind, body))

    def send_request(self, txid: int, kind: str, body: dict) -> None:
        self.send_packet(PacketType.DATA, messages.encode(kind, body), txid,
                         PacketFlags.COMPLETION_REQUESTED)

    def send_completion(self, txid: int, kind: str, body: dict) -> None:
        self.send_packet(PacketType.COMPLETION, messages.encode(kind, body), txid)

    # --- receiving -----------------------------------------------------------------------
    def receive(self, rearm: bool = True) -> list[Packet]:
        """What the peer has written, at most one ring's worth (RingProtocolError if it is
        malformed). If more arrived meanwhile, the endpoint rings its own doorbell, so its
        owner's loop comes back to it after serving its other descriptors: a peer that writes
        without pause cannot starve the other channels, nor grow this list without bound.

        `rearm=False`: the caller handles the packets first and then calls `rearm()` (the
        doorbell's system call then comes after the work, off a frame's critical path)."""
        if self.closed:
            return []
        if rearm:
            clear_doorbell(self.own_bell)
        inp = self._inp
        out = inp.read_all()
        if out:
            if rearm and not inp.is_empty():
                ring_doorbell(self.own_bell)
            if inp._signal_writer:             # inp.take_writer_signal(), inline
                inp._signal_writer = False
                ring_doorbell(self.peer_bell)
            self.received += len(out)
        if self.backlog:
            self.flush()
        return out

    def rearm(self) -> None:
        """After `receive(rearm=False)` and handling its packets: clear the doorbell, then look
        again, so a packet that arrived meanwhile (its signal just cleared) is not forgotten."""
        if self.closed:
            return
        clear_doorbell(self.own_bell)
        if not self._inp.is_empty():
            ring_doorbell(self.own_bell)

    def receive_messages(self) -> list[messages.Message]:
        return [messages.decode(p) for p in self.receive()]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ring.release()
        if self.buffer is not None:
            self.buffer.release()
        self.mm.close()
        for fd in (self.own_bell, self.peer_bell):
            try:
                os.close(fd)
            except OSError:
                pass
