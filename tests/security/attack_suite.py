"""The attack suite (DESIGN.md §9, issue 10): a hostile guest and a hostile driver plugin try to
reach what they were not handed. Used by tests/security/test_attacks.py and `scripts/attack`.

`run(home)` starts a host in `home`, a victim VM (a VHDX disk, heartbeats) and an attacker VM
whose `command:` program is tests/security/guest_attacks.py, plus a third-party driver
(`EVIL_PACKAGE`, pip-installed like any plugin: `install_evil_driver()`) on a device of the
attacker; then asks that driver for its attacks. It returns rows {source, attack, expected,
observed, ok} — ok = refused or confined — ending with the victim's state, heartbeat and disk,
and the host still serving. `table(rows)` prints them.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from hypervisor.partition_cgroup import MEMORY_OVERHEAD, PIDS_MAX
from hypervisor.runtime.paths import Home
from hypervisor.runtime.process_tree import tree
from hypervisor.runtime.sandbox import TMP_SIZE
from parent.client import Client
from parent.host_control import host_up, hv_client
from worker.vmbus.driver_client import DriverConnection

ROOT = Path(__file__).resolve().parents[2]
EVIL_PACKAGE = "hvemu-evil-driver"

EVIL_PYPROJECT = """
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "hvemu-evil-driver"
version = "0.6.6"
description = "a hostile third-party hvemu driver, for the attack suite"

[project.entry-points."hvemu.drivers"]
evil = "hvemu_evil:EvilDriver"

