"""A daemon loop's poller: zmq.Poller's interface (register / unregister / poll → [(what,
POLLIN)]) on epoll, so a poll costs what is ready, not what is registered.

Why (issue 16): zmq_poll checks every registered socket (ZMQ_EVENTS) and every descriptor on
each call. vmms holds a DEALER and a pidfd per running VM and the hypervisor two pidfds per
partition, so at 200 VMs one poll cost vmms ~320 µs and the hypervisor ~70 µs, several times
per start. Here a descriptor is in the epoll set once; a poll returns only what fired.

A ZeroMQ socket is watched through its ZMQ_FD, which says only that the socket's state *may*
have changed, and any operation on the socket (a send, a recv, a ZMQ_EVENTS read) may consume
that signal while messages wait. So a socket's ZMQ_EVENTS is read:
- at every poll, for a socket registered normally (the few daemon sockets: as zmq.Poller does);
- for a socket registered `lazy` (one per VM), only when its ZMQ_FD fires, when it was reported
  ready by the last poll (its reader may have left messages), or after `touch(sock)` — which
  whoever sends on it must call (parent/worker_supervisor.py `WorkerHandle.send`).
"""
from __future__ import annotations

import select

import zmq

POLLIN = zmq.POLLIN


class EventPoller:
    def __init__(self):
        self._epoll = select.epoll()          # close-on-exec: no child inherits it
        self._fd_of: dict = {}                # registered socket or descriptor -> its epoll fd
        self._what: dict[int, object] = {}    # epoll fd -> the registered socket or descriptor
        self._always: dict[zmq.Socket, None] = {}   # sockets read at every poll (ordered)
        self._lazy: set[zmq.Socket] = set()
        self._recheck: set[zmq.Socket] = set()      # lazy sockets to read at the next poll

    def register(self, what, flags: int = POLLIN, lazy: bool = False) -> None:
        """Watch `what` (a zmq socket, a descriptor, or an object with fileno()) for input
        (POLLIN: all these loops wait for)."""
        if flags != POLLIN:
            raise ValueError("EventPoller watches for POLLIN only")
        if isinstance(what, zmq.Socket):
            fd = what.getsockopt(zmq.FD)
            if lazy:
                self._always.pop(what, None)
                self._lazy.add(what)
            else:
                self._lazy.discard(what)
                self._always[what] = None
            self._recheck.add(what)   # what arrived before it was watched
        else:
            fd = what if isinstance(what, int) else what.fileno()
        old = self._fd_of.get(what)
        if old is not None and old != fd:
            self._forget_fd(old)
        self._fd_of[what] = fd
        self._what[fd] = what
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:   # registered again (zmq.Poller allows it): same interest
            self._epoll.modify(fd, select.EPOLLIN)

    def unregister(self, what) -> None:
        """Stop watching `what`; KeyError if it is not watched (as zmq.Poller)."""
        fd = self._fd_of.pop(what)
        self._always.pop(what, None)
        self._lazy.discard(what)
        self._recheck.discard(what)
        if self._what.get(fd) == what:   # (not `is`: an fd above 256 is a new int each time)
            self._forget_fd(fd)

    def _forget_fd(self, fd: int) -> None:
        self._what.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:   # closed already: the kernel dropped it from the set
            pass

    def touch(self, sock: zmq.Socket) -> None:
        """`sock` (lazy) was used since the last poll: read its state at the next one."""
        if sock in self._lazy:
            self._recheck.add(sock)

    def poll(self, timeout: int | None = None) -> list[tuple[object, int]]:
        """What has input, waiting up to `timeout` ms (None or < 0: until something has)."""
        ready: dict = {}
        for sock in self._always:
            _read_events(sock, ready)
        recheck, self._recheck = self._recheck, set()
        for sock in recheck:
            _read_events(sock, ready)
        wait = 0 if ready else (-1 if timeout is None or timeout < 0 else timeout / 1000)
        for fd, _mask in self._epoll.poll(wait):
            what = self._what.get(fd)
            if isinstance(what, zmq.Socket):
                _read_events(what, ready)
            elif what is not None:
                ready[what] = POLLIN
        self._recheck.update(what for what in ready if what in self._lazy)
        return list(ready.items())

    def __len__(self) -> int:
        return len(self._fd_of)

    def close(self) -> None:
        self._epoll.close()


def _read_events(sock: zmq.Socket, ready: dict) -> None:
    try:
        if sock.getsockopt(zmq.EVENTS) & POLLIN:
            ready[sock] = POLLIN
    except zmq.ZMQError:   # closed under us: its owner unregisters it
        pass
