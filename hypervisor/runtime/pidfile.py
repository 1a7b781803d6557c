"""A pid file held with `flock` for the life of its process (DESIGN.md §3, §8).

Binding an ipc path a second time silently steals it, so a daemon takes its pid-file lock
before it binds anything; the lock also tells a restarted vmms whether a worker is alive
(a held lock = a live owner; pid reuse cannot fool it).
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from hypervisor.runtime.errors import HvError

PROBE_RETRIES = 200    # × PROBE_PAUSE: how long a lock with no pid in its file may stay held
PROBE_PAUSE = 0.002    # s


class PidFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Lock the pid file, or raise AlreadyExists naming its holder.

        The lock counts only if `path` still names the file that was locked: a holder that is
        releasing unlinks the file while it still holds the lock, so a process that opened the
        old file and locked it after that sees a different (or no) inode at `path` and tries
        again on the new file. Two daemons can therefore never both hold a home."""
        nameless = 0
        for _ in range(100 + PROBE_RETRIES):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = read_pid(self.path)
                os.close(fd)
                if other is None and nameless < PROBE_RETRIES:
                    # No pid in the file: a holder_pid() probe's brief shared lock (`host up`
                    # polls while this daemon starts), or a holder about to write its pid —
                    # look again rather than give up a home nobody owns.
                    nameless += 1
                    time.sleep(PROBE_PAUSE)
                    continue
                raise HvError("AlreadyExists", f"{self.path} is held by running process {other}") from None
            if not _same_file(fd, self.path):
                os.close(fd)  # we locked a file its holder had just unlinked: take the new one
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise HvError("Busy", f"{self.path} keeps changing; try again")

    def release(self) -> None:
        """Unlink while still holding the lock, then unlock: whoever locks the old file after
        this finds it unlinked (see acquire), and the new file is free for the next daemon."""
        if self.fd is not None:
            try:
                if _same_file(self.fd, self.path):
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def read_pid(path: Path) -> int | None:
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def holder_pid(path: Path) -> int | None:
    """The pid of the live process holding the lock on `path`, or None if nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
