"""Sandboxes for partitions (`vmmem`) and driver hosts (`drvhost`): the kernel calls, in one place.

Python 3.11 has no `os.unshare`/`os.setns` (3.12 does), so `unshare(2)`, `setns(2)`, `prctl(2)`,
`mount(2)` and `sethostname(2)` are called through libc with ctypes. Two parts:

- the **plan** (`partition_plan`, `driver_plan` → `SandboxPlan`): pure — which uid/gid, which
  namespaces in which order, which mounts — unit-tested without root (tests/unit/test_sandbox.py);
- the **shell** (`apply`, `fork_in_new_pid_ns`, `no_new_privs`, `set_not_dumpable`, …): runs a
  plan in the freshly forked, single-threaded child.

Order of a partition in `Full` mode (the child is already pid 1 of a new PID namespace, forked by
its worker with `fork_in_new_pid_ns`, and still the host's root):

1. a private mount namespace: `/` made rprivate, a new `/proc` (only the partition's processes),
   private tmpfs `/tmp` and `/dev/shm` (size-bounded), an empty tmpfs over each hidden path (the
   home);
2. drop to the VM's uid/gid (no supplementary groups), `no_new_privs`;
3. a user namespace (uid 0 inside = the VM's uid outside, one id mapped) together with fresh
   mount, UTS, IPC and network namespaces owned by it: the guest is root of those only, so it may
   configure its own interfaces (a TAP of its network adapter) and mounts; the mounts of step 1
   are locked under it;
4. hostname = VM name, `lo` up (the only interface);
5. the uid/gid maps, written by the partition's PARENT (its worker, the host's root:
   `write_id_maps`) once the guest says it is sandboxed. A writer holding CAP_SETUID/CAP_SETGID
   outside may leave setgroups allowed — inside it can only name the VM's own gid — so a guest's
   root can `initgroups` (e.g. `tcpdump -Z root`). Steps 3–4 need no map (the namespace's
   capabilities come with unshare); until the maps exist the guest is the overflow uid, i.e.
   even less privileged, and it runs nothing before its worker's `boot`, which comes after the
   maps. (It was a helper forked by the guest itself: a fork of a whole Python process, ~2 ms
   of CPU and ~3 ms of wall time on every start.)

`UserNamespace` mode (no root): step 3 and 4 only (mapped to the caller's own uid) plus the tmpfs
mounts. `None`: nothing but `no_new_privs`. Cost: ~1–3 ms per sandbox, mostly the network
namespace (scripts/bench/lifecycle measures it).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import sys
from dataclasses import dataclass, field

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND = 32, 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

MODES = ("Full", "UserNamespace", "None")
TMP_SIZE = 64 << 20          # each partition's private /tmp and /dev/shm (a bound, not a cost)

# this process's own libc (every name resolves in it): no ctypes.util, which imports shutil,
# tempfile and three compression modules into every worker's image (issue 16)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
# looked up now (CDLL caches a function on first use): at import, in the fork-servers' shared
# image, rather than in each sandboxed child (issue 16)
for _name in ("unshare", "setns", "prctl", "sethostname"):
    getattr(_libc, _name)
del _name


@dataclass(frozen=True)
class Mount:
    """One mount of a plan: `kind` proc | sysfs | tmpfs | expose (see `exposures`) | hide (an empty read-only tmpfs over a path).
    A tmpfs may carry `binds`: paths under its target that stay readable (read-only binds), e.g.
    the code of a checkout that lies under /tmp."""
    kind: str
    target: str
    options: str = ""
    binds: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxPlan:
    mode: str
    uid: int | None = None             # outside uid to drop to (Full) — None: keep ours
    gid: int | None = None
    host_flags: int = 0                # unshared as the host's root, before dropping privileges
    host_mounts: tuple[Mount, ...] = ()
    user_flags: int = 0                # unshared together with (and owned by) the user namespace
    user_mounts: tuple[Mount, ...] = ()
    hostname: str | None = None
    loopback_up: bool = False
    dumpable: bool = False             # a guest may stay dumpable: it is its own uid
    notes: tuple[str, ...] = field(default=())

    @property
    def maps(self) -> tuple[str, str] | None:
        """uid_map and gid_map lines written for the user namespace (None: no user namespace)."""
        if not self.user_flags & CLONE_NEWUSER:
            return None
        return id_maps(self.uid if self.uid is not None else os.getuid(),
                       self.gid if self.gid is not None else os.getgid())

    @property
    def maps_by_parent(self) -> bool:
        """The maps are the parent's to write (`write_id_maps`): a plan with its own uid (Full)."""
        return self.maps is not None and self.uid is not None


