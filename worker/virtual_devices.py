"""A running VM's virtual devices, in its worker (Hyper-V's worker process hosts a VM's VDEVs
the same way): its VMBus (`HostBus`), the integration services' host side, the devices served
by parent-hosted drivers, and its COM ports — everything a VM has besides its partition.

`VirtualDevices` is owned by the `Worker` (worker/vmwp.py). It watches its own descriptors
through the worker's poller (`fds`: fd → callback), answers the worker ops that concern it
(its `op_*` methods, bound from worker/worker_defs.py `WORKER_OPS`), and is told when the guest
is gone. Configuration comes from the launch config vmms sends: `integration_services` {name: enabled}, `kvp_host` {key: value},
`devices` [{driver, instance_id, settings}], `com_ports` {"1": path, "2": path},
`driver_failures` {driver: reason}.
"""
from __future__ import annotations

from typing import Callable

from hypervisor.runtime.arg_checks import get_bool, get_int, get_map, get_str
from hypervisor.runtime.errors import HvError
from worker.comport import ComPort, check_path
from worker.integration.heartbeat import HeartbeatService
from worker.integration.ic_defs import (HEARTBEAT, NAMES, SHUTDOWN, check_key, check_value, enabled_services,
                                        service_name)
from worker.integration.kvp import KvpService
from worker.integration.shutdown import ShutdownService
from worker.integration.timesync import TimeSyncService
from worker.vmbus.driver_protocol import DriverState, check_driver_name, driver_state
from worker.vmbus.host_bus import VMBUS, HostBus


