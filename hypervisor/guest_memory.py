"""Guest RAM as a real shared-memory file (DESIGN.md §4).

The hypervisor creates one `GuestMemory` per partition in /dev/shm, sized to what the memory
ledger assigned, and hands the guest a descriptor to map. Growing is hot-add (ftruncate up).
Shrinking is balloon-down: the released range is hole-punched first, so tmpfs frees the pages
and the host really gets them back, then the file is truncated.

The name is `<prefix><128 random bits>`: another local user cannot guess it, and the file is
created with O_EXCL and mode 0600, so nobody else can open or pre-plant it. The caller's
per-home prefix lets `sweep_stale()` remove what a killed hypervisor left behind.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import weakref

from hypervisor.runtime.errors import HvError

SHM_DIR = "/dev/shm"
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
# fallocate64 takes a 64-bit off_t even on 32-bit builds; fallocate is the same on 64-bit.
_fallocate = getattr(_libc, "fallocate64", None) or _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the pages of [offset, offset+length) without changing the file's size."""
    if length <= 0:
        return
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


def _check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HvError("BadRequest", f"guest memory size must be a non-negative integer, got {size!r}")
    return size


def _remove(fd: int, path: str) -> None:
    # Runs once: from close(), from garbage collection, or at interpreter exit.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


class GuestMemory:
    """One partition's RAM: an unlinked-on-close 0600 file in /dev/shm."""

    def __init__(self, size: int, prefix: str, directory: str = SHM_DIR):
        _check_size(size)
        self._path = os.path.join(directory, prefix + secrets.token_hex(16))
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(self._path, flags, 0o600)
        self._finalizer = weakref.finalize(self, _remove, self._fd, self._path)
        try:
            os.fchmod(self._fd, 0o600)  # exact mode whatever the umask
            os.ftruncate(self._fd, size)
        except BaseException:
            self.close()
            raise
        self._size = size

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def fileno(self) -> int:
        if self.closed:
            raise HvError("InvalidState", "guest memory is closed")
        return self._fd

    def resize(self, new_size: int) -> None:
        """Grow (hot-add) or shrink (balloon-down, pages returned to the host) to new_size."""
        fd = self.fileno()
        _check_size(new_size)
        if new_size < self._size:
            try:
                punch_hole(fd, new_size, self._size - new_size)
            except OSError as exc:
                # Filesystems without punch-hole still free pages on truncate below.
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        os.ftruncate(fd, new_size)
        self._size = new_size

    def reserve_length(self, length: int) -> None:
        """Make the file (sparse) `length` long so a guest can map its maximum once: pages
        beyond the assignment cost nothing until touched, and a mapping may not pass EOF."""
        fd = self.fileno()
        if length > os.fstat(fd).st_size:
            os.ftruncate(fd, length)

    def assign(self, new_size: int) -> None:
        """Change the assignment while a guest maps the object. Hot-add extends the file;
        balloon-down punches the released range (the host gets the pages back) but keeps the
        file's length, so a guest touching a page it was just asked to give up reads zeros
        instead of dying of SIGBUS (it learns its new size from its next demand report)."""
        fd = self.fileno()
        _check_size(new_size)
        length = os.fstat(fd).st_size
        if new_size < self._size:
            punch_hole(fd, new_size, self._size - new_size)
        elif new_size > length:
            os.ftruncate(fd, new_size)
        self._size = new_size

    def reclaim(self) -> None:
        """Punch again everything past the assignment: pages a guest touched there after a
        balloon-down (it had not yet learned its new size) go back to the host."""
        fd = self.fileno()
        length = os.fstat(fd).st_size
        if length > self._size:
            punch_hole(fd, self._size, length - self._size)

    def close(self) -> None:
        """Unlink and close; safe to call any number of times."""
        self._finalizer()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sweep_stale(prefix: str, directory: str = SHM_DIR) -> list[str]:
    """Remove guest-memory files named `<prefix>…` left by a dead hypervisor; return their paths.

    Only regular files owned by this user are touched, and never through a symlink.
    """
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise HvError("BadRequest", f"unsafe guest memory prefix {prefix!r}")
    removed = []
    for name in os.listdir(directory):
        if not name.startswith(prefix):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(path)
                removed.append(path)
        except FileNotFoundError:
            pass  # gone meanwhile
    return removed
