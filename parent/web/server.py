"""The `hvweb <home>` process: the web manager's HTTP server (stdlib `ThreadingHTTPServer`,
127.0.0.1 by default).

Routes (reads need nothing; actions need the token from `<home>/web.token`, 0600, sent as
`X-Hvemu-Token` or `Authorization: Bearer`):

| route | answers |
|---|---|
| `GET /`, `GET /vm/<name>` | the single page (`page.html`); an unknown VM is 404 |
| `GET /api/state` | the feed's latest snapshot (host, VMs with sparkline series, driver hosts) |
| `GET /api/vms/<name>/history[?since=T]` | `get-vmhistory` for one VM (the charts' window) |
| `GET /api/events[?after=N]` | the event stream as Server-Sent Events (`id:` = sequence) |
| `POST /api/vms/<name>/<action>` | `start`, `stop`, `turn-off`, `pause`, `resume` |
| `GET /metrics` | Prometheus text (parent/web/metrics.py) |
| `GET /healthz` | `{"ok": true}` |

Errors are JSON `{"error": {"code", "message"}}` with an HTTP status from the error code
(NotFound 404, Unauthorized 401, BadRequest 400, InvalidState/Busy/… 409, Unavailable 503,
Timeout 504); never a traceback. The main thread only waits for a stop signal; the server
runs in one thread and each request in its own.
"""
from __future__ import annotations

import argparse
import errno
import hmac
import json
import os
import re
import secrets
import select
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from parent.web.metrics import make_registry
from parent.client import Client
from parent.web.metrics import render
from hypervisor.runtime import signal_wakeup
from hypervisor.runtime.logging_setup import configure
from hypervisor.runtime.pidfile import PidFile
from parent.web.feed import Feed

PAGE = Path(__file__).with_name("page.html")
ACTIONS = {"start": ("start-vm", {}), "stop": ("stop-vm", {}),
           "turn-off": ("stop-vm", {"turn_off": True}), "pause": ("suspend-vm", {}),
           "resume": ("resume-vm", {})}
STATUS = {"BadRequest": 400, "Unauthorized": 401, "NotFound": 404, "AlreadyExists": 409,
          "InvalidState": 409, "InsufficientMemory": 409, "InsufficientCpu": 409, "Busy": 409,
          "Timeout": 504, "Unavailable": 503, "DriverFault": 502, "Internal": 500}
SSE_WAIT = 15.0
ACTION_TIMEOUT = 45.0


def token_path(home: Home) -> Path:
    return home.root / "web.token"


def info_path(home: Home) -> Path:
    return home.run_dir / "hvweb.json"


def load_or_make_token(home: Home) -> str:
    """The action token, kept 0600 in the home (made on first use; a looser file is replaced)."""
    path = token_path(home)
    try:
        st = path.stat()
        text = path.read_text().strip()
        if st.st_mode & 0o077 == 0 and len(text) >= 32:
            return text
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


class WebApp:
    """What the handlers share: the home, the feed, the token, the metrics registry."""

    def __init__(self, home: Home, feed, token: str, log):
        self.home = home
        self.feed = feed
        self.token = token
        self.log = log
        self.registry = make_registry(feed)
        self.page = PAGE.read_bytes()

    def call(self, op: str, timeout: float, **args):
        c = Client(self.home, timeout=timeout)
        try:
            return c.call(op, **args)
        finally:
            c.close()

    def vm_exists(self, name: str) -> bool:
        if self.feed.find_vm(name) is not None:
            return True
        try:   # created since the last poll?
            self.call("get-vm", 3.0, vms=[name])
            return True
        except HvError as err:
            if err.code == "NotFound":
                return False
            raise


