"""ReadPoll: the raw epoll the frame-path loops (guest runtime, driver host) wait on."""
from __future__ import annotations

import os
import socket

import pytest

from hypervisor.runtime.read_poll import ReadPoll


def test_readable_descriptors_come_back_with_their_handler():
    poll = ReadPoll()
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        poll.register(r, "pipe")
        poll.register(a, "sock")          # an object with fileno()
        assert poll.epoll.poll(0) == []
        os.write(w, b"x")
        b.send(b"y")
        ready = {poll.handlers[fd] for fd, _ in poll.epoll.poll(1.0)}
        assert ready == {"pipe", "sock"}
        with pytest.raises(KeyError):
            poll.register(r, "again")
        poll.unregister(a)
        assert [poll.handlers[fd] for fd, _ in poll.epoll.poll(0)] == ["pipe"]
        poll.unregister(a)                # not watched: nothing happens
    finally:
        poll.close()
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_unregister_after_close_is_harmless():
    poll = ReadPoll()
    r, w = os.pipe()
    poll.register(r, "pipe")
    os.close(r)
    poll.unregister(r)
    assert poll.handlers == {}
    os.close(w)
    poll.close()
