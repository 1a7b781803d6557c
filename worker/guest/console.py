"""The guest's console on COM1 (worker/comport.py serves the socket in the worker).

With a `command:` program, COM1 is the command's stdin/stdout: `CommandInput` feeds what the
client types to the command's stdin without ever blocking the guest (a bounded buffer; bytes
beyond it are dropped). Otherwise COM1 is the guest runtime's own console (`RuntimeConsole`):
it prints what the runtime does and answers a few commands — `help`, `status`, `kvp`,
`time`, `devices`.
"""
from __future__ import annotations

import os
import time
from typing import Callable

INPUT_BUFFER = 64 * 1024
MAX_LINE = 1024


class CommandInput:
    def __init__(self, stdin):
        self.stdin = stdin
        self.buf = bytearray()
        self.dropped = 0
        if stdin is not None:
            os.set_blocking(stdin.fileno(), False)

    def write(self, data: bytes) -> None:
        if self.stdin is None:
            return
        room = INPUT_BUFFER - len(self.buf)
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        self.buf += data
        self.flush()

    def flush(self) -> None:
        while self.buf and self.stdin is not None:
            try:
                n = os.write(self.stdin.fileno(), self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:   # the command closed its stdin or exited
                self.buf.clear()
                self.stdin = None
                return
            del self.buf[:n]


class RuntimeConsole:
    def __init__(self, guest, send: Callable[[bytes], None]):
        self.guest = guest
        self.send = send
        self.started = time.monotonic()
        self.line = bytearray()

    def log(self, text: str) -> None:
        self.send(f"[{time.monotonic() - self.started:9.3f}] {text}\r\n".encode(errors="replace"))

    def input(self, data: bytes) -> None:
        for byte in data:
            if byte in (10, 13):
                if self.line:
                    self.command(self.line.decode(errors="replace").strip())
                    self.line.clear()
            elif len(self.line) < MAX_LINE:
                self.line.append(byte)

    def command(self, line: str) -> None:
        g = self.guest
        services = g.services
        word = line.split()[0] if line.split() else ""
        if word == "help":
            out = "commands: help, status, kvp, time, devices"
        elif word == "status":
            out = f"guest {g.name} ({g.vm_id}) running {g.spec}"
        elif word == "kvp":
            pool = services.host_pool()
            out = "host pool: " + (", ".join(f"{k}={v}" for k, v in sorted(pool.items())) or "(empty)")
        elif word == "time":
            out = (f"guest time {services.clock.now():.6f}, offset {services.clock.offset * 1000:+.3f} ms, "
                   f"{'synchronized' if services.clock.synced else 'not synchronized'}")
        elif word == "devices":
            devs = services.bus.devices.values()
            out = "; ".join(f"{d.offer.class_id} {'open' if d.is_open else d.failure or 'closed'}"
                            for d in devs) or "(none)"
        else:
            out = f"unknown command {word!r}; try help"
        self.send(f"{out}\r\n".encode(errors="replace"))
