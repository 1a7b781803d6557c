"""The netvsp frame port: one object on a netvsp channel's frame path, for the switch host
(parent/drivers/netvsp.py, through parent/drvhost.py) and the guest (worker/guest/net_adapter.py).

What: a `FramePort` wraps one side's `ChannelEndpoint` (worker/vmbus/transport.py) and holds
both rings' views and both doorbells, so a hop after a wake-up touches one object and runs
few Python frames (cold, each costs microseconds: worker/vmbus/ring.py):
- `take_frames()`: the packets present now (up to TAKE_MAX frames), read and checked in one
  loop; the frames of the DATA packets come back as bytes-like objects (a one-frame packet's
  frame is copied out of the ring once, with no batch decode; a batch is copied once and its
  frames are views of the copy); any other packet (the query, its answer) goes to `control`;
- `put_frame(frame)`: one frame as a one-frame DATA packet, written in place, and the peer's
  doorbell rung on empty → non-empty;
- `done()`: after the frames were handled, clear the own doorbell and look again.

It is a fast path of `RingReader`/`RingWriter`, not a second ring: the private indices stay in
the endpoint's reader and writer (the port reads and advances them), so the port and the
endpoint's own methods (control packets, the backlog) can be used on the same channel in any
order. The layout constants and the checks of what the peer wrote (`check_peer_index`,
`check_packet`, netvsp's `decode_batch`) are the ring's and the protocol's own. Whatever the
fast path does not cover — a packet that wraps, a full ring, a backlog waiting — goes through
the general code (`ChannelEndpoint.send_gather`, `Ring.copy_out`). The fence between
publishing an index and reading the peer's is the ring's (`full_fence`, inline).
"""
from __future__ import annotations

import os

from worker.vmbus import netvsp_protocol as proto
from worker.vmbus.ring import (ALIGN, PACKET_HEADER_SIZE, Packet, PacketType, _PACKET_HEADER,
                               _ZEROS, _fence_acquire, _fence_release, _new_tuple,
                               check_packet, check_peer_index)
from worker.vmbus.transport import ChannelEndpoint

_DATA = int(PacketType.DATA)
# Frames one `take_frames` hands over at most (checked per packet): under a flood the switch
# forwards, and wakes the destination, every few dozen frames instead of after a whole ring —
# the hops then overlap on the two CPUs. `done()` rings again for what is left.
TAKE_MAX = 64
_LEN_SIZE = proto._LEN.size                    # the u32 length before each frame of a batch
_FIRST = PACKET_HEADER_SIZE + _LEN_SIZE        # a one-frame packet's frame starts here
_MAX_FRAME = proto.MAX_FRAME_BYTES
_unpack_header = _PACKET_HEADER.unpack_from
_pack_header = _PACKET_HEADER.pack_into
_unpack_len = proto._LEN.unpack_from
_pack_len = proto._LEN.pack_into
_pack_length = proto.pack_length
_eventfd_write, _eventfd_read = os.eventfd_write, os.eventfd_read


