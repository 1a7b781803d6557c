"""The guest runtime: what runs inside a child partition (`vmmem <VMName> <VMId>`).

It starts from a clean slate: a fork taken before its worker read any credential or made any
ZeroMQ context (or an exec of `python -m worker.guest` after a reset), an empty environment,
no file descriptors but its link to the worker. It then enters its sandbox (DESIGN.md §9,
hypervisor/runtime/sandbox.py: its own uid, user/PID/mount/IPC/UTS/network namespaces — or
exits, never running unconfined), waits for `boot`, maps its guest RAM (a descriptor that came
with `boot`), runs its program and its integration services (heartbeat, shutdown, console) until
told to stop. As pid 1 of its PID namespace it reaps every orphan of the partition; its own
hypercalls (memory demand) go over the link, and the worker sends them with this partition's
credential. Networking hook: the runtime is root of the partition's user and network
namespaces, so a network adapter's TAP can be created from here.

Save and restore: on the worker's `save` the runtime quiesces its program (no new requests;
those in flight complete), writes what it cannot recompute into the state area at the start of
guest RAM (worker/guest/program_state.py) and answers `saved`, then changes nothing more. A
`boot` with `restore` finds that state in RAM — which the worker filled from the saved-state
file — and continues the program from it. A `command:` program runs processes whose state is
not in guest RAM: its save is refused.
"""
from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import time

import setproctitle

from hypervisor.runtime import sandbox as sb
from hypervisor.runtime import signal_wakeup
from hypervisor.runtime.read_poll import MAX_EVENTS, ReadPoll
from worker.guest import device_programs
from worker.guest.console import CommandInput, RuntimeConsole
from worker.guest.guest_ram import GuestRam
from worker.guest.integration import GuestServices
from worker.guest.program_state import STATE_AREA_SIZE, Counter, read_state, write_state
from worker.guest.programs import RunningProgram, parse_spec
from worker.guest.secret_program import SecretProgram
from worker.guest_link import GuestLink

BOOT_TIMEOUT = 30.0
IDLE_WAIT = 30.0      # s; the longest the loop sleeps with nothing due (heartbeats come sooner)
BUSY_WAIT = 0.25      # s; while a save quiesces or console input waits for the command's stdin
CONSOLE_CHUNK = 65536  # bytes of a command's output read (and sent to the worker) at once
CONSOLE_RETRY = 0.005  # s; while the link has no room for console output, how soon to look again
PR_SET_TIMERSLACK = 29
IDLE_SLACK_NS = 50_000_000   # a sleep of IDLE_SLACK_AFTER or more may end up to 50 ms late ...
IDLE_SLACK_AFTER = 1.0       # ... so the kernel serves many idle guests' timers with one wake-up
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl, _libc.clearenv     # looked up at import (shared image), not in each guest
# The per-host part of every partition's sandbox plan (the interpreter's paths and what must
# be exposed of them), computed at import: in the worker fork-server, whose image every VM
# shares, so no guest computes it again (issue 16). `python -m worker.guest` computes it too.
HOST_PATHS = sb.host_paths()


def set_pdeathsig(sig: int) -> None:
    sb.set_pdeathsig(sig)


def set_timer_slack(ns: int) -> None:
    """PR_SET_TIMERSLACK: how late the kernel may end this process's timed sleeps, to expire
    them together with other timers (0: back to the default, 50 µs). An idle guest's next beat
    can wait 50 ms (its watchdog has 3 s to spare); a busy loop's short sleeps keep the default."""
    _libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)


def clear_environment() -> None:
    """An empty environment, for this process (os.environ) and what it runs (the C `environ`):
    libc's clearenv() and a new empty dict under the mapping. (`os.environ.clear()` pops and
    unsetenv()s key by key: ~0.4 ms of a guest's start for some 40 variables.)"""
    _libc.clearenv()
    os.environ._data = {}   # its store, replaced: the old one (shared image) is not written


