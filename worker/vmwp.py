"""vmwp: the worker process of one running VM (`vmwp <VMName> <VMId>`).

It owns the VM's state machine, creates the VM's child partition through hypercalls, runs the
guest (`vmmem`, its child, dying with it through PR_SET_PDEATHSIG) and serves vmms on its own
socket (`run/w/<VMId>.sock`), pushing a `status` notification on every change. It holds a pid
file lock for its whole life, so a restarted vmms can find it again.

Start-up order matters: the guest is forked first, before this process reads the root
credential or makes a ZeroMQ context, so the guest inherits neither.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import time

import setproctitle
import zmq

from hypervisor import hypercall_defs as hc
from hypervisor.runtime import logging_setup
from hypervisor.runtime import sandbox as sandbox_calls
from hypervisor.runtime import process_tree, signal_wakeup
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.limits import CONSOLE_LOG_BYTES, CONSOLE_LOG_FILES
from hypervisor.runtime.log_rotation import RotatingFile
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import PidFile, read_pid
from hypervisor.runtime.rpc_client import RpcClient
from hypervisor.runtime.rpc_server import DEFERRED, RpcServer, bind_router
from worker import guest_link, saved_state_file
from worker.guest.runtime import guest_main
from worker.integration.ic_defs import HEARTBEAT_LOST_AFTER, heartbeat_lost_at
from worker.virtual_devices import VirtualDevices
from worker.vm_state import VmState, begin, result
from worker.worker_defs import (NOTIFY_STATUS, STATUS_KEYS, STOP_TIMEOUT_DEFAULT, bind_worker_ops,
                                worker_op_table)

SAVE_QUIESCE_TIMEOUT = 10.0
TRANSITION_TICK = 0.25   # s; the devices' tick while the VM starts, stops or saves
IDLE_WAIT = 30.0          # s; the longest the loop sleeps when nothing is due (every wait bounded)
BOOT_DEADLINE = 30.0
SANDBOX_TIMEOUT = 10.0    # s; the guest enters its sandbox while the partition is created
RELAY_PER_SECOND = 50     # child-partition hypercalls a guest may send per second (it reports every 0.5 s)


def guest_sandbox(home: Home, name: str, sandbox: dict | None) -> dict:
    """The guest's sandbox plan arguments (DESIGN §9): mode, its uid/gid, what to hide."""
    sb = dict(sandbox or {})
    return {"mode": sb.get("mode") or "None", "uid": sb.get("uid"), "gid": sb.get("gid"),
            "hostname": name, "hide": [str(home.root)]}


def fork_guest(name: str, vm_id: str, sandbox: dict) -> tuple[int, guest_link.GuestLink]:
    """Fork the guest now (no zmq context, no threads, no credential in this process yet); in
    Full isolation as pid 1 of its own PID namespace (it sandboxes itself: guest/runtime.py)."""
    ours, theirs = guest_link.pair()
    parent = os.getpid()
    pid = sandbox_calls.fork_in_new_pid_ns() if sandbox["mode"] == "Full" else os.fork()
    if pid == 0:
        ours.close()
        guest_main(theirs, name, vm_id, parent, sandbox)  # never returns
    theirs.close()
    return pid, guest_link.GuestLink(ours)


def exec_guest(name: str, vm_id: str, sandbox: dict) -> tuple[int, guest_link.GuestLink]:
    """Start a guest by fork+exec (after a reset, when this process already has threads)."""
    ours, theirs = guest_link.pair()
    with sandbox_calls.pid_ns_for_children(sandbox["mode"] == "Full"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.guest", "--fd", str(theirs.fileno()), "--name", name,
             "--id", vm_id, "--parent", str(os.getpid()), "--sandbox", json.dumps(sandbox)],
            pass_fds=[theirs.fileno()], env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    proc.returncode = 0  # this worker reaps it itself with waitpid; keep Popen from doing so
    return proc.pid, guest_link.GuestLink(ours)


