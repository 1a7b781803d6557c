"""`hvctl web`: start the `hvweb <home>` process detached (like `host up` starts the daemons),
wait until it listens, and answer its URL and token; `--stop` ends it. Idempotent: a running
web manager is reported, not started twice. A port in use is a clear `AlreadyExists`.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.pidfile import holder_pid
from parent.web.server import info_path, token_path
from parent.web.server import port_in_use_message
from parent.host_control import _stop

START_WAIT = 15.0


def _pidfile(home: Home):
    return home.run_dir / "hvweb.pid"


def _info(home: Home, pid: int) -> dict | None:
    try:
        info = json.loads(info_path(home).read_text())
    except (OSError, ValueError):
        return None
    if info.get("ProcessId") != pid:
        return None
    info["Token"] = token_path(home).read_text().strip()
    info["TokenPath"] = str(token_path(home))
    return info


def _check_port(bind: str, port: int) -> None:
    """Refuse a port in use before starting a process (the process checks again when it binds)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as s:
        try:
            s.bind((bind, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise HvError("AlreadyExists", port_in_use_message(bind, port)) from None
            raise HvError("BadRequest", f"cannot listen on {bind}:{port}: {exc.strerror}") from None


def start(home: Home, port: int = 0, bind: str = "127.0.0.1") -> dict:
    home.ensure()
    pid = holder_pid(_pidfile(home))
    if pid:
        info = _info(home, pid)
        if info is not None:
            if port and info.get("Port") != port:
                raise HvError("AlreadyExists", f"the web manager of {home.root} already runs at "
                                               f"{info['Url']} (stop it with: hvctl web --stop)")
            return dict(info, Started=False)
    _check_port(bind, port)
    out = open(home.logs_dir / "hvweb.out", "ab")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    start_at = out.tell()
    proc = subprocess.Popen([sys.executable, "-m", "parent.web", "--home", str(home.root),
                             "--port", str(port), "--bind", bind],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env, close_fds=True)
    out.close()
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(home.logs_dir / "hvweb.out", "rb") as f:
                f.seek(start_at)
                tail = f.read().decode(errors="replace").strip().splitlines()
            line = next((ln for ln in reversed(tail) if ln.startswith("hvweb: ")), None)
            if line:
                code, _, message = line[len("hvweb: "):].partition(": ")
                raise HvError(code if code in ("AlreadyExists", "BadRequest") else "Internal", message)
            raise HvError("Internal", f"hvweb exited with status {proc.returncode}; see {home.logs_dir / 'hvweb.out'}")
        info = _info(home, proc.pid)
        if info is not None:
            return dict(info, Started=True)
        time.sleep(0.02)
    proc.kill()
    raise HvError("Timeout", f"hvweb did not start within {START_WAIT:g} s; see {home.logs_dir / 'hvweb.out'}")


def stop(home: Home, timeout: float = 10.0) -> dict:
    pid = holder_pid(_pidfile(home))
    if not pid:
        return {"Stopped": False}
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return {"Stopped": False}
    _stop(pid, timeout)
    return {"Stopped": True, "ProcessId": pid}
