"""A host for one benchmark run: started in a short temporary home, always torn down.

    from bench_host import BenchHost, run_benchmark
    host = BenchHost(host_memory="4GB", root_reserve="256MB")
    code = run_benchmark(host, lambda: measure(host))   # the body calls host.up() first

`BenchHost` runs `hvctl host up` in `/tmp/hvbXXXXXXXX` (short: ipc paths are limited to ~107
bytes), talks to vmms with the client library, and remembers every process it sees — the
daemons, each VM's `vmwp` and `vmmem`, and any reference process the benchmark hands it with
`own()` — as `psutil.Process` objects, which keep the start time, so a reused pid is never
killed. `close()` runs `hvctl host down`, then SIGCONT + SIGKILL to every remembered process
still alive and to anything whose command line names the home or one of its VM ids, sweeps
stale guest RAM from /dev/shm and removes the home.

`run_benchmark()` is the guard around a benchmark body: SIGTERM becomes an exception, so
teardown runs the same way on success, on error, on Ctrl-C and on `kill`; a second Ctrl-C
during teardown is ignored; on error the daemons' logs are copied to /tmp before the home goes.

Used by scripts/bench/cpu and scripts/bench/memory. Imports only the standard library, psutil
and rich at import time; hvemu modules are imported when needed.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
HVCTL = [sys.executable, "-m", "parent.cli"]
MIB = 1 << 20
progress = Console(stderr=True)


class Interrupted(Exception):
    """SIGTERM, turned into an exception so teardown runs as for Ctrl-C."""


class BenchHost:
    """A host in a short temporary home; see the module docstring."""

    def __init__(self, host_memory: str = "8GB", root_reserve: str | None = None,
                 prefix: str = "hvb", up_args: tuple[str, ...] = ()):
        self.home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.up_args = up_args
        self.host_memory, self.root_reserve = host_memory, root_reserve
        self.seen: dict[int, psutil.Process] = {}
        self.vm_ids: set[str] = set()
        self.client = None
        self.hypervisor: psutil.Process | None = None
        self.vmms: psutil.Process | None = None
        self.closed = False

    # --- driving it ---------------------------------------------------------------------------
    def hvctl(self, *args, timeout: float = 60.0) -> dict:
        proc = subprocess.run([*HVCTL, "--home", str(self.home), "--json", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"hvctl {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()} {proc.stdout.strip()}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def up(self) -> None:
        extra = ["--host-memory", self.host_memory]
        if self.root_reserve:
            extra += ["--root-reserve", self.root_reserve]
        info = self.hvctl("host", "up", *extra, *self.up_args)
        self.hypervisor = self.remember(info.get("HypervisorProcessId"))
        self.vmms = self.remember(info.get("VmmsProcessId"))
        if self.vmms is not None:
            for child in self.vmms.children():  # the worker fork-server
                self.remember(child.pid)
        from parent.client import Client
        self.client = Client(self.home, timeout=120.0)

    def call(self, op: str, **args):
        result = self.client.call(op, **args)
        self._note(result)
        return result

    def call_many(self, calls: list[tuple[str, dict]], errors: list[str] | None = None) -> list:
        """Pipelined calls. An error reply raises (after every reply is in), or, when `errors`
        is given, is appended to it as "op vm: code message" and left in its slot."""
        results = self.client.call_many(calls, timeout=120.0)
        for (op, args), r in zip(calls, results):
            if isinstance(r, Exception):
                message = f"{op} {args.get('vm', '')}: {getattr(r, 'code', '')} {r}"
                if errors is None:
                    raise RuntimeError(message)
                errors.append(message)
            else:
                self._note(r)
        return results

    def vm(self, name: str) -> dict:
        return self.call("get-vm", vms=[name])[0]

    def _note(self, result) -> None:
        for view in result if isinstance(result, list) else [result]:
            if isinstance(view, dict) and "Id" in view and "State" in view:
                self.vm_ids.add(view["Id"])
                self.remember(view.get("WorkerProcessId"))
                self.remember(view.get("GuestProcessId"))

    def remember(self, pid: int | None) -> psutil.Process | None:
        if pid and pid not in self.seen:
            try:
                self.seen[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                return None
        return self.seen.get(pid) if pid else None

    def own(self, popen: subprocess.Popen) -> subprocess.Popen:
        """A reference process the benchmark started: killed in close() if still alive."""
        self.remember(popen.pid)
        return popen

    # --- tearing it down ----------------------------------------------------------------------
    def _leftovers(self) -> None:
        home = re.escape(str(self.home))
        mine = re.compile(rf"(^|\s){home}(/|\s|$)")
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if mine.search(cmd) or any(i in cmd for i in self.vm_ids):
                self.seen.setdefault(proc.pid, proc)

    def close(self) -> None:
        """Tear down (idempotent): host down, kill leftovers by pid, sweep /dev/shm, rm home."""
        if self.closed:
            return
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        try:
            if self.client is not None:
                self.client.close()
                self.client = None
            if (self.home / "run").is_dir():
                try:
                    self.hvctl("host", "down", timeout=60)
                except Exception as exc:  # noqa: BLE001 — whatever happened, kill by pid below
                    progress.print(f"[yellow]host down failed: {exc}; killing leftovers by pid")
            self._leftovers()
            for proc in self.seen.values():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        proc.send_signal(signal.SIGCONT)
                        proc.kill()
                except psutil.NoSuchProcess:
                    pass
            for proc in self.seen.values():  # reap our own children (references), bounded
                try:
                    proc.wait(timeout=0.5)
                except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
                    pass
            try:
                from hypervisor.guest_memory import sweep_stale
                from hypervisor.runtime.paths import Home
                sweep_stale(Home.resolve(self.home).shm_prefix)
            except Exception:  # noqa: BLE001
                pass
            shutil.rmtree(self.home, ignore_errors=True)
            self.closed = True
        finally:
            signal.signal(signal.SIGINT, old)


def run_benchmark(hosts: BenchHost | list[BenchHost], body) -> int:
    """Run body() (which starts the hosts, and may close one early), always tear every host
    down; returns 0, 1 (error) or 130 (interrupted)."""
    hosts = hosts if isinstance(hosts, list) else [hosts]
    def on_term(*_):
        raise Interrupted()
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        body()
        return 0
    except (KeyboardInterrupt, Interrupted):
        progress.print("[yellow]interrupted; tearing the host down")
        return 130
    except Exception as exc:  # noqa: BLE001 — reported, logs kept, then teardown
        progress.print(f"[red]benchmark failed: {type(exc).__name__}: {exc}")
        for host in hosts:
            if (host.home / "logs").is_dir():
                kept = Path(tempfile.mkdtemp(prefix="hvb-logs-", dir="/tmp"))
                shutil.copytree(host.home / "logs", kept, dirs_exist_ok=True)
                progress.print(f"the daemons' logs of {host.home} are kept in {kept}")
        return 1
    finally:
        for host in hosts:
            host.close()
        signal.signal(signal.SIGTERM, old)


def wait_for(predicate, timeout: float, interval: float = 0.005, what: str = "condition"):
    """Poll predicate() until it returns something truthy; (value, seconds waited). Bounded."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while True:
        value = predicate()
        if value:
            return value, time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


def pct(samples: list[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (q in 0..100)."""
    s = sorted(samples)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("[green]meets" if ok else "[red]misses")