[tool.setuptools]
packages = ["hvemu_evil"]
"""

EVIL_MODULE = '''
"""A driver that attacks from its driver host: request {attack, target} -> {refused, observed}."""
import ctypes
import errno
import os
import signal
import socket

from parent.drivers.driver_api import Driver


def _connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    finally:
        s.close()


def _ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) == 0:
        return "attached"
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


ATTACKS = {
    "open-disk": lambda t: os.open(t, os.O_RDWR),
    "connect": _connect,
    "open-ram": lambda t: os.open(t, os.O_RDWR),
    "read-file": lambda t: open(t).read(),
    "signal": lambda t: os.kill(int(t), signal.SIGCONT),
    "proc-mem": lambda t: open(f"/proc/{int(t)}/mem", "rb").read(1),
    "ptrace": lambda t: _ptrace(int(t)),
}


class EvilDriver(Driver):
    version = "0.6.6"
    class_id = "evil"

    def request(self, channel, kind, body):
        try:
            result = ATTACKS[body["attack"]](body["target"])
            return {"refused": False, "observed": f"succeeded ({str(result)[:60]})"}
        except OSError as exc:
            return {"refused": True, "observed": errno.errorcode.get(exc.errno, str(exc.errno))}
'''


def _pip(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=180)


def install_evil_driver() -> None:
    src = Path(tempfile.mkdtemp(prefix="evil-driver"))
    (src / "pyproject.toml").write_text(EVIL_PYPROJECT)
    (src / "hvemu_evil").mkdir()
    (src / "hvemu_evil" / "__init__.py").write_text(textwrap.dedent(EVIL_MODULE))
    done = _pip("install", "--no-build-isolation", "--no-deps", "--no-index", "-q", str(src))
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)


def uninstall_evil_driver() -> None:
    _pip("uninstall", "-y", "-q", EVIL_PACKAGE)


def guest_program(params: dict) -> str:
    src = (Path(__file__).with_name("guest_attacks.py")).read_text()
    src = src.replace("PARAMS = {}   # replaced by the suite", f"PARAMS = {params!r}")
    blob = base64.b64encode(zlib.compress(src.encode(), 9)).decode()
    return f"command:python3 -c \"import zlib,base64;exec(zlib.decompress(base64.b64decode('{blob}')))\""


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _uid_processes(uid: int) -> list[int]:
    import psutil
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except Exception:  # noqa: BLE001 — gone meanwhile
            pass
    return out


def _timer_fds(pid: int) -> list[int]:
    """The timerfds `pid` holds: a guest's is its worker's heartbeat watchdog, found after its
    first beats (the worker sends it when the Heartbeat channel opens), within 5 s."""
    deadline = time.monotonic() + 5.0
    while True:
        fds = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[timerfd]":
                    fds.append(int(fd))
            except OSError:
                pass
        if fds or time.monotonic() > deadline:
            return fds
        time.sleep(0.05)


def run(home: Path, log=print) -> list[dict]:
    h = Home.resolve(home)
    host_up(h)
    c = Client(h, timeout=30.0)
    rows: list[dict] = []

    def row(source, attack, expected, observed, ok):
        rows.append({"source": source, "attack": attack, "expected": expected,
                     "observed": observed, "ok": bool(ok)})
    mode = c.call("get-vmhost")["IsolationMode"]
    log(f"isolation mode {mode}")
    vhdx = h.root / "victim.vhdx"
    c.call("new-vhd", path=str(vhdx), size_bytes=32 << 20)
    c.call("new-vm", name="victim", guest="idle", memory_startup_bytes=64 << 20)
    c.call("add-vmharddiskdrive", vm="victim", path=str(vhdx))
    c.call("start-vm", vm="victim")
    victim = c.call("get-vm", vms=["victim"])[0]
    disk_before = _sha(vhdx)
    hc = hv_client(h)
    parts = {p["vm_id"]: p for p in hc.call("list-partitions")}
    ram = parts.get(victim["Id"], {}).get("memory_path")
    hc.close()
    params = {"home": str(h.root), "cred": str(h.root_credential_file),
              "ctl": str(h.run_dir / "ctl.sock"), "hv": str(h.run_dir / "hv.sock"),
              "ram": ram or "/dev/shm/none", "vhdx": str(vhdx),
              "victim_guest": victim["GuestProcessId"], "victim_worker": victim["WorkerProcessId"],
              "victim_fds": sorted(int(f) for f in os.listdir(f"/proc/{victim['GuestProcessId']}/fd")),
              "victim_watchdog": _timer_fds(victim["GuestProcessId"]),
              "hypervisor": c.call("get-vmhost")["HypervisorProcessId"],
              "pids_max": PIDS_MAX, "tmp_limit_mib": TMP_SIZE >> 20,
              "memory_limit": (64 << 20) + MEMORY_OVERHEAD}
    c.call("new-vm", name="attacker", guest=guest_program(params), memory_startup_bytes=64 << 20)
    evil = any(d["Name"] == "evil" for d in c.call("get-vmhostdriver"))
    if evil:
        c.call("add-vmdevice", vm="attacker", driver="evil")
    c.call("start-vm", vm="attacker")
    attacker = c.call("get-vm", vms=["attacker"])[0]
    console = h.vm_dir(attacker["Id"]) / "console.log"
    _wait(lambda: console.exists() and "DONE" in console.read_text(errors="replace"), 120,
          "the guest attacks")
    expected = {"fork bomb": f"confined (pids.max {PIDS_MAX})",
                "heap grown past the assignment": "confined (memory limit = assignment + overhead)",
                "fill /tmp": f"confined (private tmpfs, {TMP_SIZE >> 20} MiB)",
                "fill /dev/shm": f"confined (private tmpfs, {TMP_SIZE >> 20} MiB)",
                "find the home in the `hypervisor <home>` title": "no host process visible"}
    for line in console.read_text(errors="replace").splitlines():
        if line.startswith("ATTACK "):
            a = json.loads(line[7:])
            row("guest", a["name"], expected.get(a["name"], "refused"), a["observed"], a["ok"])
    # `setsid sleep 45 &`: still in the partition while it runs, gone when it is turned off
    uid = attacker["SandboxUid"]
    if uid is not None:
        inside = set(tree(attacker["GuestProcessId"]))
        mine = _uid_processes(uid)
        escaped = [p for p in mine if p not in inside]
        c.call("stop-vm", vm="attacker", turn_off=True)
        left = _wait(lambda: _uid_processes(uid) == [] and ["none left"], 10, "the partition to end")
        row("guest", "`setsid sleep 45 &` to leave the partition",
            "stays in the partition; ends with stop-vm --turn-off",
            f"{len(mine)} processes of uid {uid}, {len(escaped)} outside the partition's tree; "
            f"after turn-off: {left[0]}", not escaped)
    else:
        row("guest", "`setsid sleep 45 &` to leave the partition", "stays in the partition",
            f"not checked (isolation {mode})", False)
    if evil:
        c.call("start-vm", vm="attacker")   # the evil driver's host serves the attacker's device
        conn = DriverConnection(str(h.drivers_dir / "evil.sock"))
        try:
            ch = conn.open_channel()
            for attack, target, what in (
                    ("open-disk", str(vhdx), "open a disk it does not serve"),
                    ("connect", str(h.run_dir / "hv.sock"), "make a hypercall (connect hv.sock)"),
                    ("connect", str(h.run_dir / "ctl.sock"), "reach vmms's control socket"),
                    ("connect", str(h.drivers_dir / "storvsp.sock"), "reach another driver's socket"),
                    ("open-ram", ram or "/dev/shm/none", "read a guest's RAM"),
                    ("read-file", str(h.root_credential_file), "read run/root.cred"),
                    ("signal", victim["GuestProcessId"], "signal another process (the victim's vmmem)"),
                    ("proc-mem", victim["WorkerProcessId"], "read /proc/<vmwp>/mem"),
                    ("ptrace", params["hypervisor"], "ptrace the hypervisor")):
                ans = ch.request("attack", {"attack": attack, "target": target})
                row("driver", what, "refused", ans.get("observed", repr(ans))[:60], ans.get("refused"))
        finally:
            conn.close()
    else:
        row("driver", "driver plugin attacks", "refused", f"{EVIL_PACKAGE} not installed", False)
    # the victim: state, heartbeat, data, and the host still serving
    time.sleep(1.0)
    after = c.call("get-vm", vms=["victim"])[0]
    row("check", "victim VM after every attack", "Running, heartbeat OK, same process",
        f"{after['State']}, {after['Heartbeat']}, pid {after['GuestProcessId']}",
        after["State"] == "Running" and after["Heartbeat"].startswith("Ok")
        and after["GuestProcessId"] == victim["GuestProcessId"])
    row("check", "victim holds its worker's heartbeat watchdog (the watchdog attack's target)",
        "a timerfd", f"{len(params['victim_watchdog'])} timerfd(s)", params["victim_watchdog"])
    c.call("stop-vm", vm="victim", turn_off=True)
    row("check", "victim's disk after every attack", "unchanged",
        "unchanged" if _sha(vhdx) == disk_before else "CHANGED", _sha(vhdx) == disk_before)
    info = c.call("get-vmhost")
    row("check", "host still serving", "get-vmhost answers", f"hypervisor pid {info['HypervisorProcessId']}",
        bool(info["HypervisorProcessId"]))
    c.close()
    return rows


def table(rows: list[dict]) -> str:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="hvemu attack suite")
    for col in ("from", "attack", "expected", "observed", "result"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["source"], r["attack"], r["expected"], r["observed"],
                  "refused/confined" if r["ok"] and r["source"] != "check" else ("ok" if r["ok"] else "FAILED"))
    console = Console(width=160, record=True)
    with console.capture() as cap:
        console.print(t)
    return cap.get()