class FramePort:
    """The frame path of one side of an open netvsp channel (see the module docstring)."""

    __slots__ = ("ep", "rd", "wr", "backlog", "in_words", "in_data", "in_size", "out_words",
                 "out_data", "out_size", "out_max", "own_bell", "peer_bell", "control")

    def __init__(self, ep: ChannelEndpoint):
        self.ep = ep
        self.rd, self.wr = rd, wr = ep.ring.inp, ep.ring.out
        self.backlog = ep.backlog                  # the endpoint's list (only changed in place)
        self.in_words, self.in_data, self.in_size = rd._words, rd._data, rd._size
        self.out_words, self.out_data, self.out_size = wr._words, wr._data, wr._size
        self.out_max = wr._max_payload
        self.own_bell, self.peer_bell = ep.own_bell, ep.peer_bell
        self.control: list[Packet] = []            # packets other than frames, for the caller

    def take_frames(self) -> list:
        """The frames of the DATA packets present now, in order, up to about TAKE_MAX (whole
        packets; `done()` rings again for the rest); other packets are appended to `control`. RingProtocolError if anything the peer wrote is malformed (nothing is
        consumed then: the channel is to be failed)."""
        rd, words = self.rd, self.in_words
        pos = rd._read
        write = words[0]                                   # _WRITE_INDEX
        if write == pos:
            if self.backlog:           # woken because the peer freed room: send what waited
                self.ep.flush()
            return []
        size = self.in_size
        check_peer_index(write, size, "write")
        data = self.in_data
        left = (write - pos) % size
        frames: list = []
        most = TAKE_MAX
        while left and len(frames) < most:
            if left < PACKET_HEADER_SIZE:
                type_ = flags = n = txid = 0               # check_packet raises
            elif pos + PACKET_HEADER_SIZE <= size:
                type_, flags, n, txid = _unpack_header(data, pos)
            else:                                          # a header that wraps
                type_, flags, n, txid = _PACKET_HEADER.unpack(rd.ring.copy_out(pos, PACKET_HEADER_SIZE))
            total = check_packet(type_, flags, n, left, pos)
            start = pos + PACKET_HEADER_SIZE
            if start >= size:
                start -= size
            end = start + n
            if type_ == _DATA and not flags:
                if end <= size and n > _LEN_SIZE and \
                        _unpack_len(data, start)[0] == n - _LEN_SIZE <= _MAX_FRAME:
                    frames.append(bytes(data[start + _LEN_SIZE:end]))    # one frame
                else:
                    payload = bytes(data[start:end]) if end <= size else rd.ring.copy_out(start, n)
                    frames += proto.decode_batch(payload)   # views of our own copy
            else:
                payload = bytes(data[start:end]) if end <= size else rd.ring.copy_out(start, n)
                self.control.append(_new_tuple(Packet, (type_, payload, txid, flags)))
            pos += total
            if pos >= size:
                pos -= size
            left -= total
        rd._read = pos
        words[1] = pos                                     # publish after the copies
        _fence_acquire()                                   # full_fence(): then look at the
        _fence_release()                                   # writer's request
        if words[3]:                                       # _PENDING_SEND_SIZE
            rd.note_pending(write)
            if rd._signal_writer:
                rd._signal_writer = False
                try:
                    _eventfd_write(self.peer_bell, 1)
                except OSError:
                    pass
        if self.backlog:
            self.ep.flush()
        return frames

    def put_frame(self, frame) -> None:
        """Send one frame (bytes-like) as a one-frame DATA packet. In place when it fits
        without wrapping and nothing waits before it; otherwise the endpoint's general path
        (which wraps, or queues in the backlog when the ring is full)."""
        k = len(frame)
        n = k + _LEN_SIZE
        wr, words, size = self.wr, self.out_words, self.out_size
        old = wr._write
        total = PACKET_HEADER_SIZE + ((n + ALIGN - 1) & ~(ALIGN - 1))
        new = old + total
        if self.backlog or n > self.out_max or new >= size or \
                total > size - (old - check_peer_index(words[1], size, "read")) % size - ALIGN:
            self.ep.send_gather(_DATA, (_pack_length(k), frame), n)
            return
        data = self.out_data
        _pack_header(data, old, _DATA, 0, n, 0)
        _pack_len(data, old + PACKET_HEADER_SIZE, k)
        end = old + _FIRST + k
        data[old + _FIRST:end] = frame
        if end != new:
            data[end:new] = _ZEROS[:new - end]
        wr._write = new
        words[0] = new                                     # publish after the packet is in place
        if wr._pending:
            words[3] = 0
            wr._pending = False
        _fence_acquire()                                   # full_fence(): publish, then look
        _fence_release()                                   # at the reader
        if not words[2] and words[1] == old:               # unmasked, and it had read up to us
            try:
                _eventfd_write(self.peer_bell, 1)
            except OSError:
                pass

    def done(self) -> None:
        """After handling what `take_frames` gave: clear the own doorbell, then look again, so
        a packet that arrived meanwhile (its signal just cleared) is not forgotten."""
        try:
            _eventfd_read(self.own_bell)
        except OSError:
            pass
        if self.in_words[0] != self.rd._read:
            try:
                _eventfd_write(self.own_bell, 1)
            except OSError:
                pass
