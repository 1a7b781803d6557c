"""`hvctl host up` / `host down`: start and stop a host's daemons, idempotently, with bounded
waits. Daemons run detached (their own session) with stdout/stderr in `<home>/logs/*.out`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from hypervisor import driver_model
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.process_tree import is_zombie_or_gone
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid
from hypervisor.runtime.rpc_client import RpcClient
from parent.client import Client
from parent.config_store import write_atomic
from hypervisor.runtime import isolation
from parent.worker_supervisor import find_live_workers, signal_worker

START_WAIT = 20.0
STOP_WAIT = 20.0


def _spawn(home: Home, module: str, name: str, extra: list[str]) -> subprocess.Popen:
    out = open(home.logs_dir / f"{name}.out", "ab")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen([sys.executable, "-m", module, "--home", str(home.root), *extra],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, close_fds=True)


def _wait_ready(home: Home, proc: subprocess.Popen, name: str, ping) -> None:
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (home.logs_dir / f"{name}.out").read_text(errors="replace")[-1500:]
            raise HvError("Internal", f"{name} exited with status {proc.returncode} while starting:\n{tail}")
        if holder_pid(home.pidfile(name)):
            try:
                ping()
                return
            except HvError:
                pass
        time.sleep(0.02)
    raise HvError("Timeout", f"{name} did not answer within {START_WAIT:g} s; see {home.logs_dir}")


def hv_client(home: Home, timeout: float = 2.0):
    cred = home.root_credential_file.read_text().strip()
    return RpcClient(home.hypercall_endpoint, auth=cred, timeout=timeout, name="the hypervisor")


def _ping_hypervisor(home: Home) -> None:
    try:
        c = hv_client(home, timeout=0.5)
    except OSError:
        raise HvError("Unavailable", "no credential yet") from None
    try:
        c.call("ping")
    finally:
        c.close()


def _ping_vmms(home: Home) -> None:
    c = Client(home, timeout=0.5)
    try:
        c.call("ping")
    finally:
        c.close()


def _choose_driver_model(home: Home, wanted: str | None) -> str:
    """The model this host runs: the one kept in the home unless another is asked for, which
    is only possible while the host is down."""
    kept = driver_model.load(home)
    if wanted is None:
        return kept
    wanted = driver_model.parse(wanted)
    if wanted != kept and (holder_pid(home.pidfile("hypervisor")) or holder_pid(home.pidfile("vmms"))):
        raise HvError("InvalidState", f"this host runs the {kept} driver model; switching to {wanted} "
                                      "needs `hvctl host down` first")
    return wanted


HOST_SETTINGS = "host-memory.json"   # (host.json holds the driver model: hypervisor/driver_model.py)


def host_settings(home: Home, host_memory: int | None, root_reserve: int | None) -> dict:
    """The host's settings: what this `host up` was given, else what an earlier one was given
    (kept in the home), so a hypervisor restarted after a crash gets the same pool."""
    import json
    path = home.root / HOST_SETTINGS
    try:
        saved = json.loads(path.read_text())
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    settings = {"host_memory": saved.get("host_memory"), "root_reserve": saved.get("root_reserve")}
    given = {"host_memory": host_memory, "root_reserve": root_reserve}
    changed = {k: v for k, v in given.items() if v is not None and v != settings[k]}
    if changed:
        settings.update(changed)
        write_atomic(path, json.dumps(settings, sort_keys=True).encode())
    return {k: v for k, v in settings.items() if isinstance(v, int) and not isinstance(v, bool)}


def host_up(home: Home, host_memory: int | None = None, root_reserve: int | None = None,
            model: str | None = None) -> dict:
    home.ensure()
    model = _choose_driver_model(home, model)
    driver_model.save(home, model)
    settings = host_settings(home, host_memory, root_reserve)
    host_memory, root_reserve = settings.get("host_memory"), settings.get("root_reserve")
    started = []
    booted = False
    iso = None
    if not holder_pid(home.pidfile("hypervisor")):
        iso = isolation.choose()     # the host's isolation mode, uid range and cgroups (§9)
        isolation.save(home.run_dir, iso)
        extra = ["--driver-model", model]
        if host_memory:
            extra += ["--host-memory", str(host_memory)]
        if root_reserve is not None:
            extra += ["--root-reserve", str(root_reserve)]
        proc = _spawn(home, "hypervisor", "hypervisor", extra)
        _wait_ready(home, proc, "hypervisor", lambda: _ping_hypervisor(home))
        started.append("hypervisor")
        booted = True
    auto_started = []
    if not holder_pid(home.pidfile("vmms")):
        proc = _spawn(home, "parent.vmms", "vmms", ["--boot"] if booted else [])
        _wait_ready(home, proc, "vmms", lambda: _ping_vmms(home))
        started.append("vmms")
        if booted:
            auto_started = _auto_started(home)
    current = iso or isolation.load(home.run_dir)
    return {"Started": started, "AutoStarted": auto_started,
            "HypervisorProcessId": holder_pid(home.pidfile("hypervisor")),
            "VmmsProcessId": holder_pid(home.pidfile("vmms")), "Home": str(home.root),
            "DriverModel": driver_model.DISPLAY[model],
            "IsolationMode": current.mode,
            # what is not isolated, said once: when this call booted the host
            "NotIsolated": current.not_isolated() if iso is not None else []}


def _auto_started(home: Home) -> list[str]:
    """VMs vmms's boot actions started (AutomaticStartAction Start, or StartIfRunning for a VM
    that was running at host down): at host boot nothing else can have started them."""
    c = Client(home, timeout=5.0)
    try:
        return [vm["Name"] for vm in c.call("get-vm") if vm["State"] != "Off"]
    except HvError:
        return []
    finally:
        c.close()


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_zombie_or_gone(pid):  # init may take a while to reap an orphan
            return True
        try:  # our own child (tests start daemons through us): reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.02)
    return False


def _stop(pid: int, timeout: float) -> None:
    if not _wait_gone(pid, timeout):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if _wait_gone(pid, 3.0):
                return


def host_down(home: Home) -> dict:
    stopped = []
    vmms = holder_pid(home.pidfile("vmms"))
    if vmms:
        c = Client(home, timeout=STOP_WAIT)
        try:
            c.call("host-shutdown")
        except HvError:
            pass  # it may die before answering; the wait below is what counts
        finally:
            c.close()
        _stop(vmms, STOP_WAIT)
        stopped.append("vmms")
    for vm_id, pid in find_live_workers(home)[0].items():  # workers that outlived a dead vmms
        if signal_worker(home, vm_id, pid, signal.SIGKILL):
            _wait_gone(pid, 3.0)
    hv = holder_pid(home.pidfile("hypervisor"))
    if hv:
        try:
            c = hv_client(home)
            c.call("shutdown")
            c.close()
        except (HvError, OSError):
            pass
        _stop(hv, STOP_WAIT)
        stopped.append("hypervisor")
    return {"Stopped": stopped}
