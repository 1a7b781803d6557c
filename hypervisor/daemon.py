"""The hypervisor daemon: partition table, CPU scheduler, memory ledger, hypercall socket.

It governs CPU time and memory and nothing else (DESIGN.md §4): no device I/O ever reaches it —
except in the monolithic driver model (hypervisor/monolithic_drivers.py), which adds one thread
per driver loaded into it and maps every partition's RAM, to show what that costs.
One loop: an epoll poller (runtime/event_poller.py) over the hypercall socket, a signal
wake-up pipe and a pidfd per partition process (deaths are noticed at once). The loop sleeps
until the earlier of the next message, the next death, or the moment the scheduler says a CPU
budget can run out.
"""
from __future__ import annotations

import argparse
import dataclasses
import mmap
import os
import secrets
import signal
import time

import psutil
import setproctitle
import zmq

from hypervisor.runtime import isolation, process_tree, sandbox, signal_wakeup
from hypervisor import driver_model
from hypervisor.cpu_scheduler import CpuScheduler, ProcessorSettings, paced_wakeup
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.event_poller import EventPoller
from hypervisor.guest_memory import GuestMemory, sweep_stale
from hypervisor.ledger_history import LedgerHistory
from hypervisor.hypercalls import HYPERCALLS, authorize
from hypervisor.runtime.logging_setup import configure
from hypervisor.monolithic_drivers import MonolithicDrivers
from hypervisor.memory_ledger import GRANULE, MemoryLedger, MemorySettings
from hypervisor.partition_cgroup import PartitionCgroups
from hypervisor.partition_table import Partition, PartitionTable
from hypervisor.runtime.packet_socket import close_fds
from hypervisor.partition_probe import PartitionProbe
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import PidFile
from hypervisor.runtime.rpc_server import RpcServer, bind_router

DEFAULT_ROOT_RESERVE = 512 * 1024 * 1024
BALANCE_INTERVAL = 0.1
MIN_TICK = 0.004  # s; a budget may overrun by up to this × Count (repaid as debt)
QUIET_TICK = 1.0  # s between measurements while every partition idles (TickResult.quiet)


def _wait_stopped(pids: list[int], timeout: float) -> None:
    """Until every pid is stopped (state T) or gone, at most `timeout` s."""
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        still = []
        for pid in pending:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    data = f.read()
                if data[data.rindex(b")") + 2:].split()[0] not in (b"T", b"t", b"Z", b"X"):
                    still.append(pid)
            except OSError:
                pass
        pending = still
        if pending:
            time.sleep(0.001)


def default_host_memory() -> int:
    """Half the machine's RAM, in whole 2 MiB granules."""
    return psutil.virtual_memory().total // 2 // GRANULE * GRANULE


