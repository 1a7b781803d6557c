"""`ReadPoll`: descriptors watched for readability with a raw `select.epoll`, each with the
value its owner dispatches on (a callback, a tag).

Why not `selectors`: the daemons on a network frame's path (the guest runtime, the driver host)
wake up once per frame or two, and right after a context switch Python runs cold; `selectors`
builds a key object per event and goes through several layers of calls per wake-up (~6 µs of
a cold wake-up measured here). The loops instead call `epoll.poll` themselves and look the
descriptor up in `handlers` (a plain dict): `for fd, _ in poll.epoll.poll(timeout,
MAX_EVENTS): handler = poll.handlers.get(fd)` — a descriptor unregistered earlier in the same
batch is then skipped, not served with a stale value.
"""
from __future__ import annotations

import select

# Events taken per `epoll.poll(timeout, MAX_EVENTS)`. Without a maximum, CPython allocates room
# for 1023 events (12 KiB, from malloc) on every call; 32 (384 bytes) come from its small-object
# allocator. More ready descriptors are returned by the next call (level-triggered: none is
# lost, and the kernel moves those it returned to the back of its ready list).
MAX_EVENTS = 32


def _fd(obj) -> int:
    return obj if isinstance(obj, int) else obj.fileno()


class ReadPoll:
    def __init__(self):
        self.epoll = select.epoll()
        self.handlers: dict[int, object] = {}

    def register(self, fd, handler) -> None:
        """Watch `fd` (a descriptor or an object with `fileno()`); KeyError if it is watched."""
        fd = _fd(fd)
        if fd in self.handlers:
            raise KeyError(f"descriptor {fd} is already watched")
        self.epoll.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def unregister(self, fd) -> None:
        """Stop watching `fd`; nothing if it was not watched (or is already closed)."""
        try:
            fd = _fd(fd)
        except (OSError, ValueError):
            return
        if self.handlers.pop(fd, None) is not None:
            try:
                self.epoll.unregister(fd)
            except (OSError, ValueError):
                pass            # closed already: the kernel dropped it from the set

    def close(self) -> None:
        self.epoll.close()
        self.handlers.clear()
