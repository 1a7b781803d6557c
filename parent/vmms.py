"""vmms: the Virtual Machine Management Service of the parent partition (`vmms <home>`).

It keeps VM configurations (durable), answers the control socket, publishes events, and
launches and supervises one `vmwp` per running VM. It never runs a guest and never touches a
ledger: partitions are the hypervisor's, created by each VM's worker.

One thread, one loop over: the control ROUTER, each worker's DEALER and pidfd, the driver
hosts' descriptors, a signal pipe. Long operations (start, stop, reset) never block the loop:
their replies are deferred until the worker reports, each with a deadline. Killing vmms stops
no VM; a restarted vmms finds its workers again through their pid files (one asynchronous
attach per VM).

`Vmms` owns its collaborators from the start: the config store, the worker fork-server (made
by `main` before any ZeroMQ context), the sockets, the driver supervisor and the disk meter.
The control ops (parent/control/, one table) act on it only through its methods: `find`,
`lock` / `unlock`, `launch`, `save_config`, `add_vm` / `forget_vm`, `set_state`, `worker_call`,
`begin_host_shutdown` / `stop_serving`, `with_stats` (the hypervisor's figures, asynchronously:
parent/hypervisor_link.py), and the views. A control op that fails releases any lock it took
(`run_op`); one bad event in the loop is logged, never fatal; a stored configuration that
cannot be served is kept with its problem (`VmRecord.broken`, parent/config_checks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import time

import setproctitle
import zmq

from hypervisor import hypercall_defs as hc
from hypervisor.runtime import limits, signal_wakeup, wire
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.event_poller import EventPoller
from hypervisor.runtime.logging_setup import configure
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import PidFile, read_pid
from hypervisor.runtime.rpc_server import DEFERRED, Request, RpcServer, bind_router
from parent.config_checks import config_problem
from parent import saved_state
from parent.config_store import ConfigStore
from parent.config_writer import ConfigWriter
from parent.control import CONTROL_OPS
from parent.control.disk_ops import check_disks_for_start
from parent.disk_metering import DiskMeter
from parent.driver_supervisor import DriverSupervisor
from parent.drivers import registry
from parent.hypervisor_link import HypervisorLink
from parent.sandbox_ids import vm_sandbox   # (at start-up: imported in the first start it cost ~50 ms)
from parent.vm_devices import NETWORK_DRIVER, enabled_services, vm_devices
from parent.vm_record import VmRecord
from parent.worker_supervisor import ForkServer, WorkerHandle, find_live_workers, signal_worker
from worker.vm_state import VmState

WORKER_OP_TIMEOUT = 10.0


class Vmms:
    def __init__(self, home: Home, log, forkserver: ForkServer, boot: bool = False):
        self.home = home
        self.log = log
        self.forkserver = forkserver          # made before any ZeroMQ context (DESIGN.md §1)
        self._forkserver_watched: tuple[int | None, int | None] = (None, None)   # pid, its pidfd
        self.boot = boot                      # host boot: run automatic start actions
        self.store = ConfigStore(home)
        self.vms: dict[str, VmRecord] = {}
        self.by_fd: dict[int, VmRecord] = {}  # worker pidfd -> its VM
        self.socks: dict = {}                 # worker DEALER -> its VM
        self.fd_handlers: dict = {}           # fd -> callback (driver hosts: parent/driver_supervisor.py)
        self.running = True
        self.host_stopping = False            # host-shutdown: workers' exits keep was_running
        self._stats: tuple[float, dict] | None = None
        self._stats_waiters: list = []        # (req, build) waiting for fresh ledger figures
        self._stats_inflight = False
        self.hv_error: HvError | None = None  # the last ledger query's failure, if it failed
        self.subscriptions: set[bytes] = set()
        self.ctx = zmq.Context()
        old = os.umask(0o077)
        try:
            self.router = bind_router(self.ctx, self.home.control_endpoint)
            # XPUB: vmms sees each new subscription and confirms it (see client.EventStream)
            self.pub = self.ctx.socket(zmq.XPUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, 10000)
            # options are copied into the listener at bind: MAXMSGSIZE must come first
            self.pub.setsockopt(zmq.MAXMSGSIZE, limits.MAX_SUBSCRIPTION_BYTES)
            self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)   # a second subscriber to a topic is confirmed too
            self.pub.bind(self.home.events_endpoint)
        finally:
            os.umask(old)
        self.server = RpcServer(self.router, {name: (lambda req, op=op: self.run_op(op.handler, req))
                                              for name, op in CONTROL_OPS.items()}, self.log)
        self.poller = EventPoller()   # epoll: a poll costs what is ready, not one per VM (issue 16)
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.pub, zmq.POLLIN)
        self.drivers = DriverSupervisor(home, log, self.watch_fd, self.unwatch_fd,
                                        self.on_driver_state)
        self.disk_meter = DiskMeter()         # measure-vm's disk bytes, from the storage driver
        self.drivers.on_stats = self.disk_meter.observe
        self.hv = HypervisorLink(self.ctx, home, self.watch_fd, self.unwatch_fd)
        # the loop never waits on the disk for a start's config, nor on the fork-server for a
        # worker's pid: both answer through descriptors this poller watches (issue 16)
        self.writer = ConfigWriter(self.store)
        self.watch_fd(self.writer.fd, self.writer.on_readable)
        self.forkserver.attach_loop(self.watch_fd, self.unwatch_fd)

    # --- lookups ------------------------------------------------------------------------------
    def find(self, arg) -> VmRecord:
        if not isinstance(arg, str) or not arg:
            raise HvError("BadRequest", "argument 'vm' must be a VM name or Id")
        rec = self.vms.get(arg.lower())
        if rec is not None:
            return rec
        for rec in self.vms.values():
            if rec.name == arg:
                return rec
        lowered = [r for r in self.vms.values() if r.name.lower() == arg.lower()]
        if len(lowered) == 1:
            return lowered[0]
        raise HvError("NotFound", f"no VM named or with Id '{arg}'")

    def watch_fd(self, fd: int, callback) -> None:
        self.fd_handlers[fd] = callback
        self.poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        if self.fd_handlers.pop(fd, None) is not None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass

    def watch_forkserver(self) -> None:
        """A pidfd on the current fork-server: its death wakes the loop, which replaces it at
        once (no liveness poll, so an idle vmms sleeps; issue 16). Re-armed when a launch or
        the loop replaced it."""
        pid = self.forkserver.proc.pid
        if pid == self._forkserver_watched[0]:
            return
        old = self._forkserver_watched[1]
        if old is not None:
            self.unwatch_fd(old)
            os.close(old)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None   # gone already: the next housekeeping turn replaces it
        self._forkserver_watched = (pid, fd)
        if fd is not None:
            self.watch_fd(fd, self._forkserver_exited)

    def _forkserver_exited(self) -> None:
        self.forkserver.ensure()
        self.watch_forkserver()

    # --- a VM's lock and configuration -------------------------------------------------------
    def lock(self, rec: VmRecord, op: str, override: bool = False) -> None:
        """Take the VM's lock for `op`; Busy if another op holds it, unless `override` (turning
        off or removing a VM takes over from whatever was in progress)."""
        if rec.busy is not None and not override:
            raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}; try again")
        rec.busy = op

    def unlock(self, rec: VmRecord, op: str | None = None) -> None:
        """Release the VM's lock (only if `op` holds it, when `op` is given)."""
        if op is None or rec.busy == op:
            rec.busy = None

    def save_config(self, rec: VmRecord) -> None:
        """Save the VM's configuration durably before returning (the loop waits on the disk)."""
        self.writer.save(rec.config)

    def save_config_async(self, rec: VmRecord, done) -> None:
        """Save it off the loop: `done(err)` runs in the loop once it is durable (err None) or
        the write failed (parent/config_writer.py)."""
        self.writer.save_async(rec.config, done)

    def add_vm(self, rec: VmRecord) -> None:
        """A new VM: saved, then known."""
        self.save_config(rec)
        self.vms[rec.id] = rec
        self.publish(rec, "created")
        self.log.info("vm_created", vm_id=rec.id, vm_name=rec.name)

    def forget_vm(self, rec: VmRecord) -> None:
        """A removed VM (without a worker): its configuration deleted, then unknown."""
        self.writer.remove(rec.id)
        self.vms.pop(rec.id, None)
        self.publish(rec, "removed")
        self.log.info("vm_removed", vm_id=rec.id, vm_name=rec.name)

    # --- the host -----------------------------------------------------------------------------
    def begin_host_shutdown(self) -> None:
        """From now on a worker's exit is the host's doing: the VM keeps `was_running`."""
        self.host_stopping = True

    def stop_serving(self) -> None:
        """Leave the loop after this turn (replies already queued still go out)."""
        self.running = False

    # --- the hypervisor ---------------------------------------------------------------------
    STATS_MAX_AGE = 0.2  # CPUUsage is a one-second figure: a 200 ms old reading is as good
    HV_TIMEOUT = 1.0     # a hypercall from vmms; the loop never waits for it (HypervisorLink)

    def with_stats(self, req: Request, build, fresh: bool = False):
        """Answer `req` with `build(stats)` once the hypervisor's ledger figures per VM are at
        hand: from a brief cache (a burst of get-vm costs one hypercall) or after one
        asynchronous hypercall. The loop never waits: a hung hypervisor delays only these
        answers, by at most HV_TIMEOUT, and then they carry the last figures known and say so
        (`self.hv_error`); while it stays hung, answers come at once from that cache."""
        if not any(r.worker for r in self.vms.values()):
            return build({})
        now = time.monotonic()
        if not fresh and self._stats is not None and now - self._stats[0] < self.STATS_MAX_AGE:
            return build(self._stats[1])
        if self._stats_inflight and self.hv_error is not None and self.hv_error.code == "Timeout":
            return build(self._stats[1] if self._stats else {})  # still hung: the cache, flagged
        self._stats_waiters.append((req, build))
        if not self._stats_inflight:
            self._stats_inflight = True
            self.hv.call(hc.LIST_PARTITIONS, {"brief": True}, self._on_stats, self.HV_TIMEOUT)
        return DEFERRED

    def _on_stats(self, ok: bool, res) -> None:
        self._stats_inflight = False
        if ok and isinstance(res, list):
            self._stats = (time.monotonic(), {p["vm_id"]: p for p in res if isinstance(p, dict)})
            self.hv_error = None
        else:
            self.hv_error = res if isinstance(res, HvError) else HvError("Internal", "bad ledger reply")
            self.log.warning("hypervisor_query_failed", code=self.hv_error.code, error=self.hv_error.message)
        stats = self._stats[1] if self._stats else {}
        waiters, self._stats_waiters = self._stats_waiters, []
        for req, build in waiters:
            try:
                self.server.reply(req, build(stats))
            except HvError as err:
                self.server.reply_error(req, err)

    def hv_status(self) -> str:
        """How the hypervisor looked at the last query: Running, NotResponding or Stopped."""
        return self.hv.state if self.hv_error is not None else "Running"

    # --- events and state ---------------------------------------------------------------------
    def publish(self, rec: VmRecord, event: str, **payload) -> None:
        body = {"VMId": rec.id, "VMName": rec.name, "Event": event, "State": rec.state.value,
                "Time": time.time(), **payload}
        try:
            self.pub.send_multipart([f"vm.{rec.id}.{event}".encode(), wire.pack(body)])
        except Exception as exc:  # a slow subscriber must never stop the loop
            self.log.info("event_dropped", error=str(exc))

    def confirm_subscriptions(self) -> None:
        while True:
            try:
                frame = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":  # a new subscription to prefix frame[1:]
                if frame[1:] not in self.subscriptions and len(self.subscriptions) >= limits.MAX_SUBSCRIPTIONS:
                    self.log.warning("subscription_refused", limit=limits.MAX_SUBSCRIPTIONS)
                    continue  # not confirmed: the client's subscribe answers Timeout
                self.subscriptions.add(frame[1:])
                topic = frame[1:] + b"subscribed"
                self.pub.send_multipart([topic, wire.pack({"Event": "subscribed", "Time": time.time()})])
            elif frame[:1] == b"\x00":
                self.subscriptions.discard(frame[1:])

    def invalidate_stats(self) -> None:
        if self._stats is not None:  # stale now, but kept as the fallback for a hung hypervisor
            self._stats = (float("-inf"), self._stats[1])

    def set_state(self, rec: VmRecord, state: VmState, **payload) -> None:
        self.invalidate_stats()
        if rec.state != state:
            self.log.info("vm_state", vm_id=rec.id, vm_name=rec.name, old=rec.state.value, new=state.value)
            rec.state = state
            self.publish(rec, "state", **payload)

    # --- drivers ------------------------------------------------------------------------------
    def ensure_drivers(self, rec: VmRecord) -> None:
        """Load every driver the VM's devices need (a driver no longer installed is reported to
        the worker as failed, so the guest's device errors instead of waiting)."""
        for name in sorted({d["driver"] for d in vm_devices(rec)}):
            try:
                self.drivers.ensure(name)
            except HvError as err:
                self.log.warning("driver_unavailable", driver=name, vm_id=rec.id, error=err.message)

    def driver_failures(self, rec: VmRecord) -> dict[str, str]:
        """{driver: reason} for each driver the VM's devices need that cannot serve them."""
        wanted = {d["driver"] for d in vm_devices(rec)}
        if not wanted:
            return {}   # (reading the installed entry points costs ~4 ms: not on every start)
        out = {n: r for n, r in self.drivers.failures().items() if n in wanted}
        installed = registry.installed()
        for name in wanted - set(installed):
            out[name] = f"driver {name} is not installed"
        return out

    def on_driver_state(self, name: str, state: str, reason: str) -> None:
        """The driver supervisor's news (back, or failed), for the workers whose VMs use it."""
        if name == NETWORK_DRIVER and state == "Running":
            from parent.control.network_ops import push
            push(self)   # the switch host gets its switches and ports back before any channel
        for rec in self.vms.values():
            if rec.worker is not None and any(d["driver"] == name for d in vm_devices(rec)):
                rec.worker.send("driver-state", {"driver": name, "state": state, "reason": reason},
                                lambda ok, res: None, 5.0)

    # --- workers ----------------------------------------------------------------------------
    def launch(self, rec: VmRecord, on_failed=None) -> None:
        """Fork the VM's worker (after loading the driver hosts its devices need) and adopt it.

        Asynchronous: the launch is sent to the fork-server and the worker adopted at once (its
        DEALER connects before the worker binds); the pid and its pidfd follow with the
        fork-server's answer. A launch that cannot be sent raises HvError here; one that fails
        later (the fork-server died or hung twice, or refused) undoes the adoption and calls
        `on_failed(err)` (by default: the VM back to Off)."""
        self.ensure_drivers(rec)
        self.disk_meter.vm_started(rec.id)
        cfg = rec.config
        sandbox = vm_sandbox(self, rec)  # the partition's own uid (DESIGN §9)
        launch = {"vm_id": rec.id, "name": rec.name, "home": str(self.home.root), "sandbox": sandbox,
                  "config": {**{k: cfg[k] for k in ("guest", "processor", "memory")},
                             "integration_services": enabled_services(rec),
                             "kvp_host": dict(cfg.get("kvp_host") or {}),
                             "com_ports": dict(cfg.get("com_ports") or {}),
                             "devices": vm_devices(rec), "driver_failures": self.driver_failures(rec),
                             **saved_state.launch_config(self, rec)}}
        handle = WorkerHandle(self.ctx, self.home, rec.id, None, self.on_worker_status)
        handle.reserved_slots = () if sandbox["slot"] is None else (sandbox["slot"],)
        try:
            self.forkserver.launch(launch, lambda pid, err: self._launched(rec, handle, pid, err, on_failed))
        except BaseException:
            handle.close()
            raise
        self.adopt(rec, handle)

    def _launched(self, rec: VmRecord, handle, pid: int | None, err: HvError | None, on_failed) -> None:
        """The fork-server's answer to a launch: the worker's pid, or why there is none."""
        if rec.worker is not handle:   # not expected: the VM let go of this worker meanwhile
            if pid is not None:
                try:
                    handle.set_pid(pid)
                    handle.signal(signal.SIGKILL)
                    handle.close()
                except OSError:
                    pass
            return
        if err is None:
            try:
                handle.set_pid(pid)
            except OSError:   # it exited (and was reaped) before its answer was read
                err = self._early_exit_error(rec, pid)
        if err is None:
            self.watch_pidfd(rec, handle)
            if handle.status:   # what the worker said before its pid was known
                self.on_worker_status(handle, handle.status)
            return
        self.poller.unregister(handle.sock)
        self.socks.pop(handle.sock, None)
        rec.worker = None
        handle.fail_pending(err)
        handle.close()
        self.log.warning("worker_launch_failed", vm_id=rec.id, vm_name=rec.name, error=err.message)
        if on_failed is not None:
            on_failed(err)
        else:
            self.unlock(rec, "start-vm")
            self.set_state(rec, VmState.Off, Reason=err.message)

    def _early_exit_error(self, rec: VmRecord, pid: int) -> HvError:
        """Why a worker that is gone before vmms took its pidfd failed: its exit file's error."""
        exit_file = self.home.worker_exit_file(rec.id)
        try:
            error = json.loads(exit_file.read_text()).get("error")
        except (OSError, ValueError, AttributeError):
            error = None
        exit_file.unlink(missing_ok=True)
        if isinstance(error, dict):
            return HvError.from_wire(error)
        return HvError("Internal", f"the worker (pid {pid}) of VM '{rec.name}' exited at once; "
                                   "see the vmwp log")

    def watch_pidfd(self, rec: VmRecord, handle) -> None:
        self.by_fd[handle.pidfd] = rec
        self.poller.register(handle.pidfd, zmq.POLLIN)

    def adopt(self, rec: VmRecord, handle) -> None:
        rec.worker = handle
        if handle.pidfd is not None:
            self.watch_pidfd(rec, handle)
        self.poller.register(handle.sock, zmq.POLLIN, lazy=True)
        handle.sent = self.poller.touch
        self.socks[handle.sock] = rec
        handle.send("attach", {}, lambda ok, res: ok and self.on_worker_status(handle, res), 5.0)

    def on_worker_status(self, handle, status: dict) -> None:
        rec = self.vms.get(handle.vm_id)
        if rec is None or rec.worker is not handle:
            return
        handle.status = status
        if handle.pid is None:
            return   # taken up when the fork-server's answer gives its pid (`_launched`)
        try:
            state = VmState(status.get("state"))
        except ValueError:
            return
        if state in (VmState.Off, VmState.Saved):
            return  # the worker is about to exit; its exit finishes the VM
        self.set_state(rec, state, Heartbeat=status.get("heartbeat"))
        if state == VmState.Running:
            if rec.start_waiters and rec.busy in ("start-vm", "restart-vm"):
                self.unlock(rec)
            self.call_waiters(rec.start_waiters, None)

    def on_worker_exit(self, rec: VmRecord) -> None:
        handle = rec.worker
        handle.on_readable()  # replies still queued
        # The pidfd may fire before ZeroMQ delivered the final status: the worker also left it
        # in a file. No file and no final status = the worker died (a crash).
        exit_file = self.home.worker_exit_file(rec.id)
        if handle.status.get("state") not in ("Off", "Saved"):
            try:
                handle.status = json.loads(exit_file.read_text())
            except (OSError, ValueError):
                pass
        exit_file.unlink(missing_ok=True)
        status = handle.status
        reason = status.get("exit_reason") or "worker process exited"
        error = status.get("error")
        if status.get("state") not in ("Off", "Saved") and not error:
            reason = f"worker crashed ({reason})" if status.get("exit_reason") else "worker process exited unexpectedly"
        self.poller.unregister(handle.pidfd)
        self.poller.unregister(handle.sock)
        self.by_fd.pop(handle.pidfd, None)
        self.socks.pop(handle.sock, None)
        rec.worker = None  # before failing what was pending: a stop's callback sees it is done
        handle.fail_pending(HvError("InvalidState", f"VM '{rec.name}' turned off: {reason}"))
        handle.close()
        final, reason = saved_state.after_exit(self, rec, status, reason)
        rec.config["last_exit_reason"] = reason
        if not self.host_stopping:
            rec.config["was_running"] = False
        self.save_config(rec)
        crashed = "crash" in reason or "unexpectedly" in reason
        self.set_state(rec, final, Reason=reason)
        if crashed:
            self.publish(rec, "crashed", Reason=reason)
        err = HvError(error["code"], error["message"]) if error else \
            HvError("InvalidState", f"VM '{rec.name}' stopped while starting: {reason}")
        self.unlock(rec)
        self.call_waiters(rec.start_waiters, err)
        self.call_waiters(rec.exit_waiters, None)
        self.log.info("worker_exited", vm_id=rec.id, vm_name=rec.name, reason=reason)

    def reattach(self) -> None:
        live, stale = find_live_workers(self.home)
        for path in stale:
            path.unlink(missing_ok=True)
        for vm_id, pid in live.items():
            rec = self.vms.get(vm_id)
            if rec is None:  # an orphan: its VM was removed while vmms was away
                self.log.warning("orphan_worker_killed", vm_id=vm_id, pid=pid)
                signal_worker(self.home, vm_id, pid, signal.SIGKILL)
                continue
            try:
                handle = WorkerHandle(self.ctx, self.home, vm_id, pid, self.on_worker_status)
            except OSError:
                continue
            rec.state = VmState.Running  # provisional; the attach answer tells the truth
            self.adopt(rec, handle)
            self.ensure_drivers(rec)  # its devices' driver hosts (they exit with vmms)
            self.log.info("worker_reattached", vm_id=vm_id, vm_name=rec.name, pid=pid)

    def worker_call(self, rec: VmRecord, req: Request, op: str, args: dict,
                    answer=None, timeout: float = WORKER_OP_TIMEOUT) -> object:
        """Forward worker op `op` for client request `req`; the client's reply follows the
        worker's: `answer(worker's result)` (which may raise HvError), by default the VM's view,
        or the worker's error. Releases the VM's lock if `req.op` holds it."""
        if rec.worker is None:
            raise HvError("InvalidState", f"VM '{rec.name}' is not running")

        def done(ok: bool, res) -> None:
            self.unlock(rec, req.op)
            if not ok:
                self.server.reply_error(req, res)
                return
            if isinstance(res, dict) and res.get("vm_id") == rec.id and rec.worker is not None:
                # A reply that carries the worker's status is as fresh as its notifications: take
                # it, so a notification that went astray (another peer attached to the worker)
                # cannot leave a stale State or Uptime behind (issue 9's chaos finding).
                self.on_worker_status(rec.worker, res)
            try:
                self.server.reply(req, answer(res) if answer is not None else self.vm_view(rec, {}))
            except HvError as err:
                self.server.reply_error(req, err)
        rec.worker.send(op, args, done, timeout)
        return DEFERRED

    @staticmethod
    def call_waiters(waiters: list, err: HvError | None) -> None:
        pending = list(waiters)
        waiters.clear()
        for callback, _ in pending:
            callback(err)

    def answer(self, req: Request, rec: VmRecord):
        """A waiter callback that replies to a client: the VM's view, or the error."""
        def callback(err: HvError | None) -> None:
            if err is None:
                self.server.reply(req, self.vm_view(rec, {}))
            else:
                self.server.reply_error(req, err)
        return callback

    def expire_waiters(self) -> None:
        now = time.monotonic()
        for rec in self.vms.values():
            if rec.worker is not None:
                rec.worker.expire(now)
            for waiters, what in ((rec.start_waiters, "reach Running"), (rec.exit_waiters, "turn off")):
                for item in [w for w in waiters if w[1] <= now]:
                    waiters.remove(item)
                    self.unlock(rec)
                    item[0](HvError("Timeout", f"VM '{rec.name}' did not {what} in time"))
                    if what == "turn off" and rec.worker is not None:
                        rec.worker.signal(signal.SIGKILL)  # a hung worker: pull the cord

    # --- views --------------------------------------------------------------------------------
    def vm_view(self, rec: VmRecord, stats: dict) -> dict:
        if rec.broken is not None:
            return {"Name": rec.name, "Id": rec.id, "State": rec.state.value,
                    "Status": f"Error: the configuration cannot be served: {rec.broken}",
                    "Error": rec.broken, "WorkerProcessId": rec.worker.pid if rec.worker else None}
        cfg, st = rec.config, (rec.worker.status if rec.worker else {})
        part = stats.get(rec.id, {})
        unknown = rec.worker is not None and not part and self.hv_error is not None
        cpu, mem = part.get("cpu", {}), part.get("memory", {})
        uptime = 0.0
        if rec.worker and st.get("running_since"):
            end = st.get("paused_since") or time.time()
            uptime = max(0.0, end - st["running_since"] - (st.get("paused_total") or 0.0))
        heartbeat = st.get("heartbeat", "NoContact") if rec.worker else "NoContact"
        if rec.state == VmState.Paused:
            heartbeat = "Paused"
        return {
            "Name": rec.name, "Id": rec.id, "State": rec.state.value,
            "Status": self.status_sentence(rec, heartbeat),
            "CPUUsage": None if unknown else round(cpu.get("cpu_percent_last_second", 0.0)),
            "MemoryAssigned": None if unknown else (mem.get("assigned", 0) if rec.worker else 0),
            "MemoryDemand": None if unknown else ((mem.get("demand") or 0) if rec.worker else 0),
            "MemoryStartup": cfg["memory"]["startup"],
            "DynamicMemoryEnabled": cfg["memory"]["dynamic"],
            "ProcessorCount": cfg["processor"]["count"],
            # None while a reattached worker has not told its status yet: unknown, not 0
            "Uptime": None if rec.worker and not st else round(uptime, 3), "Heartbeat": heartbeat,
            "WorkerProcessId": rec.worker.pid if rec.worker else None,
            "GuestProcessId": st.get("guest_pid") if rec.worker else None,
            "SandboxUid": st.get("sandbox_uid") if rec.worker else None,
            "Guest": cfg["guest"],
            "AutomaticStartAction": cfg["automatic_start_action"],
            "AutomaticStopAction": cfg["automatic_stop_action"],
            "LastExitReason": cfg.get("last_exit_reason"),
            "HypervisorStatus": self.hv_status(),
        }

    def status_sentence(self, rec: VmRecord, heartbeat: str) -> str:
        if rec.worker is not None and self.hv_error is not None:
            age = time.monotonic() - self._stats[0] if self._stats and self._stats[0] > 0 else None
            since = f"figures from {age:.1f} s ago" if age is not None else "no figures yet"
            return f"Hypervisor {self.hv_status()}: {self.hv_error.message} ({since})"
        if rec.state == VmState.Off and rec.config.get("last_exit_reason", "") and \
                "crash" in rec.config.get("last_exit_reason", ""):
            return f"Stopped: {rec.config['last_exit_reason']}"
        if heartbeat == "LostCommunication":
            return "Lost communication with the guest"
        if rec.state in (VmState.Running,) and heartbeat == "NoContact":
            return "Operating normally (waiting for the guest's first heartbeat)"
        return "Operating normally"

    # --- host ---------------------------------------------------------------------------------
    def boot_actions(self) -> None:
        """Host boot: Start VMs set to Start, and StartIfRunning ones that were running."""
        for rec in self.vms.values():
            if rec.broken is not None:
                continue
            action = rec.config["automatic_start_action"]
            if rec.worker is None and (action == "Start" or (action == "StartIfRunning" and rec.config.get("was_running"))):
                try:
                    check_disks_for_start(self, rec)
                    self.lock(rec, "start-vm")
                    self.set_state(rec, VmState.Starting)
                    self.launch(rec)
                    self.unlock(rec)
                except HvError as err:
                    self.unlock(rec)
                    self.set_state(rec, VmState.Off)
                    self.log.warning("automatic_start_failed", vm_id=rec.id, error=err.message)

    def serve(self) -> None:
        rfd = signal_wakeup.install()
        self.poller.register(rfd, zmq.POLLIN)
        for config in self.store.load_all(self.log):
            rec = VmRecord(config=config, broken=config_problem(config))
            if rec.broken:  # kept and shown by get-vm with the error; never served
                self.log.error("config_unservable", vm_id=rec.id, error=rec.broken)
            self.vms[config["id"]] = rec
        self.reattach()
        if self.boot:
            self.boot_actions()
        next_expire = 0.0
        try:
            while self.running:
                wait = max(0.0, next_expire - time.monotonic())
                events = self.poller.poll(int(wait * 1000) + (1 if wait else 0))
                for sock, _ in events:
                    try:
                        self.dispatch(sock, rfd)
                    except Exception:  # one bad event must never take the daemon down
                        self.log.exception("loop_event_failed")
                now = time.monotonic()
                if events and next_expire > now + self.HOUSEKEEPING_BUSY and self.timers_pending():
                    next_expire = now + self.HOUSEKEEPING_BUSY   # an event set a deadline
                if now >= next_expire:
                    try:
                        self.expire_waiters()
                        self.hv.expire(now)
                        self.forkserver.expire(now)
                        self.forkserver.ensure()
                        self.watch_forkserver()
                        self.drivers.tick(now)
                    except Exception:
                        self.log.exception("loop_timer_failed")
                    # after the turn: what it started (a driver host) may have set a deadline
                    next_expire = now + (self.HOUSEKEEPING_BUSY if self.timers_pending()
                                         else self.HOUSEKEEPING_IDLE)
        finally:
            self.close()

    HOUSEKEEPING_BUSY = 0.1   # s between timer checks while a deadline is pending
    # s between them when nothing waits: nothing is due then (a dead fork-server wakes the loop
    # through its pidfd), so this only bounds the wait (issue 16: an idle host sleeps)
    HOUSEKEEPING_IDLE = 30.0

    def timers_pending(self) -> bool:
        """Anything with a deadline the housekeeping turn enforces: a call to the hypervisor or a
        worker, a start or stop waiter, a driver restarting or waited for."""
        if self.hv.pending or self.drivers.timers_pending() or self.forkserver.pending:
            return True
        return any(rec.start_waiters or rec.exit_waiters or (rec.worker is not None and rec.worker.pending)
                   for rec in self.vms.values())

    def dispatch(self, sock, rfd) -> None:
        """One readable socket or fd of the loop."""
        if sock is self.router:
            self.server.drain()
        elif sock == rfd:
            if signal_wakeup.stop_requested(rfd):
                self.running = False
        elif sock is self.pub:
            self.confirm_subscriptions()
        elif sock in self.by_fd:
            self.on_worker_exit(self.by_fd[sock])
        elif sock in self.socks:
            self.socks[sock].worker.on_readable()
        elif sock in self.fd_handlers:
            self.fd_handlers[sock]()

    def run_op(self, handler, req: Request):
        """Run a control op; if it fails, release any VM lock it took (a refused or failed op
        never leaves a VM busy)."""
        before = {rec.id: rec.busy for rec in self.vms.values()}
        try:
            return handler(self, req)
        except BaseException:
            for rec in self.vms.values():
                if rec.busy == req.op and before.get(rec.id) != req.op:
                    rec.busy = before.get(rec.id)
            raise

    def close(self) -> None:
        self.writer.close()   # what is pending written first (bounded)
        self.drivers.close()
        self.pub.close(0)
        self.router.close(0)
        for rec in self.vms.values():
            if rec.worker is not None:
                rec.worker.close()
        self.hv.close()
        self.ctx.term()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m parent.vmms")
    ap.add_argument("--home", required=True)
    ap.add_argument("--boot", action="store_true", help="host boot: run automatic start actions")
    args = ap.parse_args(argv)
    home = Home.resolve(args.home)
    setproctitle.setproctitle(f"vmms {home.root}")
    from hypervisor.runtime.sandbox import set_not_dumpable
    set_not_dumpable()  # no /proc/<pid>/mem, no ptrace: it holds the root credential
    os.umask(0o077)     # every file of the home is 0600, every folder 0700
    home.ensure()
    log = configure(home.logs_dir, "vmms")
    pidfile = PidFile(home.pidfile("vmms"))
    pidfile.acquire()
    forkserver = ForkServer(home)  # before any ZeroMQ context exists in this process
    vmms = Vmms(home, log, forkserver, boot=args.boot)
    log.info("vmms_started", hypervisor_pid=read_pid(home.pidfile("hypervisor")))
    try:
        vmms.serve()
    finally:
        forkserver.close()
        pidfile.release()
        log.info("vmms_stopped")


if __name__ == "__main__":
    main()