class VirtualDevices:
    def __init__(self, worker):
        self.worker = worker
        self.log = worker.log
        self.fds: dict[int, Callable[[], None]] = {}
        cfg = worker.config
        self.bus = HostBus(worker.vm_id, worker.name, worker.home, self.log, self._send_to_guest,
                           self._watch, self._unwatch)
        self.bus.on_contact = self._on_contact
        self.heartbeat = HeartbeatService(self.log, worker.on_heartbeat, lambda: worker.heartbeat,
                                          self._share_watchdog)
        if self.heartbeat.watchdog is not None:
            self._watch(self.heartbeat.watchdog, worker.on_watchdog)
        self.shutdown = ShutdownService(self.log)
        self.kvp = KvpService(self.log, cfg.get("kvp_host") or {})
        self.timesync = TimeSyncService(self.log)
        self.ics = {s.name: s for s in (self.heartbeat, self.shutdown, self.kvp, self.timesync)}
        self.enabled = enabled_services(cfg.get("integration_services"))
        for name, service in self.ics.items():
            if self.enabled[name]:
                self.bus.add_service(service)
        for dev in cfg.get("devices") or []:
            self.bus.add_device(dev["driver"], dev["instance_id"], dev.get("settings") or {})
        for driver, reason in (cfg.get("driver_failures") or {}).items():
            self.bus.driver_state(driver, DriverState.FAILED, reason)
        self.com: dict[int, ComPort] = {}
        for number, path in (cfg.get("com_ports") or {}).items():
            if path:
                try:
                    self._set_comport(int(number), path)
                except HvError as err:
                    self.log.warning("comport_unavailable", number=number, path=path, error=err.message)

    # --- plumbing ------------------------------------------------------------------------------
    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.fds[fd] = callback
        self.worker.poller.register(fd, self.worker.zmq.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.fds.pop(fd, None) is not None:
            try:
                self.worker.poller.unregister(fd)
            except KeyError:
                pass

    def _send_to_guest(self, msg: dict, fds: list[int]) -> bool:
        link = self.worker.link
        return link.send(msg, fds) if link is not None else False

    def _share_watchdog(self, fd: int) -> bool:
        """Hand the guest the heartbeat watchdog (worker/integration/heartbeat.py)."""
        return self._send_to_guest({"t": "watchdog"}, [fd])

    def drain_heartbeat(self) -> None:
        """Read whatever beats wait in the heartbeat ring (when the watchdog fired)."""
        self.bus.drain_service(self.heartbeat.offer.instance_id)

    def on_guest_message(self, msg: dict) -> bool:
        """A link message for VMBus (True) or not ours (False)."""
        if msg.get("t") != VMBUS:
            return False
        self.bus.on_guest_message(msg)
        return True

    def _on_contact(self) -> None:
        if not self.enabled[HEARTBEAT]:
            self.worker.guest_ready()  # without heartbeats, contact is the sign of life

    def heartbeat_enabled(self) -> bool:
        return self.enabled[HEARTBEAT]

    def shutdown_enabled(self) -> bool:
        return self.enabled[SHUTDOWN]

    def tick(self, now: float) -> None:
        self.bus.tick(now)
        for port in self.com.values():
            port.tick()

    def next_deadline(self, now: float) -> float:
        """When tick() next has work (the worker's loop sleeps until then or an event)."""
        due = self.bus.next_deadline(now)
        if any(port.out for port in self.com.values()):
            due = min(due, now + 0.05)   # a COM port client that could not take everything yet
        return due

    def guest_gone(self) -> None:
        self.bus.guest_gone()

    def close(self) -> None:
        self.bus.close()
        if self.heartbeat.watchdog is not None:
            self._unwatch(self.heartbeat.watchdog)
            self.heartbeat.close()
        for port in self.com.values():
            port.close()
        self.com.clear()

    # --- integration services ------------------------------------------------------------------
    def request_shutdown(self, reason: str, on_accepted: Callable[[], None]) -> None:
        """Ask the guest to shut down (the caller checked shutdown_enabled())."""
        def done(ok, body) -> None:
            if ok and isinstance(body, dict) and body.get("accepted"):
                on_accepted()
        self.shutdown.request_shutdown(reason, done)

    def cancel_shutdown(self) -> None:
        self.shutdown.cancel()

    def resumed(self) -> None:
        self.timesync.resync()

    def set_enabled(self, name: str, enabled: bool) -> None:
        name = service_name(name)
        if self.enabled[name] == enabled:
            return
        self.enabled[name] = enabled
        service = self.ics[name]
        if enabled:
            self.bus.add_service(service)
        else:
            self.bus.remove_service(service.offer.instance_id)
        self.worker.refresh_heartbeat()

    def describe_services(self) -> list[dict]:
        running = self.worker.guest_pid is not None
        out = []
        for name in NAMES:
            primary, secondary = self.ics[name].status(running) if self.enabled[name] else (None, None)
            out.append({"Name": name, "Enabled": self.enabled[name],
                        "PrimaryStatusDescription": primary, "SecondaryStatusDescription": secondary})
        return out

    # --- COM ports -------------------------------------------------------------------------------
    def _set_comport(self, number: int, path: str) -> None:
        old = self.com.pop(number, None)
        if old is not None:
            old.close()
        if path:
            self.com[number] = ComPort(number, path, self.log, self._console_input, self._watch,
                                       self._unwatch)

    def _console_input(self, data: bytes) -> None:
        link = self.worker.link
        if link is not None:
            link.send({"t": "console-in", "data": data})

    def console_output(self, data: bytes) -> None:
        port = self.com.get(1)
        if port is not None:
            port.write(data)

    # --- worker ops (bound by name from worker/worker_defs.py WORKER_OPS) ------------------------
    def op_get_integration_services(self, req):
        return self.describe_services()

    def op_get_devices(self, req):
        return self.bus.describe_devices()

    def op_kvp_get(self, req):
        pool = get_str(req.args, "pool", "guest")
        if pool not in ("guest", "host"):
            raise HvError("BadRequest", "pool must be guest or host")
        return dict(self.kvp.guest_pool if pool == "guest" else self.kvp.host_pool)

    def op_kvp_set(self, req):
        items = get_map(req.args, "items")
        self.kvp.set_items({check_key(k): check_value(v) for k, v in items.items()})
        return {}

    def op_kvp_remove(self, req):
        keys = req.args.get("keys")
        if not isinstance(keys, list):
            raise HvError("BadRequest", "keys must be a list")
        self.kvp.remove_keys([check_key(k) for k in keys])
        return {}

    def op_set_integration_service(self, req):
        self.set_enabled(get_str(req.args, "name", max_len=64), get_bool(req.args, "enabled"))
        return self.describe_services()

    def op_set_comport(self, req):
        number = get_int(req.args, "number", lo=1, hi=2)
        self._set_comport(number, check_path(get_str(req.args, "path", max_len=200)))
        return {}

    def op_add_device(self, req):
        driver = check_driver_name(get_str(req.args, "driver", max_len=32))
        instance = get_str(req.args, "instance_id", max_len=64)
        self.bus.add_device(driver, instance, get_map(req.args, "settings", {}))
        return {}

    def op_remove_device(self, req):
        self.bus.remove_device(get_str(req.args, "instance_id", max_len=64))
        return {}

    def op_driver_state(self, req):
        self.bus.driver_state(check_driver_name(get_str(req.args, "driver", max_len=32)),
                              driver_state(get_str(req.args, "state", max_len=32)),
                              get_str(req.args, "reason", "", max_len=1000))
        return {}

