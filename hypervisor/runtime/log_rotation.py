"""A size-bounded, rotated log file: `name`, `name.1`, … `name.<keep-1>`.

Used for each daemon's JSON log (logging_setup) and for a VM's `console.log` (vmwp): whatever a
client or a guest does, a log never holds more than `max_bytes` × `keep` bytes. When a write
would take the file past `max_bytes`, the files shift up by one (the oldest is dropped) and a
fresh file starts. Writes are appended whole (a line is never split across two files). Several processes may share
one log (each appends; before rotating, a writer re-reads the file's size and follows a rotation
another one already did), so a shared log stays bounded too.
Text or bytes, by `binary`.
"""
from __future__ import annotations

import os
from pathlib import Path


class RotatingFile:
    def __init__(self, path: Path | str, max_bytes: int, keep: int, binary: bool = False):
        self.path = Path(path)
        self.max_bytes, self.keep, self.binary = max_bytes, max(1, keep), binary
        self._f = None
        self._size = 0
        # Opened now, not at the first write: a process that then enters its sandbox (a drvhost)
        # can no longer open anything in the home, but keeps this descriptor.
        self._open()

    def _open(self):
        if self._f is None:
            self._f = self._open_file()
            self._size = os.fstat(self._f.fileno()).st_size
        return self._f

    def _open_file(self):
        return open(self.path, "ab" if self.binary else "a",
                    **({} if self.binary else {"encoding": "utf-8"}))

    def rotate(self) -> None:
        if not os.access(self.path.parent, os.W_OK):
            # sandboxed (no access to the logs folder): the held file starts over, still bounded
            self._f.flush()
            os.ftruncate(self._f.fileno(), 0)
            self._size = 0
            return
        if self._f is not None:
            self._f.close()
            self._f = None
        for n in range(self.keep - 1, 0, -1):
            src = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            try:
                os.replace(src, self.path.with_name(f"{self.path.name}.{n}"))
            except FileNotFoundError:
                pass
        if self.keep == 1:
            self.path.unlink(missing_ok=True)
        self._size = 0

    def write(self, data) -> int:
        if not data:
            return 0
        data = data[-self.max_bytes:]  # one write larger than a whole file keeps its tail
        size = len(data.encode() if isinstance(data, str) else data)
        f = self._open()
        if self._size + size > self.max_bytes:
            # Several processes may append to one log (every vmwp writes vmwp.log): look at the
            # file itself before rotating — another process may have rotated it already.
            self._reopen_if_moved()
            f = self._open()
            if self._size and self._size + size > self.max_bytes:
                self.rotate()
                f = self._open()
        f.write(data)
        self._size += size
        return size

    def _reopen_if_moved(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        own = os.fstat(self._f.fileno())
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)
        except OSError:
            moved = True
        if moved:
            try:
                new = self._open_file()
            except OSError:
                # the folder is out of reach (a drvhost in its sandbox): keep the descriptor held
                # since before the sandbox; rotate() then starts it over, still bounded
                self._size = own.st_size
                return
            self._f.close()
            self._f = new
            self._size = os.fstat(new.fileno()).st_size
        else:
            self._size = own.st_size

    def follow(self) -> None:
        """Write to the file now at `path` if another writer rotated it away (a process that
        inherited this writer across a fork calls it first), and learn its size."""
        self._reopen_if_moved()

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def files(self) -> list[Path]:
        return [p for p in [self.path, *(self.path.with_name(f"{self.path.name}.{n}")
                                         for n in range(1, self.keep))] if p.exists()]
