"""drvhost: the process that runs one parent-hosted driver (`drvhost <driver>`).

    python -m parent.drvhost --home HOME --driver NAME --vmms-fd N --parent PID

vmms starts one per loaded driver (parent/driver_supervisor.py) with fork+exec, a clean
environment and no descriptor but its status socket to vmms: it holds no hypervisor
credential, so a hypercall from it is refused (`attempt_hypercall` shows it), and it maps only
the ring memory of the channels workers hand it — never a guest's RAM.

It listens on `run/d/<driver>.sock` (SOCK_SEQPACKET) for workers (protocol in
worker/vmbus/driver_protocol.py), serves each channel's ring with the driver
(parent/drivers/driver_api.py), and reports `ready` and `stats` to vmms. A guest that breaks a
channel's protocol loses that channel only: it is logged (`protocol_error`), closed, and the
worker told (`failed`); everything else keeps working. It exits when vmms goes away or on
SIGTERM (the signal handler only wakes the loop).

One thread, one epoll loop (`ReadPoll`); every wait is bounded, and every channel is drained on each
periodic tick as well as on its doorbell.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import time
from dataclasses import dataclass, field

import setproctitle

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.logging_setup import configure
from hypervisor.runtime.packet_socket import close_fds, receive_messages, send_message
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import PidFile
from hypervisor.runtime.read_poll import MAX_EVENTS, ReadPoll
from parent.drivers import registry
from parent.drivers.driver_api import PENDING, DriverChannel, DriverContext, DriverError, DriverRefused
from worker.vmbus import driver_protocol as dp
from worker.vmbus import messages as m
from worker.vmbus.ring import PacketType, RingProtocolError
from worker.vmbus.frame_port import FramePort
from worker.vmbus.transport import ChannelEndpoint
from hypervisor.runtime.rpc_client import RpcClient
from hypervisor.runtime import sandbox as sb

TICK = 0.1
STATS_INTERVAL = 0.2
PR_SET_PDEATHSIG = 1


def attempt_hypercall(home: Home, op: str, args: dict | None = None) -> dict:
    """Call the hypervisor from this process with the credential it holds — none — and say
    what the process was given (names of its environment variables). A driver reaches it as
    `context.hypercall` (parent/drivers/driver_api.py `DriverContext`)."""
    seen = {"environment": sorted(os.environ)}
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:   # a sandboxed driver host cannot even reach the socket (DESIGN §9)
        probe.connect(home.hypercall_endpoint[len("ipc://"):])
    except OSError as exc:
        return {"ok": False, "code": "Unavailable",
                "message": f"the hypercall socket cannot be reached: {exc}", **seen}
    finally:
        probe.close()
    client = RpcClient(home.hypercall_endpoint, auth=None, timeout=2.0, name="the hypervisor")
    try:
        result = client.call(op, args or {})
        return {"ok": True, "result": repr(result)[:200], **seen}
    except HvError as err:
        return {"ok": False, "code": err.code, "message": err.message, **seen}
    finally:
        client.close()


def listen(home: Home, name: str) -> socket.socket:
    """Bind `run/d/<driver>.sock` (before the sandbox: the driver host keeps only the listening
    descriptor, it can reach no path of the home afterwards)."""
    path = home.driver_socket(name)
    try:
        os.unlink(path)  # we hold the pid-file lock: any socket file here is stale
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def enter_sandbox(home: Home, sandbox: dict) -> None:
    """The driver host's sandbox (DESIGN §9, hypervisor/runtime/sandbox.py): its own uid,
    no_new_privs, own mount/IPC namespaces (PID: forked into one), the home out of sight."""
    plan = sb.driver_plan(sandbox.get("mode") or "None", sandbox.get("uid"), sandbox.get("gid"),
                          hide=[str(home.root)])
    sb.apply(plan)


@dataclass
class WorkerConn:
    sock: socket.socket
    channels: dict[int, "Served"] = field(default_factory=dict)


@dataclass
class Served:
    conn: WorkerConn
    endpoint: ChannelEndpoint
    channel: object                       # DriverChannel
    port: FramePort | None = None         # frame_port drivers: the channel's frame path


class DriverHost:
    def __init__(self, home: Home, name: str, driver, vmms: socket.socket, log):
        self.home, self.name, self.driver, self.vmms, self.log = home, name, driver, vmms, log
        self.poll = ReadPoll()     # raw epoll: this loop is on every network frame's path
        self.conns: dict[int, WorkerConn] = {}
        self.running = True
        self.protocol_errors = 0
        self.next_stats = 0.0
        self.stats_dirty = True
        self.last_extra: dict | None = None

    # --- setup ---------------------------------------------------------------------------------
    def listen(self) -> socket.socket:
        return listen(self.home, self.name)

    def info(self) -> dict:
        d = self.driver
        return {"driver": self.name, "version": str(d.version), "class_id": d.class_id,
                "versions": list(d.protocol_versions), "ring_size": int(d.ring_size),
                "buffer_size": int(d.buffer_size)}

    # --- channels ------------------------------------------------------------------------------
    def _open(self, conn: WorkerConn, msg: dict, fds: list[int]) -> None:
        cid = msg.get("channel_id")
        try:
            if not isinstance(cid, int) or cid in conn.channels:
                raise HvError("BadRequest", f"bad or duplicate channel id {cid!r}")
            if msg.get("ring_size") != self.driver.ring_size:
                raise HvError("BadRequest", f"ring size {msg.get('ring_size')!r} is not the driver's "
                                            f"{self.driver.ring_size}")
            if msg.get("buffer_size", 0) != self.driver.buffer_size:
                raise HvError("BadRequest", f"buffer size {msg.get('buffer_size')!r} is not the "
                                            f"driver's {self.driver.buffer_size}")
            settings = msg.get("settings") if isinstance(msg.get("settings"), dict) else {}
            names = msg.get("files") if isinstance(msg.get("files"), list) else []
            if len(fds) != 3 + len(names) or not all(isinstance(n, str) for n in names):
                raise HvError("BadRequest", f"an open needs 3 channel descriptors and one per "
                                            f"file, got {len(fds)} for {len(names)} files")
            files = dict(zip(names, fds[3:]))
            owned, fds = fds[:3], fds[3:]   # the endpoint owns them now (it closes them if it fails)
            endpoint = ChannelEndpoint(owned, self.driver.ring_size, "host", self.driver.buffer_size)
        except (HvError, RingProtocolError, OSError) as err:
            close_fds(fds)
            send_message(conn.sock, {"t": dp.REFUSED, "channel_id": cid, "reason": str(err)})
            return
        channel = DriverChannel(self, cid, str(msg.get("vm_id")), str(msg.get("vm_name")),
                                str(msg.get("instance_id")), msg.get("version"), settings)
        channel.files = files
        served = Served(conn, endpoint, channel)
        try:
            try:
                self.driver.open(channel)
            finally:
                close_fds(list(channel.files.values()))   # what the driver did not take
                channel.files = {}
        except DriverRefused as exc:
            endpoint.close()
            send_message(conn.sock, {"t": dp.REFUSED, "channel_id": cid, "reason": str(exc)})
            return
        except Exception:
            self.log.exception("driver_open_failed", channel_id=cid, vm_id=channel.vm_id)
            endpoint.close()
            send_message(conn.sock, {"t": dp.REFUSED, "channel_id": cid,
                                     "reason": "the driver failed to open the channel"})
            return
        channel.endpoint = endpoint
        if self.driver.frame_port:
            channel.port = served.port = FramePort(endpoint)
        conn.channels[cid] = served
        self.poll.register(endpoint.fileno(), ("channel", served))
        send_message(conn.sock, {"t": dp.OPENED, "channel_id": cid})
        self.stats_dirty = True
        self.log.info("channel_opened", channel_id=cid, vm_id=channel.vm_id, instance_id=channel.instance_id)
        self._serve(served)

    def _close(self, served: Served, why: str) -> None:
        conn, cid = served.conn, served.channel.channel_id
        if conn.channels.pop(cid, None) is None:
            return
        self.poll.unregister(served.endpoint.fileno())
        served.endpoint.close()
        try:
            self.driver.close(served.channel)
        except Exception:
            self.log.exception("driver_close_failed", channel_id=cid)
        self.stats_dirty = True
        self.log.info("channel_closed", channel_id=cid, vm_id=served.channel.vm_id, why=why)

    def _serve(self, served: Served) -> None:
        """Drain one channel's incoming ring and answer every request in it."""
        ep, ch = served.endpoint, served.channel
        try:
            port = served.port
            if port is not None:
                # the frame path: one object, one loop over the ring (worker/vmbus/frame_port.py)
                frames = port.take_frames()
                if frames:
                    ch.requests += len(frames)
                    try:
                        self.driver.frames(ch, frames)
                    except RingProtocolError:
                        raise
                    except Exception:
                        self.log.exception("driver_frames_failed", channel_id=ch.channel_id)
                if port.control:
                    self._control(served, port.control)
                port.done()     # after the work: the doorbell's system call is off its path
                return
            if self.driver.raw_packets:
                self._packets(served, ep.receive(rearm=False))
                ep.rearm()      # after the work: the doorbell's system call is off its path
                return
            for packet in ep.receive():
                msg = m.decode(packet)
                if msg.is_completion:
                    continue
                if msg.expects_reply:
                    self._request(served, msg)
                else:
                    self._oneway(served, msg)
        except (RingProtocolError, HvError) as exc:
            reason = exc.message if isinstance(exc, HvError) else str(exc)
            self.protocol_errors += 1
            self.log.warning("protocol_error", channel_id=ch.channel_id, vm_id=ch.vm_id,
                             instance_id=ch.instance_id, reason=reason)
            self._close(served, "protocol error")
            send_message(served.conn.sock, {"t": dp.FAILED, "channel_id": ch.channel_id,
                                            "reason": reason[:500]})

    def _control(self, served: Served, packets: list) -> None:
        """A frame-port channel's packets other than frames, to the driver's packet()."""
        todo = packets[:]
        packets.clear()
        self._packets(served, todo)

    def _packets(self, served: Served, packets) -> None:
        """A raw driver's packets, each to its packet(), in one loop: this runs per network
        frame right after a wake-up with the caches cold, where every Python call costs
        microseconds, so nothing is called per packet but the driver."""
        ch, ep = served.channel, served.endpoint
        handle = self.driver.packet
        for packet in packets:
            ch.requests += 1
            try:
                answer = handle(ch, packet)
            except RingProtocolError:
                raise
            except Exception:
                self.log.exception("driver_packet_failed", channel_id=ch.channel_id)
                continue
            if answer is not None:
                ep.send_packet(PacketType.COMPLETION, answer, packet.txid)

    def _request(self, served: Served, msg: m.Message) -> None:
        ch = served.channel
        ch.requests += 1
        try:
            answer = self.driver.request(ch, msg.kind, msg.body)
        except DriverError as exc:
            answer = {"error": {"code": exc.code, "message": exc.message}}
        except Exception:
            self.log.exception("driver_request_failed", kind=msg.kind, channel_id=ch.channel_id)
            answer = {"error": {"code": "DriverFault", "message": f"driver {self.name} failed on {msg.kind!r}"}}
        if answer is PENDING:
            return
        if not isinstance(answer, dict):
            answer = {"error": {"code": "DriverFault", "message": f"driver {self.name} answered {type(answer).__name__}"}}
        served.endpoint.send_completion(msg.txid, msg.kind, answer)

    def _oneway(self, served: Served, msg: m.Message) -> None:
        try:
            self.driver.message(served.channel, msg.kind, msg.body)
        except Exception:
            self.log.exception("driver_message_failed", kind=msg.kind)

    # --- for DriverChannel ------------------------------------------------------------------------
    def _served(self, channel) -> Served | None:
        for conn in self.conns.values():
            served = conn.channels.get(channel.channel_id)
            if served is not None and served.channel is channel:
                return served
        return None

    def send_oneway(self, channel, kind: str, body: dict) -> None:
        served = self._served(channel)
        if served is not None:
            served.endpoint.send_oneway(kind, body)

    def send_packet(self, channel, type: int, payload, txid: int, flags: int) -> None:
        served = self._served(channel)
        if served is not None:
            served.endpoint.send_packet(type, payload, txid, flags)

    def buffer_of(self, channel) -> memoryview | None:
        served = self._served(channel)
        return served.endpoint.buffer if served is not None else None

    def send_completion(self, channel, txid: int, kind: str, body: dict) -> None:
        served = self._served(channel)
        if served is not None:
            served.endpoint.send_completion(txid, kind, body)

    # --- the driver's own descriptors (Driver.attach) -------------------------------------------
    def add_reader(self, fd: int, callback) -> None:
        self.poll.register(fd, ("driver", callback))

    def remove_reader(self, fd: int) -> None:
        self.poll.unregister(fd)

    def _from_vmms(self) -> None:
        msgs, closed = receive_messages(self.vmms, accept_fds=True)
        for msg in msgs:
            fds = msg.pop("fds", [])
            if msg.get("t") == dp.STOP:
                self.running = False      # monolithic model: vmms unloads the driver
            if msg.get("t") == dp.CONFIGURE and isinstance(msg.get("body"), dict):
                try:
                    self.driver.configure(msg["body"], fds)   # the driver owns the descriptors
                except Exception:
                    self.log.exception("driver_configure_failed")
            else:
                close_fds(fds)
        if closed:
            self.log.info("vmms_gone")
            self.running = False

    # --- workers ---------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            conn = WorkerConn(sock)
            self.conns[sock.fileno()] = conn
            self.poll.register(sock, ("worker", conn))
            send_message(sock, {"t": dp.HELLO, **self.info()})

    def _worker_readable(self, conn: WorkerConn) -> None:
        msgs, closed = receive_messages(conn.sock, accept_fds=True)
        for msg in msgs:
            fds = msg.pop("fds", [])
            kind = msg.get("t")
            if kind == dp.OPEN:
                self._open(conn, msg, fds)
                continue
            close_fds(fds)
            if kind == dp.CLOSE:
                served = conn.channels.get(msg.get("channel_id"))
                if served is not None:
                    self._close(served, "closed by the worker")
                send_message(conn.sock, {"t": dp.CLOSED, "channel_id": msg.get("channel_id")})
        if closed:
            for served in list(conn.channels.values()):
                self._close(served, "worker gone")
            self.poll.unregister(conn.sock)
            self.conns.pop(conn.sock.fileno(), None)
            conn.sock.close()

    # --- the loop ----------------------------------------------------------------------------------
    def _report(self, now: float) -> None:
        """Stats to vmms at most every STATS_INTERVAL, when channels or the driver's own
        figures (e.g. storvsp's bytes per VM, for measure-vm) changed."""
        if now >= self.next_stats:
            self.next_stats = now + STATS_INTERVAL
            try:
                extra = self.driver.stats()
            except Exception:
                extra = {}
            if not self.stats_dirty and extra == self.last_extra:
                return
            self.stats_dirty, self.last_extra = False, extra
            channels = sum(len(c.channels) for c in self.conns.values())
            send_message(self.vmms, {"t": dp.STATS, "channels": channels,
                                     "protocol_errors": self.protocol_errors,
                                     "driver": extra if isinstance(extra, dict) else {}})

    def serve(self, in_process: bool = False, listener: socket.socket | None = None) -> None:
        """The loop. `in_process`: a thread of the hypervisor (monolithic model), which keeps
        its own signals: the loop ends on `stop` from vmms or when the status channel closes."""
        listener = listener or self.listen()
        rfd = None
        if not in_process:
            rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(wfd)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: None)   # only wakes the loop
            self.poll.register(rfd, ("signal", None))
        self.poll.register(listener, ("listen", listener))
        self.poll.register(self.vmms, ("vmms", None))
        send_message(self.vmms, {"t": dp.READY, "pid": os.getpid(), **self.info()})
        self.log.info("drvhost_ready", **self.info())
        next_tick = time.monotonic() + TICK
        wait, handlers = self.poll.epoll.poll, self.poll.handlers
        try:
            while self.running:
                wake = min(next_tick, self.driver.next_deadline())
                for fd, _ in wait(max(0.0, wake - time.monotonic()), MAX_EVENTS):
                    handler = handlers.get(fd)
                    if handler is None:
                        continue     # unwatched by an earlier handler of this batch
                    what, obj = handler
                    if what == "channel":
                        self._serve(obj)
                    elif what == "driver":
                        obj()
                    elif what == "worker":
                        self._worker_readable(obj)
                    elif what == "listen":
                        self._accept(obj)
                    elif what == "vmms":
                        self._from_vmms()
                    elif what == "signal":
                        if any(b in (signal.SIGTERM, signal.SIGINT) for b in os.read(rfd, 64)):
                            self.running = False
                now = time.monotonic()
                if now >= wake:
                    self.driver.tick(now)
                if now >= next_tick:
                    next_tick = now + TICK
                    for conn in list(self.conns.values()):
                        for served in list(conn.channels.values()):
                            self._serve(served)   # bounds a lost wake-up
                self._report(now)
        finally:
            for conn in list(self.conns.values()):
                for served in list(conn.channels.values()):
                    self._close(served, "driver host stopping")
                conn.sock.close()
            listener.close()
            self.poll.close()
            try:
                os.unlink(self.home.driver_socket(self.name))
            except OSError:
                pass


