"""The guest programs a child partition can run (CLI.md "Guest programs"), parsed and started.

`parse_spec` is pure and validates a SPEC (vmms calls it before storing a configuration).
Programs run as processes of the partition: their whole tree is what the hypervisor schedules.
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.sizes import parse_size

@dataclass(frozen=True)
class GuestSpec:
    kind: str
    command: str = ""
    size: int = 0
    seed: str = ""
    args: tuple[str, ...] = ()   # programs that use devices (worker/guest/device_programs.py)

    def __str__(self) -> str:
        if self.args:
            return ":".join((self.kind, *self.args))
        if self.kind == "command":
            return f"command:{self.command}"
        if self.kind == "memory-demand":
            return f"memory-demand:{self.size}"
        if self.kind in ("disk-write", "disk-verify"):
            return f"{self.kind}:{self.size}:{self.seed}"
        if self.kind == "disk-sha256":
            return f"disk-sha256:{self.size}"
        return self.kind


# The guest programs, one row each: SPEC syntax → what the guest does. The SPEC error message,
# `hvctl new-vm --help` and docs/cli.md are made from this table.
GUEST_PROGRAMS: dict[str, str] = {
    "idle": "boots, runs its integration services, and waits",
    "cpu-burn": "keeps every one of its virtual processors busy (one busy process per VP)",
    "counter": "keeps a counter in guest RAM, adds 1 about every 100 ms, publishes KVP counter; "
               "a saved and restored VM continues from where it was",
    "no-shutdown": "idles and never answers the shutdown integration service (tests stop-vm's "
                   "timeout)",
    "memory-demand:SIZE": "commits and touches SIZE of guest memory and reports it as demand; "
                          "set-vm --guest changes it while running",
    "command:CMD": "runs the shell command CMD inside the partition (its whole process tree is "
                   "the partition); its console is COM1",
    "disk-write:SIZE:SEED": "writes the test pattern over the first SIZE bytes of its first disk, "
                            "flushes, publishes KVP disk-write = ok (or error: …), then idles",
    "disk-verify:SIZE:SEED": "reads the first SIZE bytes of its first disk and publishes KVP "
                             "disk-verify = ok or mismatch at <byte offset>",
    "disk-sha256:SIZE": "publishes KVP disk-sha256 = hex SHA-256 of the first SIZE bytes of its "
                        "first disk",
    "disk-bench:SPAN:SECONDS": "measures its first disk over the first SPAN bytes; publishes "
                               "disk-bench-<test> figures and disk-bench = done",
    "device-stream:CLASS:COUNT[:INTERVAL_MS[:WINDOW]]": "sends COUNT requests to its first VMBus "
        "device of class CLASS; publishes KVP device-stream-progress and device-stream = done …",
    "kvp-echo": "mirrors every host KVP item into its own (guest) pool",
    "secret": "writes HVEMU-SECRET: and 64 random hex digits into its guest RAM, keeps it there, "
              "and publishes only KVP secret-sha256 (the SHA-256 of that string)",
}


def spec_list() -> str:
    """`idle, cpu-burn, …, kvp-echo`: every SPEC form, for messages and help."""
    return ", ".join(GUEST_PROGRAMS)


def parse_spec(spec: str) -> GuestSpec:
    if not isinstance(spec, str) or not spec or len(spec) > 4096:
        raise HvError("BadRequest", "guest SPEC must be a non-empty string of at most 4096 characters")
    kind, _, rest = spec.partition(":")
    if kind in ("idle", "cpu-burn", "no-shutdown", "secret", "counter") and not rest:
        return GuestSpec(kind)
    if kind == "command" and rest.strip():
        return GuestSpec("command", command=rest)
    if kind == "memory-demand" and rest:
        return GuestSpec("memory-demand", size=parse_size(rest))
    if kind in ("disk-write", "disk-verify"):
        size, _, seed = rest.partition(":")
        n = parse_size(size) if size else -1
        if n <= 0 or n % 4096 or not seed:
            raise HvError("BadRequest", f"guest {kind} needs SIZE:SEED with SIZE a positive multiple of 4096")
        return GuestSpec(kind, size=n, seed=seed)
    if kind == "disk-sha256":
        n = parse_size(rest) if rest else -1
        if n <= 0:
            raise HvError("BadRequest", "guest disk-sha256 needs a positive SIZE")
        return GuestSpec(kind, size=n)
    from worker.guest.device_programs import parse_args
    args = parse_args(kind, rest)
    if args is not None:
        return GuestSpec(kind, args=args)
    raise HvError("BadRequest", f"unknown guest SPEC {spec!r}: use one of {spec_list()}")


class RunningProgram:
    """Processes started for a program; `stop()` ends the whole group (bounded)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.command: subprocess.Popen | None = None

    def start_burners(self, count: int, title: str) -> None:
        import setproctitle
        from worker.guest.runtime import set_pdeathsig
        for vp in range(count):
            pid = os.fork()  # the guest holds no zmq context and no threads
            if pid == 0:
                set_pdeathsig(signal.SIGKILL)
                setproctitle.setproctitle(f"vcpu{vp} {title}")
                while True:
                    pass
            self.pids.append(pid)

    def start_command(self, cmd: str) -> subprocess.Popen:
        self.command = subprocess.Popen(
            ["/bin/sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"},
            process_group=0, close_fds=True)
        return self.command

    def exited(self) -> int | None:
        """Exit status of the command program if it has ended (None otherwise)."""
        return self.command.poll() if self.command is not None else None

    def stop(self, grace: float = 2.0) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.pids.clear()
        if self.command is not None and self.command.poll() is None:
            try:
                os.killpg(self.command.pid, signal.SIGTERM)
                self.command.wait(timeout=grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.command.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.command.wait(timeout=grace)
