"""COM1 / COM2: an emulated serial port served by the worker, as Gen 1 UARTs are in Hyper-V.

`set-vmcomport NAME --number 1 --path SOCKETPATH` makes the port a Unix stream socket at
SOCKETPATH; `socat - UNIX-CONNECT:SOCKETPATH` then talks to the guest's console (COM1): what
the guest writes goes to the client, what the client types goes to the guest. COM2 is a port
with nothing behind it in the guest: its input is dropped and it never produces output.

Never blocking the guest: everything is non-blocking. Output waits in a bounded buffer
(OUTPUT_BUFFER bytes; the oldest bytes are dropped when a client does not read), a client
that disconnects is simply forgotten, and a second client is told the port is busy and closed
while the first keeps it.
"""
from __future__ import annotations

import os
import socket
import stat
from typing import Callable

from hypervisor.runtime.errors import HvError

OUTPUT_BUFFER = 64 * 1024
PATH_MAX = 107


def check_path(path) -> str:
    if not isinstance(path, str):
        raise HvError("BadRequest", "a COM port path must be a string")
    if path == "":
        return path
    if not os.path.isabs(path) or len(path.encode()) > PATH_MAX or "\x00" in path:
        raise HvError("BadRequest", f"a COM port path must be absolute and at most {PATH_MAX} bytes")
    if not os.path.isdir(os.path.dirname(path)):
        raise HvError("BadRequest", f"the folder of {path} does not exist")
    return path


class ComPort:
    def __init__(self, number: int, path: str, log, on_input: Callable[[bytes], None],
                 watch: Callable[[int, Callable[[], None]], None], unwatch: Callable[[int], None]):
        self.number, self.path, self.log = number, path, log
        self.on_input, self._watch, self._unwatch = on_input, watch, unwatch
        self.client: socket.socket | None = None
        self.client_eof = False
        self.out = bytearray()
        self.dropped = 0
        self.listener = self._bind(path)
        self._watch(self.listener.fileno(), self._accept)

    def _bind(self, path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise HvError("BadRequest", f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise HvError("AlreadyExists", f"{path} is served by another process")
            except OSError:
                os.unlink(path)  # a stale socket file from a worker that died
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            sock.bind(path)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            raise HvError("BadRequest", f"cannot serve COM{self.number} at {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            if self.client is not None and (self.client_eof or not self._client_alive()):
                self._readable()          # deliver what it sent last, notice its EOF, drop it
                self._drop_client()
            if self.client is not None:
                try:
                    conn.send(f"hvemu: COM{self.number} is in use by another client\r\n".encode())
                except OSError:
                    pass
                conn.close()
                continue
            self.client, self.client_eof = conn, False
            self._watch(conn.fileno(), self._readable)
            self.log.info("comport_client_connected", number=self.number)
            self._flush()

    def _client_alive(self) -> bool:
        """False when the current client has hung up or shut down its side (its EOF may not
        have been read yet)."""
        try:
            return self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    def _readable(self) -> None:
        if self.client is None or self.client_eof:
            return
        try:
            data = self.client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # the client shut down its sending side (socat does at the end of its input): it may
            # still read what the guest answers, so keep writing until a send fails or another
            # client comes
            self.client_eof = True
            self._unwatch(self.client.fileno())
            return
        if self.number == 1:
            self.on_input(data)

    def write(self, data: bytes) -> None:
        """Guest output for this port: to the client if one is connected, never blocking."""
        if self.client is None or not data:
            return
        self.out += data
        if len(self.out) > OUTPUT_BUFFER:
            cut = len(self.out) - OUTPUT_BUFFER
            del self.out[:cut]
            self.dropped += cut
        self._flush()

    def _flush(self) -> None:
        while self.out and self.client is not None:
            try:
                n = self.client.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop_client()
                return
            del self.out[:n]

    def tick(self) -> None:
        self._flush()

    def _drop_client(self) -> None:
        if self.client is not None:
            if not self.client_eof:
                self._unwatch(self.client.fileno())
            self.client.close()
            self.client, self.client_eof = None, False
            self.out.clear()
            self.log.info("comport_client_disconnected", number=self.number)

    def close(self) -> None:
        self._drop_client()
        self._unwatch(self.listener.fileno())
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