def _load(name: str, home: Home, vmms: socket.socket, log):
    """The driver's instance, constructed with its `DriverContext`, or None (vmms was told why)."""
    context = DriverContext(name, log, hypercall=lambda op, a=None: attempt_hypercall(home, op, a))
    try:
        return registry.load(name)(context)
    except Exception as exc:  # third-party code: anything can happen while importing it
        message = exc.message if isinstance(exc, HvError) else f"{type(exc).__name__}: {exc}"
        log.exception("driver_load_failed", error=message)
        send_message(vmms, {"t": "error", "message": message[:500]})
        return None


def serve_in_process(home_root: str, name: str, vmms: socket.socket, log) -> None:
    """The monolithic driver model's driver host: this same loop in a thread of the hypervisor
    process (hypervisor/monolithic_drivers.py loads it by entry point, group
    `hvemu.driver_hosts`, name `in-process`). `vmms` is the status channel vmms opened to the
    hypervisor; the driver runs with everything the hypervisor holds."""
    name = dp.check_driver_name(name)
    home = Home.resolve(home_root)
    pidfile = PidFile(home.driver_pidfile(name))
    try:
        pidfile.acquire()
    except HvError as err:
        send_message(vmms, {"t": "error", "message": err.message[:500]})
        return
    try:
        driver = _load(name, home, vmms, log)
        if driver is not None:
            host = DriverHost(home, name, driver, vmms, log)
            driver.attach(host)
            host.serve(in_process=True)
    finally:
        pidfile.release()
        log.info("drvhost_stopped")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m parent.drvhost")
    ap.add_argument("--home", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--vmms-fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--sandbox", default="{}")
    args = ap.parse_args(argv)
    import sys
    sys.modules.setdefault("parent.drvhost", sys.modules[__name__])  # one module under -m too
    name = dp.check_driver_name(args.driver)
    setproctitle.setproctitle(f"drvhost {name}")
    # pid 1 of its PID namespace ignores a signal it has no handler for: until serve() installs
    # its own, SIGTERM (a restart, PDEATHSIG) ends it at once
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != args.parent:
        os._exit(1)  # vmms died before prctl took effect
    home = Home.resolve(args.home)
    vmms = socket.socket(fileno=args.vmms_fd)
    vmms.setblocking(False)
    log = configure(home.logs_dir, f"drvhost-{name}").bind(driver=name)
    pidfile = PidFile(home.driver_pidfile(name))
    try:
        pidfile.acquire()
    except HvError as err:
        log.error("drvhost_locked", error=err.message)
        raise SystemExit(2)
    try:
        import json
        listener = listen(home, name)
        try:   # never run a driver unconfined when the host is meant to confine it
            enter_sandbox(home, json.loads(args.sandbox))
        except (OSError, ValueError) as exc:
            log.error("drvhost_sandbox_failed", error=str(exc))
            send_message(vmms, {"t": "error", "message": f"sandbox: {exc}"[:500]})
            raise SystemExit(4)
        driver = _load(name, home, vmms, log)
        if driver is None:
            raise SystemExit(3)
        host = DriverHost(home, name, driver, vmms, log)
        driver.attach(host)
        host.serve(listener=listener)
    finally:
        try:
            pidfile.release()
        except OSError:
            pass   # out of the sandbox's sight: the next host takes the lock over
        log.info("drvhost_stopped")


if __name__ == "__main__":
    main()

