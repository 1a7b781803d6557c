"""Layered fixtures: a temporary home → a running host → VMs. Integration tests start the real
daemons through `hvctl host up`, and clean up by pid; every wait is bounded (`wait_until`).
When a test fails, the daemons' logs are printed (pytest shows them with the failure)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from parent.client import Client
from hypervisor.runtime.pidfile import holder_pid
from hypervisor.guest_memory import sweep_stale
from hypervisor.runtime.paths import Home

ROOT = Path(__file__).resolve().parent.parent
HVCTL = [sys.executable, "-m", "parent.cli"]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value {last!r})")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Host:
    def __init__(self, home: Path):
        self.home = home
        self._client = None

    def hvctl(self, *args, check: bool = True, timeout: float = 60.0, input: str | None = None):
        """Run hvctl --json; returns (exit code, parsed stdout or raw text, stderr)."""
        proc = subprocess.run([*HVCTL, "--home", str(self.home), "--json", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT, input=input)
        try:
            out = json.loads(proc.stdout) if proc.stdout.strip() else None
        except json.JSONDecodeError:
            out = proc.stdout
        if check and proc.returncode != 0:
            raise AssertionError(f"hvctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc.returncode, out, proc.stderr

    @property
    def client(self):
        if self._client is None:
            self._client = Client(self.home, timeout=30.0)
        return self._client

    def call(self, op, **args):
        return self.client.call(op, **args)

    def vm(self, name) -> dict:
        return self.client.call("get-vm", vms=[name])[0]

    def new_vm(self, name, **args) -> dict:
        args.setdefault("memory_startup_bytes", 64 << 20)
        return self.client.call("new-vm", name=name, **args)

    def start(self, *names):
        res = self.client.call_many([("start-vm", {"vm": n}) for n in names])
        for r in res:
            if isinstance(r, Exception):
                raise r
        return res

    def pid_of(self, daemon: str) -> int | None:
        return holder_pid(self.home / "run" / f"{daemon}.pid")

    def processes(self) -> list[psutil.Process]:
        """Every live process that belongs to this home (daemons, workers, guests, their trees)."""
        ids = {p.name for p in (self.home / "vms").iterdir()} if (self.home / "vms").exists() else set()
        out = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if str(self.home) in cmd or any(i in cmd for i in ids):
                out.append(proc)
        return out

    def logs(self) -> str:
        text = []
        for f in sorted((self.home / "logs").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-40:]
            text.append(f"==== {f.name}\n" + "\n".join(lines))
        return "\n".join(text)

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


def short_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="hv", dir="/tmp"))


def kill_home(host: Host) -> None:
    for proc in host.processes():
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def start_host(home: Path, *extra) -> Host:
    host = Host(home)
    host.hvctl("host", "up", *extra)
    return host


def stop_host(host: Host, request=None) -> None:
    failed = request is not None and getattr(request.node, "rep_call", None) is not None \
        and request.node.rep_call.failed
    if failed:
        print(host.logs())
    host.close()
    try:
        host.hvctl("host", "down", check=False, timeout=60)
    finally:
        kill_home(host)
        sweep_stale(Home.resolve(host.home).shm_prefix)
        shutil.rmtree(host.home, ignore_errors=True)


@pytest.fixture
def home():
    path = short_home()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_host(request):
    """A running host in a fresh temporary home, torn down after the test."""
    h = start_host(short_home(), "--host-memory", "4GB", "--root-reserve", "256MB")
    yield h
    stop_host(h, request)


@pytest.fixture
def host(own_host):
    """The test's own host (`own_host`). A module whose tests need only a running host overrides
    `host` with `vm_host`; a test there that kills a daemon asks for `own_host`."""
    return own_host


DRIVER_MODELS = ("microkernel", "monolithic")


def host_in_model(request):
    """A host per driver model (`host up --driver-model`, request.param). Device and storage
    modules use it as their `host` fixture (`pytest.fixture(params=DRIVER_MODELS, name="host")`);
    a test marked `microkernel_only` (it is about drvhost processes) is skipped in monolithic."""
    if request.param != "microkernel" and request.node.get_closest_marker("microkernel_only"):
        pytest.skip("about drvhost processes, which the monolithic model does not have")
    h = start_host(short_home(), "--host-memory", "4GB", "--root-reserve", "256MB",
                   "--driver-model", request.param)
    h.driver_model = request.param
    yield h
    stop_host(h, request)


@pytest.fixture(scope="module")
def shared_host(request):
    """One host for a module of tests that do not disturb each other."""
    h = start_host(short_home(), "--host-memory", "4GB", "--root-reserve", "256MB")
    yield h
    stop_host(h)


@pytest.fixture
def vm_host(shared_host, request):
    """The module's shared host for one test that needs only a running host: the daemons are
    shared, the VMs are not — every VM the test made is removed (turned off first) afterwards.
    A test that kills or stops a daemon takes `host` (its own) instead."""
    yield shared_host
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(shared_host.logs())
    vms = shared_host.call("get-vm")
    done = shared_host.client.call_many([("remove-vm", {"vm": vm["Id"], "force": True}) for vm in vms])
    errors = [r for r in done if isinstance(r, Exception)]
    assert not errors, f"removing the test's VMs failed: {errors}"


os.environ.pop("HVEMU_HOME", None)
