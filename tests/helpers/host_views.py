"""Reading a running host the way several integration tests need: through vmms (KVP items,
driver hosts), straight from the hypervisor (its partitions, with the root credential), or
through hvctl run as a user would (from a folder, expecting a refusal)."""
from __future__ import annotations

import json
import os
import subprocess

from hypervisor.hypercall_defs import LIST_PARTITIONS
from hypervisor.runtime.paths import Home
from parent.control.disk_ops import lock_holders
from parent.host_control import hv_client
from tests.conftest import HVCTL, ROOT, wait_until


def kvp(host, name) -> dict:
    """The guest pool of VM `name`'s key-value items (what its guest program published)."""
    return host.call("get-vmkvp", vm=name)


def counter(host, name) -> int:
    """The `counter` guest program's count (-1 before it published one)."""
    return int(kvp(host, name).get("counter", "-1"))


def result(host, name, key, timeout=30.0) -> str:
    """Wait for VM `name`'s guest to publish KVP `key`; its value."""
    return wait_until(lambda: kvp(host, name).get(key), timeout, what=f"KVP {key} of {name}")


def released(path: str) -> None:
    """Wait until no process holds the disk (the driver host closes it when its channel ends)."""
    wait_until(lambda: not lock_holders(path), 10, what=f"{path} released")


def hvctl_in(host, cwd, *args, as_json=True):
    """hvctl run from `cwd` (relative paths resolve there): (exit code, output, stderr)."""
    proc = subprocess.run([*HVCTL, "--home", str(host.home), *(["--json"] if as_json else []),
                           *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = json.loads(proc.stdout) if as_json and proc.stdout.strip() else proc.stdout
    return proc.returncode, out, proc.stderr


def refused(host, *args, code: str) -> str:
    """Run hvctl expecting a refusal with `code`; the message."""
    rc, out, err = host.hvctl(*args, check=False)
    assert rc == 1, (rc, out, err)
    assert out["error"]["code"] == code, out
    assert err.startswith(f"hvctl: {code}: ")
    return out["error"]["message"]


def hv_partitions(host) -> list[dict]:
    """Every partition with its ledger figures, from the hypervisor (list-partitions)."""
    c = hv_client(Home.resolve(host.home))
    try:
        return c.call(LIST_PARTITIONS)
    finally:
        c.close()


def driver(host, name) -> dict:
    """get-vmhostdriver's row for driver `name`."""
    return next(d for d in host.call("get-vmhostdriver") if d["Name"] == name)


def summary(host, name) -> dict | None:
    """The device-stream program's final report, parsed; None while it still runs."""
    text = kvp(host, name).get("device-stream")
    if not text:
        return None
    if text.startswith("error"):
        return {"error": text}
    return {k: float(v) for k, v in (item.split("=") for item in text.split()[1:])}


def progress(host, name) -> int:
    """How many requests the device-stream program of VM `name` has had answered so far."""
    return int(kvp(host, name).get("device-stream-progress", "0"))
