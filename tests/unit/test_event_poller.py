"""The daemons' epoll poller (hypervisor/runtime/event_poller.py): zmq.Poller's answers for
descriptors and ZeroMQ sockets, including a lazily watched socket whose ZMQ_FD signal a send
consumed, or whose reader left a message behind."""
from __future__ import annotations

import os
import time

import pytest
import zmq

from hypervisor.runtime.event_poller import EventPoller


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(ctx, name):
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"inproc://{name}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"inproc://{name}")
    return router, dealer


def arrived(sock, timeout=2.0):
    """Wait (bounded) until `sock` holds a message, reading its state directly."""
    deadline = time.monotonic() + timeout
    while not sock.poll(10) and time.monotonic() < deadline:
        pass
    assert sock.getsockopt(zmq.EVENTS) & zmq.POLLIN


def wait_for(poller, what, timeout=2.0):
    """Poll (bounded) until `what` is reported; what the last poll returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = dict(poller.poll(50))
        if what in got:
            return got
    return {}


def test_descriptors_are_reported_while_readable_and_not_after_unregister():
    poller = EventPoller()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        poller.register(fd, zmq.POLLIN)
        assert poller.poll(0) == []
        os.eventfd_write(fd, 1)
        assert poller.poll(0) == [(fd, zmq.POLLIN)]
        assert poller.poll(0) == [(fd, zmq.POLLIN)]          # level-triggered, as zmq_poll
        os.eventfd_read(fd)
        assert poller.poll(0) == []
        os.eventfd_write(fd, 1)
        poller.unregister(fd)
        assert poller.poll(0) == []
        with pytest.raises(KeyError):
            poller.unregister(fd)
    finally:
        os.close(fd)
        poller.close()


def test_a_high_descriptor_number_is_unregistered_too():
    """Descriptors above 256 are new int objects at each use (vmms holds hundreds)."""
    poller = EventPoller()
    low = os.eventfd(0, os.EFD_NONBLOCK)
    fd = os.dup2(low, 900 + os.getpid() % 50)
    try:
        poller.register(int(str(fd)))
        os.eventfd_write(fd, 1)
        assert poller.poll(0) == [(fd, zmq.POLLIN)]
        poller.unregister(int(str(fd)))
        assert poller.poll(0) == [] and len(poller) == 0
        with pytest.raises(ValueError):
            poller.register(fd, zmq.POLLOUT)
    finally:
        os.close(fd)
        os.close(low)
        poller.close()


def test_a_poll_waits_up_to_its_timeout():
    poller = EventPoller()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        poller.register(fd)
        started = time.monotonic()
        assert poller.poll(60) == []
        assert 0.05 <= time.monotonic() - started < 2.0
    finally:
        os.close(fd)
        poller.close()


def test_a_socket_is_reported_while_it_has_messages(ctx):
    router, dealer = pair(ctx, "always")
    poller = EventPoller()
    poller.register(router, zmq.POLLIN)
    assert poller.poll(0) == []
    dealer.send(b"hello")
    assert zmq.POLLIN == wait_for(poller, router).get(router)
    assert router.recv_multipart()[1] == b"hello"
    assert poller.poll(0) == []


def test_a_lazy_socket_with_a_message_a_send_left_unsignalled_is_found_through_touch(ctx):
    router, dealer = pair(ctx, "lazy")
    poller = EventPoller()
    poller.register(dealer, zmq.POLLIN, lazy=True)
    dealer.send(b"request")
    poller.touch(dealer)
    peer, body = router.recv_multipart()
    assert poller.poll(0) == []          # nothing for it yet: no longer looked at
    router.send_multipart([peer, b"reply"])
    # the reply's arrival is signalled on the DEALER's ZMQ_FD; any operation on the DEALER
    # before the loop polls (here a poll of its own, then a send) consumes that signal ...
    arrived(dealer)
    dealer.send(b"another")
    assert poller.poll(0) == []          # ... so the poller cannot know of the reply ...
    poller.touch(dealer)                 # ... unless the sender says it used the socket
    assert dict(poller.poll(0)).get(dealer) == zmq.POLLIN
    # a reader that leaves a message behind finds it at the next poll too
    assert dict(poller.poll(0)).get(dealer) == zmq.POLLIN
    assert dealer.recv() == b"reply"
    assert poller.poll(0) == []


def test_lazy_sockets_are_reported_when_their_messages_arrive(ctx):
    poller = EventPoller()
    pairs = [pair(ctx, f"many{i}") for i in range(50)]
    for _router, dealer in pairs:
        poller.register(dealer, zmq.POLLIN, lazy=True)
    assert poller.poll(0) == []
    router, dealer = pairs[17]
    dealer.send(b"hi")
    poller.touch(dealer)
    peer, _ = router.recv_multipart()
    assert poller.poll(0) == []                  # nothing for it yet: read, and forgotten
    router.send_multipart([peer, b"back"])
    assert wait_for(poller, dealer) == {dealer: zmq.POLLIN}
    assert dealer.recv() == b"back"
    assert poller.poll(0) == []
    poller.unregister(dealer)
    router.send_multipart([peer, b"again"])
    arrived(dealer)
    assert poller.poll(0) == []
    assert len(poller) == 49

