"""What the experiment drivers share: they serve `request {seq, data}` as the echo driver does
(so a `device-stream` guest streams through them) and find the things a driver could go after:
the home of the host it is loaded in (from the titles of the processes it can see) and that
host's root credential. They go after their own host only: other hosts on the machine (other
people's) are left alone."""
from __future__ import annotations

import gc
import os
from pathlib import Path

from parent.drivers.driver_api import Driver, DriverError

TITLES = ("hypervisor ", "vmms ", "drvhost-forkserver ", "vmms-forkserver ")


class StreamServing(Driver):
    version = "1.0"
    ring_size = 256 * 1024

    def request(self, channel, kind, body):
        if kind in ("request", "echo"):
            return {"seq": body.get("seq"), "data": body.get("data")}
        raise DriverError(f"{self.class_id} does not handle {kind!r}")


def own_home() -> Path | None:
    """The home of the host this driver is loaded in: named in the title of its own process
    (`hypervisor <home>`, when loaded into the hypervisor) or of an ancestor
    (`drvhost-forkserver <home>`, `vmms <home>`). A driver attacks the host it serves."""
    pid = os.getpid()
    for _ in range(4):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().replace(b"\0", b" ").decode(errors="replace").split()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        line = " ".join(words)
        if any(line.startswith(t) for t in TITLES) and len(words) >= 2 and Path(words[1]).is_absolute():
            return Path(words[1])
        if "--home" in words and words.index("--home") + 1 < len(words):
            return Path(words[words.index("--home") + 1])
        pid = ppid
    return None


def find_root_credential() -> tuple[str | None, Path | None, str]:
    """(credential, home, how) by the means a driver has: its own process's memory (a driver
    inside the hypervisor shares the hypervisor's objects), then its host's credential file."""
    for obj in gc.get_objects():
        cred = getattr(obj, "root_credential", None) if type(obj).__name__ == "Hypervisor" else None
        if isinstance(cred, str):
            home = getattr(getattr(obj, "home", None), "root", None)
            return cred, Path(home) if home else None, "own process memory"
    home = own_home()
    for home in [home] if home else []:
        try:
            return (home / "run" / "root.cred").read_text().strip(), home, f"{home}/run/root.cred"
        except OSError:
            continue
    return None, None, "not found"