def id_maps(uid: int, gid: int) -> tuple[str, str]:
    """One id each way: 0 inside = `uid`/`gid` outside, nothing else."""
    return f"0 {uid} 1\n", f"0 {gid} 1\n"


def _searchable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o001)
    except OSError:
        return False


def exposures(needed, searchable=_searchable) -> tuple[Mount, ...]:
    """Paths an unprivileged uid must still read (the interpreter and the code on sys.path)
    that lie under a folder closed to others (e.g. a Python installed under /root, 0700): for
    each closed folder an `expose` mount — an open tmpfs over it holding read-only binds of
    exactly the needed paths. Pure given `searchable`."""
    groups: dict[str, list[str]] = {}
    for p in sorted({os.path.abspath(n) for n in needed if n}):
        parts = p.split("/")
        for i in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:i])
            if ancestor and not searchable(ancestor):
                groups.setdefault(ancestor, []).append(p)
                break
    out = []
    for ancestor, paths in sorted(groups.items()):
        keep = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
        out.append(Mount("expose", ancestor, ":".join(keep)))
    return tuple(out)


def python_paths() -> list[str]:
    """What this interpreter reads after the sandbox: its installation and sys.path."""
    return [p for p in {sys.base_prefix, sys.prefix, sys.exec_prefix, *sys.path}
            if p and os.path.isdir(p)]


@dataclass(frozen=True)
class HostPaths:
    """The per-host part of a sandbox plan: what this interpreter reads after its sandbox
    (`python_paths`, absolute, sorted, once each) and the `exposures` they need. It is the same
    for every partition of a host and costs stat calls and path work (~0.8 ms), so it is
    computed once: the guest runtime does it at its import, in the worker fork-server whose
    image every VM shares (worker/guest/runtime.py), not in each guest (issue 16)."""
    python: tuple[str, ...]
    exposed: tuple[Mount, ...]
    under_tmp: tuple[str, ...] = ()   # those below /tmp (a checkout there): `private_tmp` keeps them


def host_paths(searchable=_searchable) -> HostPaths:
    """This interpreter's `HostPaths`, computed now."""
    python = tuple(sorted({os.path.abspath(p) for p in python_paths()}))
    return HostPaths(python, exposures(python, searchable),
                     tuple(p for p in python if p.startswith("/tmp/")))


def private_tmp(target: str, options: str, hide=(), needed=None) -> Mount:
    """A private tmpfs over `target` that keeps the interpreter's code readable when it lies
    below `target` (a checkout under /tmp), but never a folder holding a hidden path. Pure given
    `needed`."""
    needed = python_paths() if needed is None else needed
    prefix = target + "/"
    under = sorted({a for a in map(os.path.abspath, needed) if a.startswith(prefix)})
    if not under:
        return Mount("tmpfs", target, options)
    hidden = [os.path.abspath(os.fspath(h)) for h in hide]
    under = [p for p in under if not any(h == p or h.startswith(p + "/") for h in hidden)]
    keep = [p for p in under if not any(p != q and p.startswith(q + "/") for q in under)]
    return Mount("tmpfs", target, options, tuple(keep))


def _hidden(hide) -> tuple[Mount, ...]:
    out = []
    for path in hide:
        p = os.path.abspath(os.fspath(path))
        if p.startswith("/tmp/") or p == "/tmp":
            continue  # the private /tmp hides it already
        out.append(Mount("hide", p))
    return tuple(out)