class Worker:
    def __init__(self, home: Home, vm_id: str, name: str, config: dict, log,
                 sandbox: dict | None = None, sandbox_slot: int | None = None):
        self.home, self.vm_id, self.name, self.config = home, vm_id, name, config
        self.sandbox = sandbox or guest_sandbox(home, name, None)
        self.sandbox_slot = sandbox_slot
        self.hv: RpcClient | None = None   # hypercalls as the root partition
        self.child_hv = None               # the guest's hypercalls, relayed with its credential
        self.restore: str | None = None    # the saved state this start restores, and its meta
        self.restore_meta: dict | None = None
        self.relay_window = [0.0, 0]       # [window start, hypercalls relayed in it]
        self.log = log.bind(vm_id=vm_id, vm_name=name)
        self.state = VmState.Starting
        self.guest_pid: int | None = None
        self.link: guest_link.GuestLink | None = None
        self.partition_id: str | None = None
        self.running_since: float | None = None
        self.paused_total = 0.0
        self.paused_since: float | None = None
        self.last_beat: float | None = None
        self.heartbeat_lost = False        # the heartbeat watchdog fired with no fresh beat
        self.heartbeat = "NoContact"
        self.exit_reason: str | None = None
        self.error: dict | None = None
        self.peer: bytes | None = None
        self.waiters: list = []            # requests answered when the VM reaches Running
        self.stop_request = None           # (req, deadline, force) of a graceful stop
        self.expected_guest_exit = False
        self.done = False
        self.boot_deadline = time.monotonic() + BOOT_DEADLINE
        self.services = None               # VirtualDevices: VMBus, integration services, COM ports
        self.console_log = None            # RotatingFile of console.log, opened at the first output
        self.save_request = None           # (req, deadline, path) while the guest quiesces
        self.frozen = False                # the partition is suspended (SIGSTOP + freezer)
        self.memory_path: str | None = None
        self.tick_due = 0.0                # when the loop next runs the devices' tick

    # --- status -----------------------------------------------------------------------------
    def status(self) -> dict:
        values = {"vm_id": self.vm_id, "state": self.state.value, "worker_pid": os.getpid(),
                  "guest_pid": self.guest_pid, "partition_id": self.partition_id,
                  "running_since": self.running_since, "paused_total": self.paused_total,
                  "paused_since": self.paused_since, "heartbeat": self.heartbeat,
                  "exit_reason": self.exit_reason, "error": self.error,
                  "sandbox_uid": self.sandbox.get("uid"), "sandbox_slot": self.sandbox_slot,
                  "isolation_mode": self.sandbox.get("mode")}
        return {key: values[key] for key in STATUS_KEYS}   # KeyError if the defs grew a key

    def notify(self) -> None:
        if self.peer is not None:
            self.server.notify(self.peer, NOTIFY_STATUS, self.status())

    def set_state(self, state: VmState) -> None:
        if state != self.state:
            self.log.info("state_changed", old=self.state.value, new=state.value)
            self.state = state
            self._update_heartbeat()
            self.notify()

    def _update_heartbeat(self) -> None:
        if self.state == VmState.Paused:
            hb = "Paused"
        elif self.state in (VmState.Running, VmState.Stopping) and self.services is not None \
                and not self.services.heartbeat_enabled():
            hb = "Disabled"
        elif self.state not in (VmState.Running, VmState.Stopping) or self.last_beat is None:
            hb = "NoContact"
        elif self._heartbeat_silent():
            hb = "LostCommunication"
        else:
            hb = "OkApplicationsUnknown"
        if hb != self.heartbeat:
            self.heartbeat = hb
            self.log.info("heartbeat", status=hb)
            if self.services is not None:   # beats are read lazily only while all is well
                self.services.heartbeat.set_lazy(hb == "OkApplicationsUnknown")
            self.notify()

    def _watchdog(self) -> bool:
        return self.services is not None and self.services.heartbeat.watchdog is not None

    def _heartbeat_silent(self) -> bool:
        """No beat for HEARTBEAT_LOST_AFTER: with the watchdog, it has fired (on_watchdog);
        without, by the last beat read."""
        if self._watchdog():
            return self.heartbeat_lost
        return time.monotonic() - self.last_beat > HEARTBEAT_LOST_AFTER

    def refresh_heartbeat(self) -> None:
        self._update_heartbeat()

    def next_due(self, now: float) -> float:
        """When the loop must next wake up with no event: the heartbeat's loss deadline, a
        stop, save or boot deadline, or a device's timer — never a fixed tick (issue 16)."""
        due = now + IDLE_WAIT
        if self.heartbeat == "OkApplicationsUnknown" and self.last_beat is not None \
                and not self._watchdog():   # with it, its timer is the deadline (a descriptor)
            due = min(due, heartbeat_lost_at(self.last_beat))
        # the devices' tick (timers, and a drain of every channel that bounds a lost wake-up)
        # runs when one of their timers is due or before the heartbeat could be called lost
        self.tick_due = min(due, self.services.next_deadline(now)) if self.services is not None else due
        if self.state in (VmState.Starting, VmState.Reset, VmState.Stopping) \
                or self.save_request is not None:
            # a transition in flight: a lost doorbell must not stall it (bounded as before)
            self.tick_due = min(self.tick_due, now + TRANSITION_TICK)
        if self.stop_request is not None:
            due = min(due, self.stop_request[1])
        if self.save_request is not None:
            due = min(due, self.save_request[1] + 0.001)
        if self.state in (VmState.Starting, VmState.Reset):
            due = min(due, self.boot_deadline + 0.001)
        if self.services is not None:
            due = min(due, self.services.next_deadline(now))
        return min(due, self.tick_due)

    # --- partition and guest --------------------------------------------------------------
    def create_partition(self, guest_pid: int):
        """Send create-partition (attaching the already forked guest in the same hypercall) and
        return a function that waits for its answer: the hypervisor's part — admission, guest
        RAM, the cgroup the guest moves into, whose migration waits for an RCU grace period —
        overlaps this worker's own set-up and the guest's sandbox (issue 16)."""
        cfg = self.config
        self.restore = cfg.pop("restore", None)   # a saved state: only the first boot uses it
        memory = dict(cfg.get("memory", {}))
        self.restore_meta = None
        if self.restore:
            self.restore_meta = meta = saved_state_file.read_meta(self.restore)
            if memory.get("dynamic"):   # a Dynamic Memory VM comes back with what it had
                memory["startup"] = min(max(int(meta["memory_size"]), memory.get("minimum", 0)),
                                        memory.get("maximum", meta["memory_size"]))
        return self.hv.begin(hc.CREATE_PARTITION, {
            "vm_id": self.vm_id, "name": self.name, "worker_pid": os.getpid(),
            "processor": cfg.get("processor", {}), "memory": memory, "guest_pid": guest_pid})

    def await_sandboxed(self, link: guest_link.GuestLink, guest_pid: int) -> None:
        """Wait (bounded) until the guest says it is in its sandbox; in Full isolation write the
        uid/gid maps of its user namespace then (sandbox.write_id_maps: this process is the
        host's root and the guest's parent). The guest runs nothing before `boot`."""
        deadline = time.monotonic() + SANDBOX_TIMEOUT
        while True:
            if any(msg.get("t") == "sandboxed" for msg in link.receive()):
                break
            left = deadline - time.monotonic()
            if link.closed:   # an outcome of the start, not an internal fault
                raise HvError("InvalidState", f"VM '{self.name}' stopped while starting: its "
                                              "guest exited while entering its sandbox")
            if left <= 0:
                raise HvError("Timeout", f"the guest of VM '{self.name}' did not enter its "
                                         f"sandbox within {SANDBOX_TIMEOUT:g} s")
            select.select([link.fileno()], [], [], left)
        sb = self.sandbox
        if sb.get("mode") == "Full":
            sandbox_calls.write_id_maps(guest_pid, sandbox_calls.id_maps(sb["uid"], sb["gid"]))

    def boot(self, guest_pid: int, link: guest_link.GuestLink, created=None) -> None:
        """Attach the (already forked) guest to its partition — `created` is the pending answer
        of create_partition(), or None to create it now — and tell it to boot."""
        self.guest_pid, self.link = guest_pid, link
        self.poller.register(link.fileno(), zmq.POLLIN)
        self.guest_fd = os.pidfd_open(guest_pid)
        self.poller.register(self.guest_fd, zmq.POLLIN)
        made = (created or self.create_partition(guest_pid))()
        self.partition_id = made["partition_id"]
        self.memory_path = made["memory_path"]
        self.frozen = False
        cfg, meta = self.config, self.restore_meta
        if meta is not None:
            fd = os.open(self.memory_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                saved_state_file.load_into(self.restore, meta, fd, made["memory_size"])
            finally:
                os.close(fd)
            self.log.info("restored_ram", path=self.restore, bytes=sum(n for _o, n in meta["segments"]))
        processor = cfg.get("processor", {})
        # the guest's own credential stays here: the guest can reach no hvemu socket, so its
        # hypercalls come over its link and go out with that credential (it speaks only for
        # its own partition), over this worker's connection to the hypervisor
        self.child_hv = self.hv.sharing(made["credential"], name="the hypervisor")
        self.await_sandboxed(link, guest_pid)
        # guest RAM reaches the guest as a descriptor, never a name
        ram = os.open(made["memory_path"], os.O_RDWR | os.O_CLOEXEC)
        try:
            link.send({"t": "boot", "program": cfg.get("guest", "idle"), "restore": bool(meta),
                       "vps": processor.get("count", 1),
                       "memory_size": made["memory_size"], "memory_map_size": made["memory_map_size"],
                       "dynamic_memory": bool(cfg.get("memory", {}).get("dynamic")),
                       "network": any(d.get("driver") == "netvsp" for d in cfg.get("devices") or [])},
                      [ram])
        finally:
            os.close(ram)
        self.restore_meta = None
        self.boot_deadline = time.monotonic() + BOOT_DEADLINE
        self.log.info("guest_booting", partition=self.partition_id, guest_pid=guest_pid)

    def kill_guest(self) -> None:
        """Pull the power: SIGKILL the guest's whole tree and reap it."""
        if self.guest_pid is None:
            return
        self.expected_guest_exit = True
        if self.frozen and self.partition_id is not None:
            # a task in a frozen cgroup (v1 freezer) holds SIGKILL pending: thaw first, or the
            # wait below never ends (turn-off of a Paused VM, the end of a save)
            try:
                self._freeze(False)
            except HvError as err:
                self.log.info("thaw_failed", error=err.message)
        members = process_tree.tree(self.guest_pid)
        process_tree.signal_pids(members, signal.SIGKILL)
        process_tree.continue_pids(members)
        self._reap_guest(block=True)

    def _reap_guest(self, block: bool) -> int | None:
        if self.guest_pid is None:
            return None
        try:
            pid, status = os.waitpid(self.guest_pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.guest_pid, 0
        if pid == 0:
            return None
        try:
            self.poller.unregister(self.guest_fd)
        except KeyError:
            pass
        os.close(self.guest_fd)
        if self.link is not None:
            self.poller.unregister(self.link.fileno())
            self.link.close()
            self.link = None
        self.guest_pid = None
        self.last_beat = None
        if self.services is not None:
            self.services.guest_gone()  # every channel of that guest ends
        return status

    def free_partition(self) -> None:
        if self.partition_id is not None:
            try:
                self.hv.call(hc.DELETE_PARTITION, {"partition_id": self.partition_id}, timeout=2.0)
            except HvError as err:
                self.log.info("partition_free_failed", error=err.message)  # it frees on our exit anyway
            self.partition_id = None

    def power_off(self, reason: str) -> None:
        self.kill_guest()
        self.free_partition()
        self.exit_reason = reason
        self.running_since = None
        self.set_state(VmState.Off)
        self.done = True

    # --- events from the guest --------------------------------------------------------------
    def on_guest_messages(self) -> None:
        for msg in self.link.receive() if self.link else ():
            kind = msg.get("t")
            if self.services is not None and self.services.on_guest_message(msg):
                continue  # VMBus: offers, opens, closes (heartbeats ride on their own channel)
            elif kind == "console":
                self.console_write(msg.get("data", b""))
            elif kind == "hypercall":
                self.relay_hypercall(msg)
            elif kind in ("halt", "shutdown-ack"):
                self.expected_guest_exit = True
                self.exit_reason = msg.get("reason", "guest shut down")
            elif kind == "saved" and self.save_request is not None:
                self.finish_save()
            elif kind == "save-refused" and self.save_request is not None:
                self.abort_save(HvError("InvalidState", f"VM '{self.name}' cannot be saved: "
                                                        f"{msg.get('reason')}"))

    def relay_hypercall(self, msg: dict) -> None:
        """A child-partition hypercall from the guest, sent with the guest's own credential (the
        hypervisor decides what it may do; a refusal goes back as it came)."""
        op, args = msg.get("op"), msg.get("args")
        reply = {"t": "hypercall-reply", "id": msg.get("id")}
        now = time.monotonic()
        if now - self.relay_window[0] >= 1.0:
            self.relay_window = [now, 0]
        self.relay_window[1] += 1
        if self.relay_window[1] > RELAY_PER_SECOND:   # a guest flooding its link slows only itself
            reply["error"] = {"code": "Busy", "message": "too many hypercalls"}
        elif not isinstance(op, str) or not isinstance(args, dict) or self.child_hv is None:
            reply["error"] = {"code": "BadRequest", "message": "bad hypercall"}
        else:
            try:
                reply["result"] = self.child_hv.call(op, args)
            except HvError as err:
                reply["error"] = {"code": err.code, "message": err.message}
        if self.link is not None:
            self.link.send(reply)

    def on_heartbeat(self, at: float | None = None) -> None:
        """A beat on the Heartbeat integration service's channel, written at `at` (the guest's
        monotonic clock, which is the host's; None: now). Beats are read lazily, at the loss
        deadline (worker/integration/heartbeat.py): a beat's own time, clamped to [the last
        beat, now], keeps the deadline where it would be had it been read at once."""
        first = self.last_beat is None
        now = time.monotonic()
        # the first beat (and any while the status is not OK) comes with a signal: read now
        self._beat_seen(now if first or at is None else max(self.last_beat, min(at, now)))
        if first:
            self.guest_ready()
        self._update_heartbeat()

    def _beat_seen(self, at: float) -> None:
        """The guest was alive at `at`: the watchdog fires HEARTBEAT_LOST_AFTER later unless
        the guest pushes it on (worker/integration/heartbeat.py)."""
        self.last_beat = at
        self.heartbeat_lost = False
        if self.services is not None:
            self.services.heartbeat.arm(heartbeat_lost_at(at))

    def on_watchdog(self) -> None:
        """The heartbeat watchdog fired: HEARTBEAT_LOST_AFTER without a beat pushing it on —
        unless a beat waits in the ring (a guest that only writes beats there)."""
        if not self.services.heartbeat.fired():
            return
        self.services.drain_heartbeat()       # a fresh beat re-arms it (on_heartbeat)
        if self.services.heartbeat.settle(self.last_beat, time.monotonic(), IDLE_WAIT):
            self.heartbeat_lost = True
        self._update_heartbeat()

    def guest_ready(self) -> None:
        """The guest is up (its first heartbeat, or its VMBus contact without heartbeats)."""
        if self.state in (VmState.Starting, VmState.Reset):
            # what the start allocated lives as long as the VM: never traverse it again, and
            # collect from here on (the fork-server disabled collection for the start)
            gc.freeze()
            gc.enable()
            self.running_since = time.time()
            self.set_state(VmState.Running)
            for req in self.waiters:
                self.server.reply(req, self.status())
            self.waiters.clear()

    def console_write(self, data) -> None:
        if isinstance(data, bytes) and data and self.services is not None:
            self.services.console_output(data)  # COM1
        if isinstance(data, bytes) and data:
            if self.console_log is None:  # bounded and rotated: a chatty guest cannot fill the home
                self.console_log = RotatingFile(self.home.vm_dir(self.vm_id) / "console.log",
                                                CONSOLE_LOG_BYTES, CONSOLE_LOG_FILES, binary=True)
            self.console_log.write(data[-65536:])
            self.console_log.flush()

    def on_guest_exit(self) -> None:
        self.on_guest_messages()  # what the guest said before it went (halt, ...)
        if self.services is not None:
            self.services.tick(time.monotonic())  # ... and what is still in its rings
        status = self._reap_guest(block=True)
        if self.expected_guest_exit:
            reason = self.exit_reason or "guest shut down"
        elif status is not None and os.WIFSIGNALED(status):
            reason = f"guest crashed (vmmem killed by signal {os.WTERMSIG(status)})"
        else:
            reason = f"guest crashed (vmmem exited with status {os.waitstatus_to_exitcode(status or 0)})"
        self.log.info("guest_exited", reason=reason)
        self.free_partition()
        self.exit_reason = reason
        self.running_since = None
        if self.stop_request is not None:
            self.server.reply(self.stop_request[0], {"state": "Off"})
            self.stop_request = None
        # a guest that dies while starting or resetting is an outcome, not an internal fault
        self._fail_waiters(HvError("InvalidState", f"VM '{self.name}' stopped while starting: {reason}"))
        self.set_state(VmState.Off)
        self.done = True

    def _fail_waiters(self, err: HvError) -> None:
        for req in self.waiters:
            self.server.reply_error(req, err)
        self.waiters.clear()

    # --- ops from vmms ----------------------------------------------------------------------
    def op_attach(self, req):
        self.peer = req.peer
        return self.status()

    def op_stop(self, req):
        mode = req.args.get("mode", "shutdown")
        force = bool(req.args.get("force", False))
        timeout = req.args.get("timeout", STOP_TIMEOUT_DEFAULT)
        if mode not in ("shutdown", "turn-off") or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise HvError("BadRequest", "stop needs mode shutdown|turn-off and a positive timeout")
        if mode == "turn-off":
            begin(self.state, "turn-off", self.name)
            self.set_state(VmState.Stopping)
            self.power_off("turned off")
            self._fail_waiters(HvError("InvalidState", f"VM '{self.name}' was turned off"))
            return {"state": "Off"}
        if self.stop_request is not None:
            raise HvError("Busy", f"VM '{self.name}' is already shutting down")
        begin(self.state, "stop", self.name)
        if not self.services.shutdown_enabled():
            if not force:
                raise HvError("InvalidState", f"the Shutdown integration service of VM '{self.name}' "
                                              "is disabled; use --force or --turn-off")
            self.set_state(VmState.Stopping)
            self.power_off("turned off (the Shutdown integration service is disabled)")
            return {"state": "Off", "forced": True}
        if self.state == VmState.Paused:
            self._resume_partition()
        self.set_state(VmState.Stopping)
        self.services.request_shutdown("stop-vm", self._shutdown_accepted)
        self.stop_request = (req, time.monotonic() + float(timeout), force)
        return self.server_deferred

    def _shutdown_accepted(self) -> None:
        self.expected_guest_exit = True
        self.exit_reason = "guest shut down"

    def check_stop_deadline(self) -> None:
        if self.stop_request is None or time.monotonic() < self.stop_request[1]:
            return
        req, _, force = self.stop_request
        self.stop_request = None
        if force:
            self.power_off("turned off after the guest did not shut down in time")
            self.server.reply(req, {"state": "Off", "forced": True})
        else:
            self.services.cancel_shutdown()
            self.set_state(VmState.Running)
            self.server.reply_error(req, HvError(
                "Timeout", f"the guest of VM '{self.name}' did not shut down in time; "
                           "use --force to turn it off"))

    def op_suspend(self, req):
        begin(self.state, "suspend", self.name)
        self.set_state(VmState.Pausing)
        try:
            self._freeze(True)
        except HvError:
            self.set_state(VmState.Running)
            raise
        self.paused_since = time.time()
        self.set_state(result("suspend"))
        return self.status()

    def _freeze(self, frozen: bool) -> None:
        """suspend-/resume-partition, remembering which (kill_guest must thaw first)."""
        self.hv.call(hc.SUSPEND_PARTITION if frozen else hc.RESUME_PARTITION,
                     {"partition_id": self.partition_id})
        self.frozen = frozen

    def _resume_partition(self) -> None:
        self._freeze(False)
        if self.paused_since is not None:
            self.paused_total += time.time() - self.paused_since
            self.paused_since = None
        self._beat_seen(time.monotonic())  # the guest was frozen, not lost
        if self.services is not None:
            self.services.resumed()

    def op_resume(self, req):
        begin(self.state, "resume", self.name)
        self.set_state(VmState.Resuming)
        self._resume_partition()
        self.set_state(result("resume"))
        return self.status()

    def op_reset(self, req):
        begin(self.state, "reset", self.name)
        self.set_state(VmState.Reset)
        self.kill_guest()
        self.free_partition()
        self.expected_guest_exit = False
        self.paused_total, self.paused_since = 0.0, None
        pid, link = exec_guest(self.name, self.vm_id, self.sandbox)
        self.boot(pid, link)
        self.waiters.append(req)
        return self.server_deferred

    def op_set_guest(self, req):
        self.config["guest"] = req.args.get("guest", self.config.get("guest", "idle"))
        if self.link is not None:
            self.link.send({"t": "set-program", "program": self.config["guest"]})
        return {}

    def op_set_processor(self, req):
        self.config["processor"] = req.args.get("processor", {})
        if self.partition_id is not None:
            self.hv.call(hc.SET_PROCESSOR, {"partition_id": self.partition_id,
                                           "processor": self.config["processor"]})
        return {}

    def op_set_memory(self, req):
        self.config["memory"] = req.args.get("memory", {})
        if self.partition_id is not None:
            return self.hv.call(hc.SET_MEMORY, {"partition_id": self.partition_id,
                                               "memory": self.config["memory"]})
        return {}

    # --- save -------------------------------------------------------------------------------
    def op_save(self, req):
        path = req.args.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise HvError("BadRequest", "save needs an absolute path for the saved state")
        if self.save_request is not None:
            raise HvError("Busy", f"VM '{self.name}' is already saving")
        begin(self.state, "save", self.name)
        if self.link is None or self.memory_path is None:
            raise HvError("InvalidState", f"VM '{self.name}' has no guest to save")
        self.was_paused = self.state == VmState.Paused
        if self.was_paused:
            self._resume_partition()   # the guest must run to quiesce; suspended again after
        self.set_state(VmState.Saving)
        self.link.send({"t": "save"})
        self.save_request = (req, time.monotonic() + SAVE_QUIESCE_TIMEOUT, path)
        return self.server_deferred

    def abort_save(self, err: HvError) -> None:
        req, _deadline, _path = self.save_request
        self.save_request = None
        self.log.warning("save_failed", error=err.message)
        if self.link is not None:
            self.link.send({"t": "save-cancel"})
        if self.was_paused:
            self._freeze(True)
            self.paused_since = time.time()
        self.set_state(VmState.Paused if self.was_paused else VmState.Running)
        self.server.reply_error(req, err)

    def check_save_deadline(self) -> None:
        if self.save_request is not None and time.monotonic() > self.save_request[1]:
            self.abort_save(HvError("Timeout", f"the guest of VM '{self.name}' did not quiesce "
                                               "in time; the VM keeps running"))

    def finish_save(self) -> None:
        """The guest's state is in its RAM: freeze the partition, write RAM and device state,
        then end the partition (the worker exits with state Saved)."""
        req, _deadline, path = self.save_request
        started = time.monotonic()
        try:
            self._freeze(True)
            fd = os.open(self.memory_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                meta = {"vm_id": self.vm_id, "vm_name": self.name, "saved_at": time.time(),
                        "guest": self.config.get("guest", "idle"),
                        "memory": self.config.get("memory", {})}
                total = saved_state_file.write_vmrs(path, meta, fd, size)
            finally:
                os.close(fd)
        except (HvError, OSError) as exc:
            err = exc if isinstance(exc, HvError) else HvError(
                "Internal", f"writing the saved state of VM '{self.name}' failed: {exc}")
            try:
                self._freeze(False)
            except HvError:
                pass
            self.abort_save(err)
            return
        self.save_request = None
        self.log.info("saved", path=path, bytes=total, seconds=round(time.monotonic() - started, 3))
        self.kill_guest()                  # thaws first (the state is written: nothing is lost)
        self.free_partition()
        self.exit_reason = "saved"
        self.running_since = None
        self.set_state(VmState.Saved)
        self.server.reply(req, {"state": "Saved", "path": path, "bytes": total})
        self.done = True

    # --- the loop -----------------------------------------------------------------------------
    def await_attach(self, timeout: float = 3.0) -> None:
        """Serve requests (bounded) until vmms has attached and so seen the final status."""
        deadline = time.monotonic() + timeout
        while self.peer is None and time.monotonic() < deadline:
            if self.server.sock.poll(50):
                self.server.drain()

    def run(self, guest_pid: int, link: guest_link.GuestLink) -> None:
        self.zmq, self.server_deferred = zmq, DEFERRED
        ctx = self.zmq_ctx = zmq.Context()
        created: object = None
        try:  # the hypervisor first: its part of the start overlaps the rest of ours
            cred = self.home.root_credential_file.read_text().strip()
            self.hv = RpcClient(self.home.hypercall_endpoint, auth=cred, ctx=ctx, timeout=5.0,
                                name="the hypervisor")
            created = self.create_partition(guest_pid)
        except (HvError, OSError) as err:
            created = err
        old = os.umask(0o077)
        try:
            router = bind_router(ctx, self.home.worker_endpoint(self.vm_id))
        finally:
            os.umask(old)
        handlers: dict = {}   # bound from WORKER_OPS once the virtual devices exist
        self.server = RpcServer(router, handlers, self.log)
        self.poller = zmq.Poller()
        self.poller.register(router, zmq.POLLIN)
        rfd = signal_wakeup.install((signal.SIGTERM,))
        self.poller.register(rfd, zmq.POLLIN)
        self.services = VirtualDevices(self)
        handlers.update(bind_worker_ops(self, self.services, table=WORKER_OP_TABLE))
        hv_pid = read_pid(self.home.pidfile("hypervisor"))
        hv_fd = os.pidfd_open(hv_pid) if hv_pid else None
        if hv_fd is not None:
            self.poller.register(hv_fd, zmq.POLLIN)
        try:
            if isinstance(created, BaseException):
                raise created
            self.boot(guest_pid, link, created)
        except (HvError, OSError) as err:
            err = err if isinstance(err, HvError) else HvError("Unavailable", f"hypervisor: {err}")
            self.log.warning("start_failed", code=err.code, error=err.message)
            self.error = {"code": err.code, "message": err.message}
            self.power_off(f"start failed: {err.message}")
        gc.freeze()   # what start-up built lives as long as the worker: no collection walks it again
        while not self.done:
            wait = max(0.0, self.next_due(time.monotonic()) - time.monotonic())
            for sock, _ in self.poller.poll(int(wait * 1000) + (1 if wait else 0)):
                if sock is router:
                    self.server.drain()
                elif sock == rfd:
                    if signal_wakeup.stop_requested(rfd):
                        self.power_off("worker terminated")
                elif self.link is not None and sock == self.link.fileno():
                    self.on_guest_messages()
                elif sock == getattr(self, "guest_fd", None):
                    self.on_guest_exit()
                elif sock == hv_fd:
                    self.log.warning("hypervisor_gone")
                    self.partition_id = None  # nothing left to free: do not wait for an answer
                    self.power_off("the hypervisor stopped (host crash)")
                elif sock in self.services.fds:
                    self.services.fds[sock]()  # channels, driver hosts, COM ports
            if self.done:
                break
            now = time.monotonic()
            if now >= self.tick_due:
                self.services.tick(now)
            self._update_heartbeat()
            self.check_stop_deadline()
            self.check_save_deadline()
            if self.state in (VmState.Starting, VmState.Reset) and time.monotonic() > self.boot_deadline:
                self.error = {"code": "Timeout", "message": "the guest did not boot in time"}
                self._fail_waiters(HvError("Timeout", f"VM '{self.name}' did not boot in time"))
                self.power_off("the guest did not boot in time")
        self.services.close()
        if self.child_hv is not None:
            self.child_hv.close()
        if self.peer is None:
            self.await_attach()  # a start that failed: vmms must still learn why
        # let the final status and replies reach vmms; destroy closes every socket (a socket
        # left open would make term() wait forever)
        ctx.destroy(linger=500)


# which of (Worker, VirtualDevices) handles each worker op, checked once at import: in the
# fork-server's image, so a worker only binds (issue 16)
WORKER_OP_TABLE = worker_op_table(Worker, VirtualDevices)


def write_exit_status(home: Home, vm_id: str, status: dict) -> None:
    """Leave the final status in a file: vmms may notice the exit (pidfd) before ZeroMQ has
    delivered the same status, and must not take a clean stop for a crash."""
    path = home.worker_exit_file(vm_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def worker_main(launch: dict) -> None:
    """Entry of a vmwp forked by the fork-server (already in its own session); never returns."""
    vm_id, name = launch["vm_id"], launch["name"]
    setproctitle.setproctitle(f"vmwp {name} {vm_id}")
    home = Home.resolve(launch["home"])
    sandbox = guest_sandbox(home, name, launch.get("sandbox"))
    guest_pid, link = fork_guest(name, vm_id, sandbox)
    code = 0
    pidfile = PidFile(home.worker_pidfile(vm_id))
    try:
        pidfile.acquire()
        log = logging_setup.inherited(home.logs_dir, "vmwp")  # set up by the fork-server
        worker = Worker(home, vm_id, name, dict(launch["config"]), log, sandbox,
                        (launch.get("sandbox") or {}).get("slot"))
        worker.run(guest_pid, link)
        write_exit_status(home, vm_id, worker.status())
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
        try:
            os.kill(guest_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        pidfile.release()
        try:
            os.unlink(home.workers_dir / f"{vm_id}.sock")
        except OSError:
            pass
        os._exit(code)
