"""A host's isolation settings, chosen once at `host up` and kept in `run/isolation.json`.

Key type `HostIsolation`: the mode (`Full` as root: a uid, namespaces and a cgroup per
partition and per driver host; `UserNamespace` without root where the kernel allows user
namespaces; `None` otherwise), the uid range the host gives out (one uid per running VM, one per
driver), and the cgroup version the hypervisor uses (`v2`, `v1`, or none). `choose()` detects;
`save()`/`load()` keep it for every daemon of the host; `not_isolated()` is what `host up`
says once when something is not isolated.

The uid range: `UID_SPAN` ids from a random `UID_SPAN`-aligned base above 2,000,000 (far above
any login account; two hosts on one machine collide with odds of ~1 in 100,000), checked
against /etc/passwd. VM `k` gets `base + 1 + k`, driver `k` gets `base + DRIVER_OFFSET + k`; gid
= uid.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from hypervisor.runtime.sandbox import probe_user_namespaces

UID_FLOOR = 2_000_000
UID_SPAN = 4096
UID_SLOTS = 100_000
DRIVER_OFFSET = 3072            # VM uids: base+1 … base+3071; drivers: base+3072 …


@dataclass(frozen=True)
class HostIsolation:
    mode: str = "None"
    uid_base: int = 0
    cgroup: str | None = None      # "v2", "v1" or None

    def vm_uid(self, slot: int) -> int | None:
        if self.mode != "Full":
            return None
        if not 0 <= slot < DRIVER_OFFSET - 1:
            raise ValueError(f"VM slot {slot} outside the host's uid range")
        return self.uid_base + 1 + slot

    def driver_uid(self, slot: int) -> int | None:
        if self.mode != "Full":
            return None
        if not 0 <= slot < UID_SPAN - DRIVER_OFFSET:
            raise ValueError(f"driver slot {slot} outside the host's uid range")
        return self.uid_base + DRIVER_OFFSET + slot

    def not_isolated(self) -> list[str]:
        """Plain sentences: what this host cannot isolate (empty when nothing is missing)."""
        out = []
        if self.mode == "UserNamespace":
            out.append("not running as root: guests get user, mount, UTS, IPC and network "
                       "namespaces but no uid and no PID namespace of their own (a guest can "
                       "see host processes and signal the daemons' uid); driver hosts run as "
                       "the daemons' uid")
        elif self.mode == "None":
            out.append("no root and no user namespaces: guests and driver hosts run as the "
                       "daemons' uid with the host's file system, /proc, network and signals")
        if self.cgroup is None:
            out.append("no writable cgroup: no process-count or memory bound per partition, "
                       "suspend uses SIGSTOP of the process tree")
        return out


def detect_cgroup() -> str | None:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        ok = os.access(root, os.W_OK)
        return "v2" if ok else None
    if (root / "pids").is_dir() and os.access(root / "pids", os.W_OK):
        return "v1"
    return None


def _uids_in_passwd() -> set[int]:
    out = set()
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    out.add(int(parts[2]))
    except OSError:
        pass
    return out


def _userns_sysctls_allow() -> bool:
    """What the sysctls say about unprivileged user namespaces (no fork needed)."""
    for path, bad in (("/proc/sys/user/max_user_namespaces", "0"),
                      ("/proc/sys/kernel/unprivileged_userns_clone", "0")):
        try:
            if Path(path).read_text().strip() == bad:
                return False
        except OSError:
            pass
    return True


def choose(probe: bool = True) -> HostIsolation:
    """Detect the host's isolation. `probe`: try a user namespace in a throw-away child (only
    where forking is allowed: `host up`); else trust the sysctls."""
    if os.geteuid() == 0:
        used = _uids_in_passwd()
        while True:
            base = UID_FLOOR + secrets.randbelow(UID_SLOTS) * UID_SPAN
            if not any(base <= u < base + UID_SPAN for u in used):
                break
        return HostIsolation("Full", base, detect_cgroup())
    if probe:
        allowed = probe_user_namespaces()
    else:
        allowed = _userns_sysctls_allow()
    mode = "UserNamespace" if allowed else "None"
    return HostIsolation(mode, 0, detect_cgroup())


def _path(run_dir: Path) -> Path:
    return Path(run_dir) / "isolation.json"


def save(run_dir: Path, iso: HostIsolation) -> None:
    path = _path(run_dir)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(iso), f)
    os.replace(tmp, path)


def load(run_dir: Path) -> HostIsolation:
    """The host's settings; a host started without `host up` (none saved) gets them chosen
    (without forking: daemons may hold threads) and saved now."""
    try:
        data = json.loads(_path(run_dir).read_text())
        return HostIsolation(str(data["mode"]), int(data["uid_base"]), data.get("cgroup"))
    except (OSError, ValueError, KeyError, TypeError):
        iso = choose(probe=False)
        try:
            save(run_dir, iso)
        except OSError:
            pass
        return iso


def slot_free(used: set[int], limit: int) -> int:
    """The lowest slot not in `used` (ValueError when all `limit` are taken)."""
    for slot in range(limit):
        if slot not in used:
            return slot
    raise ValueError("no free sandbox uid left in this host's range")