def partition_plan(mode: str, uid: int | None, gid: int | None, hostname: str,
                   hide=(), tmp_size: int = TMP_SIZE, paths: HostPaths | None = None) -> SandboxPlan:
    """A child partition's sandbox (the worker forks the guest with `fork_in_new_pid_ns` first
    in `Full` mode, so the guest is pid 1 of its own PID namespace). `paths`: this host's
    `HostPaths` if already computed (the same plan results; None: computed now)."""
    if mode not in MODES:
        raise ValueError(f"isolation mode {mode!r} is not one of {MODES}")
    if mode == "None":
        return SandboxPlan("None", dumpable=True,
                           notes=("no namespaces: the guest shares the host's uid, /proc, /tmp, "
                                  "network and signals",))
    paths = host_paths() if paths is None else paths
    tmp_options = f"size={tmp_size},mode=1777"
    tmpfs = (private_tmp("/tmp", tmp_options, hide, paths.under_tmp),
             Mount("tmpfs", "/dev/shm", tmp_options))
    userns = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
    if mode == "UserNamespace":
        return SandboxPlan("UserNamespace", user_flags=userns,
                           user_mounts=tmpfs + _hidden(hide) + (Mount("sysfs", "/sys"),),
                           hostname=hostname,
                           loopback_up=True, dumpable=True,
                           notes=("no PID namespace and no uid of its own: the guest sees host "
                                  "processes and shares the daemons' uid (signals)",))
    if uid is None or gid is None or uid <= 0 or gid <= 0:
        raise ValueError("Full isolation needs the VM's own (non-root) uid and gid")
    return SandboxPlan("Full", uid=uid, gid=gid, host_flags=CLONE_NEWNS,
                       host_mounts=(Mount("proc", "/proc"),) + tmpfs + paths.exposed
                       + _hidden(hide),
                       user_flags=userns, user_mounts=(Mount("sysfs", "/sys"),), hostname=hostname,
                       loopback_up=True, dumpable=True)


def driver_plan(mode: str, uid: int | None, gid: int | None, hide=()) -> SandboxPlan:
    """A driver host's sandbox: own uid, mount/PID/IPC namespaces (PID: the fork-server forks it
    with `fork_in_new_pid_ns`), nothing of the home in its file system view."""
    if mode not in MODES:
        raise ValueError(f"isolation mode {mode!r} is not one of {MODES}")
    if mode != "Full":
        return SandboxPlan(mode, notes=("the driver host runs as the daemons' uid",))
    if uid is None or gid is None or uid <= 0 or gid <= 0:
        raise ValueError("Full isolation needs the driver's own (non-root) uid and gid")
    return SandboxPlan("Full", uid=uid, gid=gid, host_flags=CLONE_NEWNS | CLONE_NEWIPC,
                       host_mounts=(Mount("proc", "/proc"),
                                    private_tmp("/tmp", f"size={16 << 20},mode=1777", hide),
                                    Mount("tmpfs", "/dev/shm", f"size={16 << 20},mode=1777"))
                       + exposures(python_paths()) + _hidden(hide))


# --- kernel calls --------------------------------------------------------------------------------

def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option: int, arg: int = 0) -> int:
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return ret