def isolate(link_fd: int, expected_parent: int) -> None:
    """Die with the worker, forget the worker's environment and every descriptor but the link."""
    set_pdeathsig(signal.SIGKILL)
    ppid = os.getppid()
    if ppid == 0:  # our parent is outside our PID namespace: its link end tells if it lives
        poll = select.poll()
        poll.register(link_fd, select.POLLHUP)
        if poll.poll(0):
            os._exit(1)  # the worker died before prctl took effect
    elif ppid != expected_parent:
        os._exit(1)  # the worker died before prctl took effect
    clear_environment()
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
        self.poll = ReadPoll()     # raw epoll: this loop is on every network frame's path
        # VMBus and the integration services (heartbeat, shutdown, KVP, time sync), the console
        self.services = GuestServices(self, self._watch, self._unwatch)
        self.console_in: CommandInput | None = None
        self.halt_reason: str | None = None
        self.init = os.getpid() == 1       # pid 1 of the partition: every orphan is ours to reap
        # a child's exit (the command, an orphan to reap as pid 1) wakes the loop: no polling
        self.sigchld_fd = signal_wakeup.install((signal.SIGCHLD,))
        self.hypercall_seq = 0
        self.net = None               # worker/guest/net_adapter.NetAdapters when it has adapters
        self.saving = False                # the worker asked for a save: quiesce, then answer
        self.saved = False                 # the state is in RAM: change nothing more

    def _watch(self, fd: int, callback) -> None:
        self.poll.register(fd, callback)

    def _unwatch(self, fd: int) -> None:
        self.poll.unregister(fd)

    def console_send(self, data: bytes) -> None:
        self.link.send({"t": "console", "data": data})

    def wait_boot(self) -> dict:
        link = [self.link.sock]
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and not self.link.closed:
            select.select(link, (), (), max(0.0, deadline - time.monotonic()))
            for msg in self.link.receive():
                if msg.get("t") == "boot":
                    return msg
        os._exit(2)  # never booted: nothing to clean up

    def hypercall(self, op: str, args: dict) -> None:
        """A child-partition hypercall (its answer arrives later as `hypercall-reply`)."""
        self.hypercall_seq += 1
        self.link.send({"t": "hypercall", "id": self.hypercall_seq, "op": op, "args": args})

    def boot(self, msg: dict) -> None:
        net_note = None
        if msg.get("network"):   # adapters: a network namespace of its own, before the program
            from worker.guest import net_namespace
            from worker.guest.net_adapter import NetAdapters
            try:
                net_note = f"network namespace: {net_namespace.enter()}"
                self.net = NetAdapters(self.services)
            except OSError as exc:
                net_note = f"no network namespace, adapters unavailable: {exc}"
        fds, size = list(msg.get("fds") or ()), int(msg.get("memory_size") or 0)
        for extra in fds[1:]:
            os.close(extra)
        if fds and size:
            self.memory = GuestRam(fds[0], size, int(msg.get("memory_map_size") or size),
                                   self.hypercall, bool(msg.get("dynamic_memory")))
        elif fds:
            os.close(fds[0])
        restored = None
        if msg.get("restore"):
            restored = read_state(self.memory.mm) if self.memory is not None else None
            if restored is None:
                self.link.send({"t": "halt", "reason": "restore failed: guest RAM holds no "
                                                       "saved program state"})
                os._exit(4)
            self.services.guest_pool.update(restored.get("kvp") or {})
            self.services.clock.offset = float(restored.get("clock_offset") or 0.0)
            if self.memory is not None:
                self.memory.touched = int(restored.get("touched") or 0)
                self.memory.target = int(restored.get("target") or 0)
        self.start_program(restored.get("spec") if restored else msg["program"],
                           int(msg.get("vps", 1)), restored)
        # VMBus contact first (the worker answers with its offers; the first heartbeat follows),
        # then the console's boot lines, which the worker writes to console.log meanwhile
        self.services.start()
        if self.program.command is not None:
            self.console_in = CommandInput(self.program.command.stdin)  # COM1 is its stdin/stdout
        else:
            self.services.console = RuntimeConsole(self, self.console_send)
            self.services.console.log(f"hvemu guest runtime: {self.name} booted, program {self.spec}")
            if net_note:
                self.services.console.log(net_note)

    def start_program(self, spec_text: str, vps: int, restored: dict | None = None) -> None:
        self.spec = parse_spec(spec_text)
        if self.spec.kind == "memory-demand" and self.memory is not None:
            self.memory.set_target(self.spec.size)
        if self.spec.kind == "counter":
            ram = self.memory.mm if self.memory is not None else bytearray(STATE_AREA_SIZE)
            self.services.program = Counter(self.services, ram, restored is not None)
        if self.spec.kind == "cpu-burn":
            self.program.start_burners(vps, f"{self.name} {self.vm_id}")
        elif self.spec.kind == "command":
            self.program.start_command(self.spec.command)
        elif self.spec.kind in device_programs.KINDS:
            self.services.program = device_programs.start(self.spec, self.services)
            state = (restored or {}).get("program")
            if state and hasattr(self.services.program, "restore"):
                self.services.program.restore(state)
        elif self.spec.kind == "secret":
            self.services.program = SecretProgram(self.memory, self.services)

    # -- save ----------------------------------------------------------------------------------

    def begin_save(self) -> None:
        if self.program.command is not None:
            self.link.send({"t": "save-refused", "reason": "a command: guest runs processes "
                                                           "whose state is not in guest RAM"})
            return
        if self.memory is None:
            self.link.send({"t": "save-refused", "reason": "the guest has no RAM to save into"})
            return
        self.saving = True
        program = self.services.program
        if program is not None and hasattr(program, "quiesce"):
            program.quiesce()

    def _save_ready(self) -> bool:
        program = self.services.program
        return program is None or not hasattr(program, "quiet") or program.quiet()

    def finish_save(self) -> None:
        program = self.services.program
        state = program.save_state() if program is not None and \
            hasattr(program, "save_state") else None
        write_state(self.memory.mm, {
            "spec": str(self.spec), "program": state, "kvp": dict(self.services.guest_pool),
            "clock_offset": self.services.clock.offset, "touched": self.memory.touched,
            "target": self.memory.target})
        self.saved = True
        self.link.send({"t": "saved"})

    def run(self) -> int:
        poll = self.poll
        poll.register(self.link.sock, "link")
        poll.register(self.sigchld_fd, "sigchld")
        out = self.program.command.stdout if self.program.command else None
        if out is not None:
            os.set_blocking(out.fileno(), False)
            poll.register(out, "console")
        wait, handlers, monotonic = poll.epoll.poll, poll.handlers, time.monotonic
        wake, housekeeping, reap = 0.0, True, True
        held = False         # console output waits: the link has no room for it (GuestLink.bulk_room)
        slack = False        # the idle timer slack is set (long sleeps only)
        gc.freeze()   # what boot built lives as long as the guest: no collection walks it again
        while self.running:
            now = monotonic()
            if housekeeping or now >= wake:
                self.services.tick(now)  # heartbeats, device programs, a drain of every channel
                wake = min(now + IDLE_WAIT, self.services.next_deadline())
                if self.console_in is not None:
                    self.console_in.flush()
                    if self.console_in.buf:
                        wake = min(wake, now + BUSY_WAIT)
                if self.saving and not self.saved:
                    if self._save_ready():
                        self.finish_save()
                    else:
                        wake = min(wake, now + BUSY_WAIT)
                if self.memory is not None and not self.saving:
                    self.memory.step(now)
                    wake = now if self.memory.busy() else min(wake, self.memory.next_deadline())
                if held:
                    if self.link.bulk_room(CONSOLE_CHUNK):
                        poll.register(out, "console")
                        held = False
                    else:
                        wake = min(wake, now + CONSOLE_RETRY)
            housekeeping = False     # events of `fast_path` callbacks (network frames) need none
            timeout = max(0.0, wake - monotonic())
            if (timeout >= IDLE_SLACK_AFTER) != slack:
                slack = not slack
                set_timer_slack(IDLE_SLACK_NS if slack else 0)
            for fd, _ in wait(timeout, MAX_EVENTS):
                handler = handlers.get(fd)
                if handler is None:
                    continue         # unwatched by an earlier handler of this batch
                if handler == "link":
                    housekeeping = True
                    for msg in self.link.receive():
                        self.handle(msg)
                elif handler == "sigchld":
                    signal_wakeup.received(fd)
                    reap = housekeeping = True   # a child exited: reap it (and only then)
                elif handler != "console":
                    handler()  # a VMBus channel's doorbell, a TAP
                    housekeeping = housekeeping or not getattr(handler, "fast_path", False)
                else:
                    housekeeping = True
                    if not self.link.bulk_room(CONSOLE_CHUNK):
                        poll.unregister(out)   # the command waits on its pipe until there is room
                        held = True
                        wake = min(wake, monotonic() + CONSOLE_RETRY)
                        continue
                    try:
                        data = os.read(out.fileno(), CONSOLE_CHUNK)
                    except BlockingIOError:
                        data = None
                    if data:
                        self.link.send({"t": "console", "data": data})
                    elif data == b"":
                        poll.unregister(out)
            if self.link.closed:
                self.program.stop()
                return 3  # the worker is gone; PDEATHSIG normally got here first
            if not housekeeping and time.monotonic() < wake:
                continue
            if self.init and reap:
                reap = False
                self.reap_orphans()
            code = self.program.exited()
            if code is not None:
                self.program.stop()
                self.link.send({"t": "halt", "reason": f"program exited with status {code}"})
                return 0
        self.program.stop()   # the Shutdown service asked us to go
        self.link.send({"t": "halt", "reason": self.halt_reason or "guest shut down"})
        return 0

    def reap_orphans(self) -> None:
        """As pid 1 of the partition: reap every exited process; the program's own children
        keep their exit status (Popen's returncode, the burners' list)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cmd = self.program.command
            if cmd is not None and pid == cmd.pid and cmd.returncode is None:
                cmd.returncode = os.waitstatus_to_exitcode(status)
            elif pid in self.program.pids:
                self.program.pids.remove(pid)

    def on_shutdown_request(self, reason: str) -> bool:
        """The Shutdown integration service: accept (and leave the loop), or ignore."""
        if self.spec is not None and self.spec.kind == "no-shutdown":
            self.services.note(f"shutdown requested ({reason}); this guest ignores it")
            return False  # a guest that ignores the shutdown service (for testing timeouts)
        self.services.note(f"shutdown requested ({reason}); shutting down")
        self.halt_reason = "guest shut down"
        self.running = False
        return True

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
        elif kind == "save":
            self.begin_save()
        elif kind == "save-cancel":   # the worker gave up (or failed to write): carry on
            self.saving = self.saved = False
            program = self.services.program
            if program is not None and hasattr(program, "unquiesce"):
                program.unquiesce()
        elif kind == "vmbus":
            self.services.on_link_message(msg)
        elif kind == "watchdog":
            self.services.set_watchdog(list(msg.get("fds") or ()))
        elif kind == "hypercall-reply":
            if self.memory is not None and isinstance(msg.get("result"), dict):
                self.memory.on_report_reply(msg["result"])
        elif kind == "console-in":
            data = msg.get("data")
            if isinstance(data, bytes):
                if self.console_in is not None:
                    self.console_in.write(data)
                elif self.services.console is not None:
                    self.services.console.input(data)
        else:
            for fd in msg.get("fds") or ():
                os.close(fd)  # descriptors nobody asked for


def enter_sandbox(sandbox: dict | None) -> bool:
    """The partition's sandbox (hypervisor/runtime/sandbox.py); exit rather than run without.
    True when its user namespace's id maps are the worker's to write (Full isolation)."""
    sandbox = sandbox or {"mode": "None"}
    try:
        plan = sb.partition_plan(sandbox.get("mode") or "None", sandbox.get("uid"),
                                 sandbox.get("gid"), sandbox.get("hostname") or "guest",
                                 hide=sandbox.get("hide") or (), paths=HOST_PATHS)
        sb.apply(plan)
    except (OSError, ValueError):
        os._exit(4)
    return plan.maps_by_parent


def guest_main(link_sock, name: str, vm_id: str, expected_parent: int,
               sandbox: dict | None = None) -> None:
    """Entry of the vmmem process; never returns."""
    gc.disable()   # no collection while it starts; frozen and enabled once booted
    # the title first: setproctitle needs the environment that isolate() clears
    setproctitle.setproctitle(f"vmmem {name} {vm_id}")
    isolate(link_sock.fileno(), expected_parent)
    maps_by_parent = enter_sandbox(sandbox)
    code = 1
    try:
        link = GuestLink(link_sock, accept_fds=True)
        link.send({"t": "sandboxed"})   # the worker writes our id maps (Full), then boots us
        guest = Guest(link, name, vm_id)
        boot = guest.wait_boot()
        if maps_by_parent and os.getuid() != 0:
            os._exit(4)   # no id maps: the sandbox is not what it should be; run nothing
        guest.boot(boot)
        gc.freeze()
        gc.enable()
        code = guest.run()
    finally:
        os._exit(code)