class Handler(BaseHTTPRequestHandler):
    server_version = "hvweb"
    protocol_version = "HTTP/1.1"
    app: WebApp   # set on the subclass made in main()

    def log_message(self, fmt, *args):   # requests go to the structured log, not stderr
        self.app.log.debug("http", client=self.client_address[0], line=fmt % args)

    # --- replies ---------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _error(self, code: str, message: str, status: int | None = None) -> None:
        self._json({"error": {"code": code, "message": message}}, status or STATUS.get(code, 500))

    def _not_found_page(self, what: str) -> None:
        body = (f"<!doctype html><title>Not found</title><body style='font-family:sans-serif'>"
                f"<h1>404</h1><p>{what}</p><p><a href='/'>All virtual machines</a></p>").encode()
        self._send(404, body, "text/html; charset=utf-8")

    # --- dispatch --------------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self._dispatch(self._get)

    def do_POST(self):
        self._dispatch(self._post)

    def _dispatch(self, fn) -> None:
        try:
            fn(urlsplit(self.path))
        except HvError as err:
            self._error(err.code, err.message)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:   # never a traceback to the browser; the log has it
            self.app.log.exception("request_failed", path=self.path)
            try:
                self._error("Internal", f"unexpected failure ({type(exc).__name__}); see the hvweb log")
            except OSError:
                pass

    def _get(self, url) -> None:
        path = url.path
        query = parse_qs(url.query)
        if path in ("/", "/index.html"):
            self._send(200, self.app.page, "text/html; charset=utf-8")
        elif m := re.fullmatch(r"/vm/([^/]+)/?", path):
            name = unquote(m.group(1))
            if not self.app.vm_exists(name):
                self._not_found_page(f"There is no virtual machine named '{name}'.")
                return
            self._send(200, self.app.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            self._json(self.app.feed.snapshot())
        elif m := re.fullmatch(r"/api/vms/([^/]+)/history", path):
            name = unquote(m.group(1))
            args = {"vms": [name]}
            if "since" in query:
                try:
                    args["since"] = float(query["since"][0])
                except ValueError:
                    raise HvError("BadRequest", "since must be a number (seconds since the epoch)") from None
            self._json(self.app.call("get-vmhistory", 5.0, **args)[0])
        elif path == "/api/events":
            self._events(query)
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST
            self._send(200, render(self.app.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._json({"ok": True, "pid": os.getpid()})
        else:
            self._error("NotFound", f"no such page: {path}")

    def _post(self, url) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            raise HvError("BadRequest", "request body too large")
        if length:
            self.rfile.read(length)
        m = re.fullmatch(r"/api/vms/([^/]+)/([a-z-]+)", url.path)
        if not m:
            self._error("NotFound", f"no such action: {url.path}")
            return
        name, action = unquote(m.group(1)), m.group(2)
        if action not in ACTIONS:
            self._error("NotFound", f"unknown action '{action}' (one of {', '.join(ACTIONS)})")
            return
        if not self._authorized():
            self._error("Unauthorized", "a valid action token is needed (hvctl web prints it; "
                                        "it is kept in <home>/web.token)")
            return
        op, extra = ACTIONS[action]
        self.app.log.info("web_action", action=action, vm=name)
        res = self.app.call(op, ACTION_TIMEOUT, vm=name, **extra)
        self._json({"ok": True, "result": res})

    def _authorized(self) -> bool:
        given = self.headers.get("X-Hvemu-Token") or ""
        auth = self.headers.get("Authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.app.token.encode())

    def _events(self, query) -> None:
        """Server-Sent Events: the backlog after `after` (or Last-Event-ID), then live ones."""
        try:
            seq = int((query.get("after") or [self.headers.get("Last-Event-ID") or "0"])[0])
        except ValueError:
            raise HvError("BadRequest", "after must be an integer") from None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        feed = self.app.feed
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()
        while not self.app.stopping.is_set():
            batch = feed.wait_events(seq, SSE_WAIT)
            if not batch:
                self.wfile.write(b": keep-alive\n\n")
            for s, body in batch:
                self.wfile.write(f"id: {s}\ndata: {json.dumps(body, default=str)}\n\n".encode())
                seq = s
            self.wfile.flush()


def port_in_use_message(bind: str, port: int) -> str:
    return f"port {port} on {bind} is already in use (choose another with --port, or 0 for a free one)"


def main(argv=None) -> None:
    import setproctitle
    ap = argparse.ArgumentParser(prog="python -m parent.web")
    ap.add_argument("--home", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls of vmms")
    args = ap.parse_args(argv)
    home = Home.resolve(args.home)
    setproctitle.setproctitle(f"hvweb {home.root}")
    home.ensure()
    log = configure(home.logs_dir, "hvweb")
    pidfile = PidFile(home.run_dir / "hvweb.pid")
    try:
        pidfile.acquire()
    except HvError as err:
        print(f"hvweb: {err.code}: a web manager already runs for {home.root} ({err.message})", file=sys.stderr)
        sys.exit(1)
    token = load_or_make_token(home)
    feed = Feed(home, args.interval, log=lambda m: log.warning("feed", message=m))
    app = WebApp(home, feed, token, log)
    app.stopping = threading.Event()
    handler = type("BoundHandler", (Handler,), {"app": app})
    try:
        httpd = ThreadingHTTPServer((args.bind, args.port), handler)
    except OSError as exc:
        pidfile.release()
        if exc.errno == errno.EADDRINUSE:
            print(f"hvweb: AlreadyExists: {port_in_use_message(args.bind, args.port)}", file=sys.stderr)
        else:
            print(f"hvweb: BadRequest: cannot listen on {args.bind}:{args.port}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    httpd.daemon_threads = True
    host, port = httpd.server_address[:2]
    url = f"http://{host}:{port}/"
    rfd = signal_wakeup.install()
    feed.start()
    serving = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                               name="http", daemon=True)
    serving.start()
    tmp = info_path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps({"Url": url, "Port": port, "Bind": host, "ProcessId": os.getpid()}))
    os.replace(tmp, info_path(home))
    log.info("hvweb_started", url=url)
    print(f"hvweb serving {url}", flush=True)
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], 5.0)
            if ready and signal_wakeup.stop_requested(rfd):
                break
            if not serving.is_alive():
                break
    finally:
        app.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        feed.stop()
        info_path(home).unlink(missing_ok=True)
        pidfile.release()
        log.info("hvweb_stopped")


if __name__ == "__main__":
    main()