def no_new_privs() -> None:
    """No exec can ever gain privileges again (setuid bits, file capabilities)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_not_dumpable() -> None:
    """No core dump, no /proc/<pid>/mem or ptrace from any other uid (and /proc/<pid>/* root's)."""
    prctl(PR_SET_DUMPABLE, 0)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, int(sig))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {fstype or ''} on {target}")


def sethostname(name: str) -> None:
    raw = name.encode()[:64]
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def loopback_up() -> None:
    """`ip link set lo up` (SIOCGIFFLAGS / SIOCSIFFLAGS on an AF_INET socket)."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


@contextlib.contextmanager
def pid_ns_for_children(enabled: bool = True):
    """Within the block, the calling thread's next child is pid 1 of a new PID namespace; after
    it, this thread forks into its own namespace again (unshare(CLONE_NEWPID) changes only the
    caller's children, and setns joins the own namespace back). Needs CAP_SYS_ADMIN (root). Only
    the calling thread is affected, so it is harmless to a process with threads — which still
    may fork only as DESIGN §8 allows."""
    if not enabled:
        yield
        return
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)
        try:
            yield
        finally:
            setns(own, CLONE_NEWPID)
    finally:
        os.close(own)


def fork_in_new_pid_ns() -> int:
    """os.fork() whose child is pid 1 of a new PID namespace (0 in the child, its pid here)."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            setns(own, CLONE_NEWPID)
            raise
        if pid != 0:
            setns(own, CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


def _make_dirs(top: str, path: str) -> None:
    """The folders from `top` (a fresh tmpfs) down to `path` below it (os.makedirs without its
    stat of every level)."""
    at = top
    for part in path[len(top) + 1:].split("/"):
        at = f"{at}/{part}"
        try:
            os.mkdir(at, 0o755)
        except FileExistsError:
            pass


def _tmpfs_with_binds(target: str, options: str, binds) -> None:
    """A tmpfs over `target` in which each path of `binds` (below it) stays, read-only."""
    fds = [os.open(p, os.O_PATH | os.O_CLOEXEC) for p in binds]  # before they are covered
    old = os.umask(0o022)   # folders leading to a bind must be open to the sandbox's uid
    try:
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        for p, fd in zip(binds, fds):
            _make_dirs(target, p)
            mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    finally:
        os.umask(old)
        for fd in fds:
            os.close(fd)


def _mount_one(m: Mount) -> None:
    if m.kind == "proc":
        mount("proc", m.target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif m.kind == "sysfs":
        mount("sysfs", m.target, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    elif m.kind == "tmpfs":
        _tmpfs_with_binds(m.target, m.options, m.binds)
    elif m.kind == "expose":
        _tmpfs_with_binds(m.target, "size=64k,mode=0755", [p for p in m.options.split(":") if p])
    elif m.kind == "hide":
        if os.path.isdir(m.target):
            mount("tmpfs", m.target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
    else:
        raise ValueError(f"unknown mount kind {m.kind!r}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_id_maps(pid: int, maps: tuple[str, str]) -> None:
    """The parent's half of a Full partition's sandbox: write the uid/gid maps of the user
    namespace child `pid` has just made (`apply` left them, see the module's docstring). The
    caller holds CAP_SETUID/CAP_SETGID in the parent namespace (the host's root), so setgroups
    stays allowed. `pid` must be the caller's own unreaped child (its number cannot be reused)."""
    _write(f"/proc/{pid}/uid_map", maps[0])
    _write(f"/proc/{pid}/gid_map", maps[1])


def apply(plan: SandboxPlan) -> None:
    """Enter `plan` in this (single-threaded, freshly forked) process. Raises OSError on the
    first step the kernel refuses: the caller must then exit, never run unconfined. With
    `plan.maps_by_parent` the caller then tells its parent, which writes the maps
    (`write_id_maps`), and runs nothing of its guest before the parent says they are written."""
    if plan.host_flags:
        unshare(plan.host_flags)
        if plan.host_flags & CLONE_NEWNS:
            mount(None, "/", None, MS_REC | MS_PRIVATE)
        for m in plan.host_mounts:
            _mount_one(m)
    maps = plan.maps
    if plan.uid is not None:
        os.setgroups([])
        os.setresgid(plan.gid, plan.gid, plan.gid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
    no_new_privs()
    if plan.user_flags:
        if plan.user_flags & CLONE_NEWUSER:
            prctl(PR_SET_DUMPABLE, 1)   # /proc/<pid>/*_map must be writable (ours, or the parent's)
        unshare(plan.user_flags)
        if maps is not None and not plan.maps_by_parent:
            try:
                _write("/proc/self/setgroups", "deny")
            except FileNotFoundError:
                pass
            _write("/proc/self/uid_map", maps[0])
            _write("/proc/self/gid_map", maps[1])
    if plan.user_flags & CLONE_NEWNS:
        if not plan.host_flags & CLONE_NEWNS:
            # (after a host-side mount namespace every mount is private already, those made
            # since included: its copy needs no second pass)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
        for m in plan.user_mounts:
            _mount_one(m)
    if plan.hostname and plan.user_flags & CLONE_NEWUTS:
        sethostname(plan.hostname)
    if plan.loopback_up and plan.user_flags & CLONE_NEWNET:
        loopback_up()
    if not plan.dumpable:
        set_not_dumpable()


def probe_user_namespaces() -> bool:
    """Can this (unprivileged) user make a user namespace? Tried in a throw-away child."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            unshare(CLONE_NEWUSER)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

