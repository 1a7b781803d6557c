"""The guest runtime: what runs inside a child partition (`vmmem <VMName> <VMId>`).

It starts from a clean slate: a fork taken before its worker read any credential or made any
ZeroMQ context (or an exec of `python -m worker.guest` after a reset), an empty environment,
no file descriptors but its link to the worker. It waits for `boot`, maps its guest RAM, runs
its program and its integration services (heartbeat, shutdown, console) until told to stop.
"""
from __future__ import annotations

import ctypes
import os
import selectors
import signal
import time

import setproctitle

from worker.guest.guest_ram import GuestRam
from worker.guest.programs import RunningProgram, parse_spec
from worker.guest_link import GuestLink

HEARTBEAT_INTERVAL = 0.5
BOOT_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def isolate(link_fd: int, expected_parent: int) -> None:
    """Die with the worker, forget the worker's environment and every descriptor but the link."""
    set_pdeathsig(signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(1)  # the worker died before prctl took effect
    os.environ.clear()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.closerange(3, link_fd)
    os.closerange(link_fd + 1, 65536)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


class Guest:
    def __init__(self, link: GuestLink, name: str, vm_id: str):
        self.link = link
        self.name = name
        self.vm_id = vm_id
        self.program = RunningProgram()
        self.spec = None
        self.memory: GuestRam | None = None
        self.running = True
        self.beat = 0

    def wait_boot(self) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.link.sock, selectors.EVENT_READ)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and not self.link.closed:
            sel.select(max(0.0, deadline - time.monotonic()))
            for msg in self.link.receive():
                if msg.get("t") == "boot":
                    sel.close()
                    return msg
        os._exit(2)  # never booted: nothing to clean up

    def boot(self, msg: dict) -> None:
        path, size = msg.get("memory_path"), int(msg.get("memory_size") or 0)
        if path and size:
            self.memory = GuestRam(path, size, int(msg.get("memory_map_size") or size),
                                   msg.get("credential"), msg.get("hypercall_endpoint"),
                                   bool(msg.get("dynamic_memory")))
        self.start_program(msg["program"], int(msg.get("vps", 1)))

    def start_program(self, spec_text: str, vps: int) -> None:
        self.spec = parse_spec(spec_text)
        if self.spec.kind == "memory-demand" and self.memory is not None:
            self.memory.set_target(self.spec.size)
        if self.spec.kind == "cpu-burn":
            self.program.start_burners(vps, f"{self.name} {self.vm_id}")
        elif self.spec.kind == "command":
            self.program.start_command(self.spec.command)

    def run(self) -> int:
        sel = selectors.DefaultSelector()
        sel.register(self.link.sock, selectors.EVENT_READ, "link")
        out = self.program.command.stdout if self.program.command else None
        if out is not None:
            os.set_blocking(out.fileno(), False)
            sel.register(out, selectors.EVENT_READ, "console")
        next_beat = time.monotonic()
        while self.running:
            now = time.monotonic()
            if now >= next_beat:
                self.beat += 1
                self.link.send({"t": "heartbeat", "seq": self.beat})
                next_beat = now + HEARTBEAT_INTERVAL
            wake = next_beat
            if self.memory is not None:
                self.memory.step(now)
                wake = now if self.memory.busy() else min(wake, self.memory.next_deadline())
            for key, _ in sel.select(max(0.0, wake - time.monotonic())):
                if key.data == "link":
                    for msg in self.link.receive():
                        self.handle(msg)
                else:
                    try:
                        data = os.read(out.fileno(), 65536)
                    except BlockingIOError:
                        data = None
                    if data:
                        self.link.send({"t": "console", "data": data})
                    elif data == b"":
                        sel.unregister(out)
            if self.link.closed:
                self.program.stop()
                return 3  # the worker is gone; PDEATHSIG normally got here first
            code = self.program.exited()
            if code is not None:
                self.program.stop()
                self.link.send({"t": "halt", "reason": f"program exited with status {code}"})
                return 0
        return 0

    def handle(self, msg: dict) -> None:
        kind = msg.get("t")
        if kind == "set-program":
            try:
                spec = parse_spec(msg.get("program", ""))
            except Exception:
                return
            if spec.kind == "memory-demand" and self.memory is not None:
                self.spec = spec  # demand changes live; other programs wait for the next boot
                self.memory.set_target(spec.size)
        elif kind == "shutdown":
            if self.spec is not None and self.spec.kind == "no-shutdown":
                return  # a guest that ignores the shutdown service (for testing timeouts)
            self.program.stop()
            self.link.send({"t": "shutdown-ack"})
            self.running = False


def guest_main(link_sock, name: str, vm_id: str, expected_parent: int) -> None:
    """Entry of the vmmem process; never returns."""
    # the title first: setproctitle needs the environment that isolate() clears
    setproctitle.setproctitle(f"vmmem {name} {vm_id}")
    isolate(link_sock.fileno(), expected_parent)
    code = 1
    try:
        guest = Guest(GuestLink(link_sock), name, vm_id)
        guest.boot(guest.wait_boot())
        code = guest.run()
    finally:
        os._exit(code)
