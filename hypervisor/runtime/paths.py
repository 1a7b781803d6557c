"""Where a host instance keeps its things (DESIGN.md §6): one home per host.

`<home>/vms/<VMId>/` configurations, `<home>/run/` sockets, pid files and credentials (0700),
`<home>/logs/` one JSON log per daemon. ipc socket paths are limited to ~107 bytes, so every
endpoint is checked here and a too-long home fails with a message that says so.
"""
from __future__ import annotations

import os
from pathlib import Path

from hypervisor.runtime.errors import HvError

IPC_PATH_MAX = 107


def default_home() -> Path:
    env = os.environ.get("HVEMU_HOME")
    if env:
        return Path(env)
    import platformdirs  # lazy: only needed when no home is given
    return Path(platformdirs.user_data_dir("hvemu"))


class Home:
    """One host's home, `root` its folder. Immutable, compared and hashed by `root`. Written
    out rather than a frozen dataclass: `dataclasses` imports `inspect` (and `ast`, `dis`,
    `tokenize`), which would be most of what hvctl's start-up spends beyond pyzmq and msgpack
    (issue 16)."""

    __slots__ = ("root",)

    def __init__(self, root: Path):
        object.__setattr__(self, "root", root)

    def __setattr__(self, name, value):
        raise AttributeError(f"Home is immutable (cannot set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"Home is immutable (cannot delete {name!r})")

    def __eq__(self, other):
        return other.__class__ is self.__class__ and other.root == self.root

    def __hash__(self):
        return hash((self.root,))

    def __repr__(self):
        return f"Home(root={self.root!r})"

    def __reduce__(self):
        return (Home, (self.root,))

    @classmethod
    def resolve(cls, home: str | os.PathLike | None = None) -> "Home":
        return cls(Path(home).expanduser().absolute() if home else default_home().absolute())

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def workers_dir(self) -> Path:
        return self.run_dir / "w"

    @property
    def drivers_dir(self) -> Path:
        """Driver hosts' sockets and pid files (`run/d/<driver>.sock`, `.pid`)."""
        return self.run_dir / "d"

    def driver_socket(self, driver: str) -> Path:
        path = self.drivers_dir / f"{driver}.sock"
        self._ipc(path)  # the same length limit as every ipc endpoint
        return path

    def driver_pidfile(self, driver: str) -> Path:
        return self.drivers_dir / f"{driver}.pid"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def vms_dir(self) -> Path:
        return self.root / "vms"

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    # endpoints -----------------------------------------------------------------------------
    def _ipc(self, path: Path) -> str:
        if len(str(path)) > IPC_PATH_MAX:
            raise HvError("BadRequest", f"socket path {path} is {len(str(path))} bytes, longer "
                                        f"than the {IPC_PATH_MAX}-byte ipc limit: use a shorter home")
        return f"ipc://{path}"

    @property
    def hypercall_endpoint(self) -> str:
        return self._ipc(self.run_dir / "hv.sock")

    @property
    def control_endpoint(self) -> str:
        return self._ipc(self.run_dir / "ctl.sock")

    @property
    def events_endpoint(self) -> str:
        return self._ipc(self.run_dir / "ev.sock")

    def worker_endpoint(self, vm_id: str) -> str:
        return self._ipc(self.workers_dir / f"{vm_id}.sock")

    def worker_pidfile(self, vm_id: str) -> Path:
        return self.workers_dir / f"{vm_id}.pid"

    def worker_exit_file(self, vm_id: str) -> Path:
        """A worker's last status, written just before it exits (read by vmms at its exit)."""
        return self.workers_dir / f"{vm_id}.exit"

    def pidfile(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    @property
    def root_credential_file(self) -> Path:
        return self.run_dir / "root.cred"

    @property
    def shm_prefix(self) -> str:
        """Per-home prefix of guest-RAM objects in /dev/shm, so sweeps touch only our own."""
        import hashlib
        return "hvemu-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:10] + "-"

    def ensure(self) -> None:
        """Create the home's folders; the run directory is private (0700)."""
        old = os.umask(0o077)
        try:
            for d in (self.root, self.vms_dir, self.logs_dir, self.run_dir, self.workers_dir,
                      self.drivers_dir):
                d.mkdir(parents=True, exist_ok=True)
            os.chmod(self.run_dir, 0o700)
            os.chmod(self.workers_dir, 0o700)
            os.chmod(self.drivers_dir, 0o700)
        finally:
            os.umask(old)
        self._ipc(self.workers_dir / ("0" * 36 + ".sock"))  # fail early if the home is too deep