class Hypervisor:
    def __init__(self, home: Home, host_memory: int, root_reserve: int, period: float, log,
                 model: str = driver_model.MICROKERNEL):
        self.home = home
        self.driver_model = model
        self.drivers = None          # MonolithicDrivers in the monolithic model
        self._ram_maps: dict[str, mmap.mmap] = {}   # monolithic: every partition's RAM, mapped
        self.log = log
        self.pid = os.getpid()
        self.host_cpus = os.cpu_count() or 1
        self.partitions = PartitionTable()
        self.cpu = CpuScheduler(self.host_cpus, period=period, min_tick=MIN_TICK)
        self.memory = MemoryLedger(host_memory, root_reserve)
        self.running = True
        self.root_credential = secrets.token_hex(32)
        self._probes: dict[str, PartitionProbe] = {}  # partition id -> its process tree
        self._frozen: set[str] = set()  # stopped and read since: usage cannot change
        self._cpu_seen: dict[str, float] = {}  # partition id -> its last cumulative CPU reading
        self._rescanned_at: dict[str, float | None] = {}  # ... and that reading at its last rescan
        self._rescanned_tasks: dict[str, int | None] = {}  # ... and its task count then
        self._quiet = False      # the last tick was quiet (TickResult.quiet)
        self._outside_mark: tuple[float, float | None, float] | None = None
        self._outside = 0.0
        self._next_rescan = 0.0
        self._next_balance = 0.0
        self._wakeup = 0.0       # the next scheduler tick (monotonic); set by _tick and by changes
        self.history = LedgerHistory()   # get-ledger-history: the ledgers over the last 15 min
        self._next_history = 0.0
        self.isolation = isolation.load(home.run_dir)
        self.cgroups = PartitionCgroups(self.isolation.cgroup, home.shm_prefix[len("hvemu-"):-1], log)

    # --- partitions ---------------------------------------------------------------------------
    def create_partition(self, vm_id, name, worker_pid, processor: ProcessorSettings,
                         memory: MemorySettings, guest_pid: int | None = None) -> dict:
        if not psutil.pid_exists(worker_pid):
            raise HvError("BadRequest", f"worker process {worker_pid} does not exist")
        processor.validate(self.host_cpus)
        memory.validate()
        if vm_id in self.partitions.by_vm:
            raise HvError("AlreadyExists", f"VM {vm_id} already has a partition")
        self.cpu.check_admission(processor)
        part = self.partitions.create(vm_id, name, worker_pid)
        try:
            assigned = self.memory.admit(part.id, name, memory, time.monotonic())
            self._apply_assignments(self.memory.take_reclaimed())  # ballooned to make room
            part.memory = GuestMemory(assigned, self.home.shm_prefix)
            # the guest maps up to its maximum once; hot-add then needs no remapping
            map_size = min(memory.maximum if memory.dynamic else assigned, self.memory.capacity)
            part.memory.reserve_length(map_size)
            if self.driver_model == driver_model.MONOLITHIC and map_size:
                # a monolithic hypervisor's drivers can reach every guest's memory
                self._ram_maps[part.id] = mmap.mmap(part.memory.fileno(), map_size, mmap.MAP_SHARED)
            self.cpu.add(part.id, processor, time.monotonic())
            # tick within a period, not at once: a quiet host's long tick must not hide a new
            # partition, but a burst of starts shares its ticks (each measures every partition)
            self._wakeup = min(self._wakeup, time.monotonic() + self.cpu.period)
        except BaseException:
            self._unmap(part.id)
            self.memory.release(part.id)
            if part.memory is not None:
                part.memory.close()
            self.partitions.remove(part)
            raise
        fd = process_tree.pidfd(worker_pid)
        if fd is None:
            self.free_partition(part, "worker vanished")
            raise HvError("BadRequest", f"worker process {worker_pid} exited")
        self.partitions.watch(part, fd, "worker")
        self.poller.register(fd, zmq.POLLIN)
        self.history.add(part.id, time.time())
        self.log.info("partition_created", partition=part.id, vm_id=vm_id, vm_name=name,
                      memory=assigned, processor=processor.__dict__)
        if guest_pid is not None:
            try:
                self.attach_guest(part.id, guest_pid)
            except BaseException:
                self.free_partition(part, "its guest could not be attached")
                raise
        return {"partition_id": part.id, "credential": part.credential,
                "memory_path": part.memory.path, "memory_size": assigned,
                "memory_map_size": map_size}

    def attach_guest(self, partition_id: str, guest_pid: int) -> dict:
        part = self.partitions.get(partition_id)
        if part.guest_pid is not None:
            raise HvError("InvalidState", f"partition {part.id} already runs guest {part.guest_pid}")
        if process_tree.ppid_of(guest_pid) != part.worker_pid:
            raise HvError("Unauthorized", f"process {guest_pid} is not a child of partition "
                                          f"{part.id}'s worker {part.worker_pid}")
        fd = process_tree.pidfd(guest_pid)
        if fd is None:
            raise HvError("BadRequest", f"guest process {guest_pid} exited")
        try:  # bounds before the guest boots: everything it forks is inside
            self.cgroups.create(part.id, guest_pid, self.memory.assigned(part.id))
        except OSError as exc:
            close_fds([fd])
            raise HvError("Internal", f"cannot bound partition {part.id}: {exc}") from None
        part.guest_pid = guest_pid
        self.partitions.watch(part, fd, "guest")
        self.poller.register(fd, zmq.POLLIN)
        self._probes[part.id] = PartitionProbe(guest_pid)
        self.log.info("guest_attached", partition=part.id, vm_id=part.vm_id, guest_pid=guest_pid)
        return {}

    def free_partition(self, part: Partition, reason: str) -> None:
        if part.id not in self.partitions.by_id:
            return
        for fd in self.partitions.remove(part):
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
            close_fds([fd])
        if self.cpu.is_stopped(part.id) or part.suspended:
            process_tree.continue_pids(self._members(part.id))
        self.cgroups.remove(part.id)
        self.cpu.remove(part.id)
        self.memory.release(part.id)
        self._unmap(part.id)
        self.history.forget(part.id)
        if part.memory is not None:
            part.memory.close()
        probe = self._probes.pop(part.id, None)
        self._frozen.discard(part.id)
        self._cpu_seen.pop(part.id, None)
        self._rescanned_at.pop(part.id, None)
        self._rescanned_tasks.pop(part.id, None)
        if probe is not None:
            probe.close()
        self.log.info("partition_freed", partition=part.id, vm_id=part.vm_id, reason=reason)

    def _unmap(self, partition_id: str) -> None:
        ram = self._ram_maps.pop(partition_id, None)
        if ram is not None:
            try:
                ram.close()
            except BufferError:
                pass   # a driver still holds a view of it; it goes with the last reference

    def set_suspended(self, part: Partition, suspended: bool) -> dict:
        if part.guest_pid is None:
            raise HvError("InvalidState", f"partition {part.id} has no guest yet")
        part.suspended = suspended
        self.cpu.set_paused(part.id, suspended)
        if suspended:
            # stop synchronously (fresh /proc scan) so the reply means "really stopped"
            process_tree.signal_pids(self._probes[part.id].members, signal.SIGSTOP)
            new = self._probes[part.id].rescan()  # a member forked meanwhile: stop it too
            process_tree.signal_pids(new, signal.SIGSTOP)
        if self.cgroups.version is not None:
            # and the freezer: every process of the partition, even one forked between the
            # scan and the signal, stays stopped until resume thaws it (after the signals took
            # effect, bounded: a frozen task would hold its SIGSTOP pending)
            if suspended:
                _wait_stopped(self._probes[part.id].members, 0.2)
            self.cgroups.freeze(part.id, suspended)
        self._tick(time.monotonic(), rescan=False)
        return {"suspended": suspended}

    def set_processor(self, part: Partition, processor: ProcessorSettings) -> dict:
        processor.validate(self.host_cpus)
        self.cpu.update(part.id, processor)
        self._wakeup = 0.0       # a new cap or reserve is enforced from the next turn of the loop
        return {}

    def set_memory(self, part: Partition, memory: MemorySettings) -> dict:
        memory.validate()
        self.memory.update_settings(part.id, memory)
        self._balance(time.monotonic())
        return {"assigned": self.memory.assigned(part.id)}

    def report_memory_demand(self, part: Partition, demand: int) -> dict:
        self.memory.report_demand(part.id, demand)
        self._balance(time.monotonic())
        return {"assigned": self.memory.assigned(part.id)}

    # --- figures --------------------------------------------------------------------------------
    def host_info(self) -> dict:
        return {"pid": self.pid, "logical_processors": self.host_cpus,
                "memory_capacity": self.memory.capacity, "root_reserve": self.memory.root_reserve,
                "memory_available": self.memory.available_to_start,
                "memory_free": self.memory.available,
                "cpu_reserve_available": self.cpu.reserve_available_percent(),
                "partitions": len(self.partitions), "driver_model": self.driver_model,
                "isolation_mode": self.isolation.mode,
                "cgroup": self.cgroups.version, "sandbox_uid_base": self.isolation.uid_base or None}

    def partition_stats(self, part: Partition, brief: bool = False) -> dict:
        now = time.monotonic()
        out = part.describe()
        out["cpu"] = self.cpu.stats(part.id, periods=False)
        if brief:   # the ledgers only (list-partitions `brief`: what vmms's views show)
            mem = self.memory.stats(part.id, now)
            out["memory"] = mem
            return out
        out["processor"] = dataclasses.asdict(self.cpu.settings(part.id))
        out["memory_settings"] = dataclasses.asdict(self.memory.settings(part.id))
        mem = self.memory.stats(part.id, now)
        out["memory"] = {"assigned": self.memory.assigned(part.id),
                         "demand": self.memory.demand(part.id), **mem}
        out["memory_path"] = part.memory.path if part.memory is not None else None
        out["cgroup"] = self.cgroups.stats(part.id)
        return out

    def record_history(self) -> None:
        """One ledger sample per partition (every history interval, from the loop)."""
        cpu_totals, mem = self.cpu.totals, self.memory
        totals = {}
        for part in self.partitions:
            entitled, consumed, throttled = cpu_totals(part.id)
            totals[part.id] = (entitled, consumed, throttled,
                               mem.assigned(part.id), mem.demand(part.id) or 0)
        self.history.record(time.time(), totals)

    # --- the loop ---------------------------------------------------------------------------
    def _on_pidfd(self, fd: int) -> None:
        part = self.partitions.by_fd.get(fd)
        if part is None:
            return
        role = part.fds.get(fd, "process")
        self.free_partition(part, f"{role} exited")

    def _measure(self, rescan: bool) -> tuple[dict[str, float], dict[str, float]]:
        """Cumulative (CPU seconds, run-queue wait seconds) of every partition's tree.

        A partition the scheduler holds stopped is read once after it stopped (the signal's
        tail) and then skipped until it runs again or a rescan finds a new member: a stopped
        tree uses no CPU and waits on no run queue, and the scheduler keeps its last figures.
        """
        usage: dict[str, float] = {}
        waiting: dict[str, float] = {}
        is_stopped = self.cpu.is_stopped
        frozen = self._frozen
        task_count = self.cgroups.task_count
        quiet = self._quiet
        for pid, probe in self._probes.items():
            stopped = is_stopped(pid)
            # A tree that used no CPU since its last rescan cannot have forked (forking takes
            # CPU): skip its walk, so 200 idle partitions cost a pread each, not a walk each.
            # On a quiet host (nothing capped, reserved or held: nothing to enforce) an idle
            # guest's beats use CPU too, so there the walk waits for a sign that the tree
            # changed — its cgroup's task count moved or a member exited (issue 16). The CPU
            # rule takes over again at the first tick that is not quiet.
            seen = self._cpu_seen.get(pid)
            tasks = task_count(pid) if rescan and quiet and not probe.lost_member else None
            if tasks is not None:
                walk = tasks != self._rescanned_tasks.get(pid)
            else:
                walk = rescan and (seen is None or self._rescanned_at.get(pid, -1.0) != seen)
            if walk:
                self._rescanned_at[pid] = seen
                self._rescanned_tasks[pid] = tasks if tasks is not None else task_count(pid)
                new = probe.rescan()
                if new:
                    frozen.discard(pid)
                    part = self.partitions.by_id.get(pid)
                    if stopped or (part is not None and part.suspended):
                        process_tree.signal_pids(new, signal.SIGSTOP)  # no escape by forking
            if stopped:
                if pid in frozen:
                    continue
                frozen.add(pid)
            elif frozen:
                frozen.discard(pid)
            run, wait = probe.read()
            usage[pid] = self._cpu_seen[pid] = run
            waiting[pid] = wait
        return usage, waiting

    def _measure_outside_load(self, now: float, partitions_cpu: float) -> None:
        """CPU busy outside every partition (from /proc/stat), smoothed, for the scheduler."""
        busy = process_tree.host_busy_seconds()
        prev, self._outside_mark = self._outside_mark, (now, busy, partitions_cpu)
        if prev is None or busy is None or prev[1] is None or now - prev[0] < 0.05:
            return
        outside = ((busy - prev[1]) - (partitions_cpu - prev[2])) / (now - prev[0])
        self._outside = 0.7 * self._outside + 0.3 * max(0.0, outside)
        self.cpu.set_outside_load(self._outside)

    def _members(self, partition_id: str) -> list[int]:
        probe = self._probes.get(partition_id)
        return probe.members if probe is not None else []

    def _tick(self, now: float, rescan: bool) -> float:
        cpu0 = time.thread_time()
        usage, waiting = self._measure(rescan)
        if rescan:
            self._measure_outside_load(now, sum(self._cpu_seen.values()))
        result = self.cpu.tick(now, usage, waiting)
        for pid in result.stop:
            process_tree.signal_pids(self._members(pid), signal.SIGSTOP)
        for pid in result.cont:
            process_tree.continue_pids(self._members(pid))
        self._wakeup = max(result.next_wakeup, now + QUIET_TICK) if result.quiet else result.next_wakeup
        self._wakeup = paced_wakeup(self._wakeup, time.monotonic(), time.thread_time() - cpu0,
                                    self.cpu.tick_duty())
        self._quiet = result.quiet
        return self._wakeup

    def _balance(self, now: float) -> None:
        self._apply_assignments(self.memory.balance(now))

    def _apply_assignments(self, sizes: dict[str, int]) -> None:
        """Make guest RAM follow the ledger (shrinks come first in `sizes`)."""
        for pid, size in sizes.items():
            part = self.partitions.by_id.get(pid)
            if part is not None and part.memory is not None:
                part.memory.assign(size)
                if part.guest_pid is not None:
                    self.cgroups.set_memory(pid, size, reclaim=part.memory.reclaim)

    def serve(self, router) -> None:
        self.poller = EventPoller()   # epoll: a poll costs what is ready, not two per partition
        self.poller.register(router, zmq.POLLIN)
        rfd = signal_wakeup.install()
        self.poller.register(rfd, zmq.POLLIN)
        if self.driver_model == driver_model.MONOLITHIC:
            self.drivers = MonolithicDrivers(self.home, self.log)
            self.poller.register(self.drivers.fileno(), zmq.POLLIN)
        drivers_fd = self.drivers.fileno() if self.drivers is not None else None
        server = RpcServer(router, {name: (lambda req, h=h.handler: h(self, req))
                                    for name, h in HYPERCALLS.items()},
                           self.log, authorize=lambda req: authorize(self, req))
        period = self.cpu.period
        try:
            while self.running:
                next_wakeup = self._wakeup
                if self.memory.has_dynamic() or self.cgroups.pending:
                    next_wakeup = min(next_wakeup, self._next_balance)
                # the ledger history has no wake-up of its own: it samples at the scheduler's
                # ticks (every period, or every QUIET_TICK on a quiet host; issue 16)
                timeout = max(0.0, next_wakeup - time.monotonic())
                for sock, _ in self.poller.poll(int(timeout * 1000) + (1 if timeout else 0)):
                    if sock is router:
                        server.drain()
                    elif sock == rfd:
                        if signal_wakeup.stop_requested(rfd):
                            self.running = False
                    elif sock == drivers_fd:
                        self.drivers.accept()
                    else:
                        self._on_pidfd(sock)
                now = time.monotonic()
                if now >= self._wakeup:
                    rescan = now >= self._next_rescan
                    if rescan:
                        self._next_rescan = now + period
                    self._tick(now, rescan)
                    if not len(self.partitions):
                        self._wakeup = now + QUIET_TICK
                if now >= self._next_balance:
                    self._next_balance = now + BALANCE_INTERVAL
                    if self.memory.has_dynamic():   # static partitions keep Startup: nothing to do
                        self._balance(now)
                    if self.cgroups.pending:
                        self.cgroups.sweep()
                if now >= self._next_history:
                    self._next_history = now + self.history.interval
                    self.record_history()
        finally:
            if self.drivers is not None:
                self.drivers.close()
            for part in self.partitions:  # never leave anything stopped behind
                process_tree.continue_pids(self._members(part.id))
                self.free_partition(part, "hypervisor exiting")
            self.cgroups.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hypervisor")
    ap.add_argument("--home", required=True)
    ap.add_argument("--host-memory", type=int, default=0)
    ap.add_argument("--root-reserve", type=int, default=DEFAULT_ROOT_RESERVE)
    ap.add_argument("--period-ms", type=int, default=100)
    ap.add_argument("--driver-model", default=driver_model.MICROKERNEL, type=driver_model.parse)
    args = ap.parse_args(argv)
    home = Home.resolve(args.home)
    setproctitle.setproctitle(f"hypervisor {home.root}")
    sandbox.set_not_dumpable()  # no /proc/<pid>/mem, no ptrace: it holds the root credential
    os.umask(0o077)
    home.ensure()
    log = configure(home.logs_dir, "hypervisor")
    pidfile = PidFile(home.pidfile("hypervisor"))
    pidfile.acquire()
    hv = Hypervisor(home, args.host_memory or default_host_memory(), args.root_reserve,
                    args.period_ms / 1000, log, args.driver_model)
    swept = sweep_stale(home.shm_prefix)
    old = os.umask(0o077)
    ctx = zmq.Context()
    try:
        router = bind_router(ctx, home.hypercall_endpoint)
        cred = home.root_credential_file
        tmp = cred.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, hv.root_credential.encode())
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, cred)
    finally:
        os.umask(old)
    log.info("hypervisor_started", host_cpus=hv.host_cpus, capacity=hv.memory.capacity,
             root_reserve=hv.memory.root_reserve, swept_stale_memory=len(swept),
             driver_model=hv.driver_model)
    try:
        hv.serve(router)
    finally:
        router.close(0)
        ctx.term()
        home.root_credential_file.unlink(missing_ok=True)
        pidfile.release()
        log.info("hypervisor_stopped")
