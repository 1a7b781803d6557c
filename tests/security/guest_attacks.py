"""The attacks a hostile guest runs from inside its partition (a `command:` program).

This file is the program's source: the attack suite (tests/security/attack_suite.py) reads it,
fills in `PARAMS` (the victim's pids, paths and names, found on the host) and runs it with the
guest's own python3. Each attack prints one line `ATTACK {"name", "observed", "ok"}` — ok means
refused or confined — and the program ends with `DONE`. Standard library only.
"""
import ctypes
import errno
import json
import os
import signal
import socket
import time

PARAMS = {}   # replaced by the suite


def report(name, observed, ok):
    print("ATTACK " + json.dumps({"name": name, "observed": observed, "ok": bool(ok)}), flush=True)


def refused(fn):
    """(refused?, what happened) for one attempt."""
    try:
        result = fn()
        return False, f"succeeded ({str(result)[:60]})"
    except OSError as exc:
        return True, f"{errno.errorcode.get(exc.errno, exc.errno)}"


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    finally:
        s.close()


def attempt(name, fn):
    ok, observed = refused(fn)
    report(name, observed, ok)


def visible_processes():
    titles = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    titles.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    host = [t for t in titles if PARAMS["home"] in t or t.split(" ")[0] in ("hypervisor", "vmms", "vmwp")]
    report("find the home in the `hypervisor <home>` title", f"{len(titles)} processes visible, "
           f"{len(host)} of the host", not host)


def fill(path, limit_mib):
    n = 0
    chunk = b"\xa5" * (1 << 20)
    try:
        with open(path, "wb") as f:
            while n < limit_mib:
                f.write(chunk)
                f.flush()
                n += 1
    except OSError as exc:
        return n, errno.errorcode.get(exc.errno, exc.errno)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return n, "no limit met"


def fork_bomb():
    pids, why = [], "cap reached"
    while len(pids) < 3000:
        try:
            pid = os.fork()
        except OSError as exc:
            why = errno.errorcode.get(exc.errno, exc.errno)
            break
        if pid == 0:
            try:
                os.execv("/bin/sleep", ["sleep", "60"])
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    report("fork bomb", f"{len(pids)} processes, then {why}", len(pids) <= PARAMS["pids_max"])


def heap():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        hold = []
        for i in range(4096):
            hold.append(b"\x5a" * (1 << 20))
            if i % 8 == 0:
                os.write(w, b"x" * 8)
        os._exit(0)
    os.close(w)
    mib = 0
    while True:
        data = os.read(r, 4096)
        if not data:
            break
        mib += len(data)
    _, status = os.waitpid(pid, 0)
    how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    report("heap grown past the assignment", f"~{mib} MiB, then {how}",
           mib * (1 << 20) <= PARAMS["memory_limit"] and os.WIFSIGNALED(status))


def main():
    p = PARAMS
    visible_processes()
    attempt("read run/root.cred", lambda: open(p["cred"]).read())
    attempt("connect ctl.sock (remove-vm, set-vmkvp on another VM)", lambda: connect(p["ctl"]))
    attempt("connect hv.sock (list partitions, suspend another VM)", lambda: connect(p["hv"]))
    attempt("open another VM's guest RAM in /dev/shm by name", lambda: os.open(p["ram"], os.O_RDWR))
    def memfds():
        got = []
        for fd in p["victim_fds"]:
            try:
                got.append(os.open(f"/proc/{p['victim_guest']}/fd/{fd}", os.O_RDWR))
            except OSError as exc:
                last = exc
        if got:
            return f"{len(got)} opened"
        raise last
    attempt("open another VM's VMBus memfd via /proc/<vmmem>/fd/N", memfds)
    def watchdog():
        # the victim's heartbeat watchdog, a timer its worker polls: armed every millisecond it
        # would keep that worker awake; left alone, it would hide the victim going silent
        if not p["victim_watchdog"]:
            raise OSError(errno.ENOENT, "the victim holds no watchdog timer")
        fd = os.open(f"/proc/{p['victim_guest']}/fd/{p['victim_watchdog'][0]}", os.O_RDWR)
        spec = (ctypes.c_long * 4)(0, 1_000_000, 0, 1_000_000)   # every 1 ms, from 1 ms
        if libc.timerfd_settime(fd, 0, spec, None) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return "armed"
    libc = ctypes.CDLL(None, use_errno=True)
    attempt("arm another VM's heartbeat watchdog via /proc/<vmmem>/fd/N", watchdog)
    attempt("read /proc/<vmwp pid>/mem for the credential",
            lambda: open(f"/proc/{p['victim_worker']}/mem", "rb").read(1))
    def signal_out():
        for pid in (p["victim_guest"], p["victim_worker"], p["hypervisor"]):
            try:
                os.kill(pid, signal.SIGCONT)
                return f"signalled {pid}"
            except OSError as exc:
                last = exc
        raise last
    attempt("signal a process outside the partition", signal_out)
    def ptrace():
        if libc.ptrace(16, p["hypervisor"], 0, 0) == 0:   # PTRACE_ATTACH
            return "attached"
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    attempt("ptrace a process outside the partition", ptrace)
    attempt("read another partition through /proc/<pid>/root",
            lambda: os.listdir(f"/proc/{p['victim_guest']}/root/"))
    def vhdx():
        with open(p["vhdx"], "r+b") as f:
            f.seek(1 << 20)
            return f.write(b"owned")
    attempt("write another VM's VHDX", vhdx)
    for where in ("/tmp", "/dev/shm"):
        n, why = fill(f"{where}/fill", 1024)
        report(f"fill {where}", f"{n} MiB, then {why}", n <= p["tmp_limit_mib"])
    fork_bomb()
    heap()
    os.system("setsid sleep 45 >/dev/null 2>&1 < /dev/null &")
    time.sleep(0.2)
    print("DONE", flush=True)
    time.sleep(600)   # keep the partition up: the suite looks for the escaped sleep, then turns it off


main()
